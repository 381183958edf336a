"""Tests for max_deeplab_tf.data.build_coco_panoptic."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from max_deeplab_tf import cli
from max_deeplab_tf import common
from max_deeplab_tf.data import build_coco_panoptic as build
from max_deeplab_tf.data import builtin_datasets
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.data import input_pipeline
from max_deeplab_tf.data import synthetic
from max_deeplab_tf.data import tfrecord
from max_deeplab_tf.protos import dataset_pb2

DIVISOR = 256


def _make(root, num_train=6, size=40, seed=0):
    synthetic.generate(str(root), num_train, 2, size, seed=seed)
    return str(root)


def _records(pattern):
    out = []
    for path in sorted(glob.glob(pattern)):
        for record in tf.data.TFRecordDataset(path):
            out.append(tf.train.Example.FromString(record.numpy()))
    return out


def _feature(example, key):
    feature = example.features.feature[key]
    if feature.bytes_list.value:
        return feature.bytes_list.value[0]
    return feature.int64_list.value[0]


def _expected_label(root, split, treat_crowd_as_ignore):
    """Labels recomputed from the PNGs and JSON, independently."""
    json_path, png_dir, _ = synthetic.split_paths(root, split)
    with open(json_path) as f:
        data = json.load(f)
    class_of = {cid: k + 1 for k, cid in enumerate(
        sorted(c["id"] for c in data["categories"]))}
    things = {c["id"] for c in data["categories"] if c["isthing"]}
    names = {i["id"]: i["file_name"] for i in data["images"]}
    out = {}
    for annotation in data["annotations"]:
        rgb = np.asarray(Image.open(os.path.join(png_dir,
                                                 annotation["file_name"])),
                         np.int64)
        ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
        label = np.zeros(ids.shape, np.int64)
        counters = {}
        for s in annotation["segments_info"]:
            semantic = class_of[s["category_id"]]
            instance = 0
            if s["category_id"] in things and not s["iscrowd"]:
                counters[semantic] = counters.get(semantic, 0) + 1
                instance = counters[semantic]
            if s["iscrowd"] and treat_crowd_as_ignore:
                semantic = 0
            label[ids == s["id"]] = semantic * DIVISOR + instance
        name = os.path.splitext(names[annotation["image_id"]])[0]
        out[name] = (label, annotation["segments_info"], ids)
    return out


@pytest.mark.parametrize("treat_crowd_as_ignore", [False, True])
def test_round_trip_pixel_for_pixel(tmp_path, treat_crowd_as_ignore):
    root = _make(tmp_path / "coco", num_train=8, seed=3)
    out = str(tmp_path / "shards")
    result = build.convert(root, "train", out, num_shards=3, num_workers=1,
                           treat_crowd_as_ignore=treat_crowd_as_ignore)
    assert result.num_images == 8
    descriptor = dataset_info.get_dataset_descriptor(result.descriptor_path)
    assert descriptor == dataset_info.get_dataset_descriptor(
        "synthetic_panoptic")
    expected = _expected_label(root, "train", treat_crowd_as_ignore)
    examples = _records(os.path.join(out, "train-*-of-00003.tfrecord"))
    assert len(examples) == 8
    crowd_seen = 0
    _, _, image_dir = synthetic.split_paths(root, "train")
    for example in examples:
        name = _feature(example, "image/filename").decode()
        label, segments, ids = expected.pop(name)
        with open(os.path.join(image_dir, name + ".jpg"), "rb") as f:
            assert _feature(example, "image/encoded") == f.read()
        assert _feature(example, "image/format") == b"jpeg"
        assert _feature(example, "image/channels") == 3
        decoded = tfrecord.decode_example(
            tf.constant(example.SerializeToString()))
        got = decoded["label"].numpy()
        np.testing.assert_array_equal(got, label)
        # Every segment's class and crowd flag, read back from the record.
        for s in segments:
            values = np.unique(got[ids == s["id"]])
            assert values.size == 1
            semantic, instance = divmod(int(values[0]), DIVISOR)
            cls = dataset_info.category_to_class(descriptor)[s["category_id"]]
            thing = cls in descriptor.thing_class_ids
            if s["iscrowd"]:
                crowd_seen += 1
                assert (semantic, instance) == (
                    (0, 0) if treat_crowd_as_ignore else (cls, 0))
            else:
                assert semantic == cls
                assert (instance > 0) == thing
    assert not expected
    assert crowd_seen >= 1

    # The pipeline without augmentation gives the same panoptic maps.
    options = dataset_pb2.DatasetOptions(
        dataset=result.descriptor_path,
        file_pattern=[os.path.join(out, "train-*")], batch_size=1,
        crop_size=[41, 41])
    labels = _expected_label(root, "train", treat_crowd_as_ignore)
    for sample in input_pipeline.build_dataset(options, is_training=False):
        name = sample[common.IMAGE_NAME][0].numpy().decode()
        panoptic = sample[common.GT_PANOPTIC_KEY][0].numpy()
        np.testing.assert_array_equal(panoptic[:40, :40], labels[name][0])
        assert (panoptic[40:] == 0).all() and (panoptic[:, 40:] == 0).all()
        assert sample[common.GT_SIZE_RAW][0].numpy().tolist() == [40, 40]


def test_coco_categories_map_to_deeplab2_ids():
    categories = builtin_datasets.categories_as_json(
        builtin_datasets.COCO_CATEGORIES)
    descriptor = build.derive_descriptor(categories, "panoptic_val2017.json")
    assert descriptor is dataset_info.get_dataset_descriptor("coco_panoptic")
    mapping = dataset_info.category_to_class(descriptor)
    assert [mapping[c] for c in (1, 90, 92, 200)] == [1, 80, 81, 133]
    # A custom dataset is named after its folder, not its JSON file.
    custom = build.derive_descriptor(
        categories[:5], "/data/mine/annotations/panoptic_val2017.json")
    assert custom.name == "mine"
    assert custom.num_classes == 6
    named = build.derive_descriptor(categories[:5], "/x/a.json",
                                    dataset_name="cars")
    assert named.name == "cars"
    assert build.default_dataset_name("/data/city/", "/elsewhere/a.json") == (
        "city")
    assert build.default_dataset_name(None, "/d/gtFine/cs_val.json") == (
        "gtFine")


def _convert_small(tmp_path, **kwargs):
    return build.convert(str(tmp_path / "coco"), "train",
                         str(tmp_path / "out"), num_shards=2, num_workers=1,
                         **kwargs)


def _edit_json(root, edit):
    json_path, _, _ = synthetic.split_paths(root, "train")
    with open(json_path) as f:
        data = json.load(f)
    edit(data)
    with open(json_path, "w") as f:
        json.dump(data, f)
    return json_path


def _first(root):
    json_path, png_dir, image_dir = synthetic.split_paths(root, "train")
    with open(json_path) as f:
        data = json.load(f)
    image = sorted(data["images"], key=lambda i: i["file_name"])[0]
    annotation = next(a for a in data["annotations"]
                      if a["image_id"] == image["id"])
    return (os.path.join(image_dir, image["file_name"]),
            os.path.join(png_dir, annotation["file_name"]), annotation)


def _no_shard_files(out):
    return not glob.glob(os.path.join(out, "train-00000-*"))


def test_missing_image(tmp_path):
    root = _make(tmp_path / "coco", num_train=3)
    image, _, _ = _first(root)
    os.remove(image)
    with pytest.raises(build.ConversionError, match="does not exist") as e:
        _convert_small(tmp_path)
    assert image in str(e.value)
    assert _no_shard_files(str(tmp_path / "out"))


def test_unreadable_png(tmp_path):
    root = _make(tmp_path / "coco", num_train=3)
    _, png, _ = _first(root)
    with open(png, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n garbage")
    with pytest.raises(build.ConversionError,
                       match="cannot read the panoptic PNG") as e:
        _convert_small(tmp_path)
    assert png in str(e.value)
    assert _no_shard_files(str(tmp_path / "out"))


def test_png_segment_missing_from_json(tmp_path):
    root = _make(tmp_path / "coco", num_train=3)
    _, png, annotation = _first(root)
    dropped = annotation["segments_info"][-1]["id"]

    def edit(data):
        for a in data["annotations"]:
            if a["file_name"] == annotation["file_name"]:
                a["segments_info"] = a["segments_info"][:-1]

    json_path = _edit_json(root, edit)
    with pytest.raises(build.ConversionError,
                       match="appear in the PNG but not") as e:
        _convert_small(tmp_path)
    assert png in str(e.value) and json_path in str(e.value)
    assert str(dropped) in str(e.value)


def test_json_segment_missing_from_png(tmp_path):
    root = _make(tmp_path / "coco", num_train=3)
    _, png, annotation = _first(root)

    def edit(data):
        for a in data["annotations"]:
            if a["file_name"] == annotation["file_name"]:
                a["segments_info"].append(
                    {"id": 123, "category_id": 20, "iscrowd": 0, "area": 1,
                     "bbox": [0, 0, 1, 1]})

    _edit_json(root, edit)
    with pytest.raises(build.ConversionError,
                       match=r"\[123\] .* do not appear in") as e:
        _convert_small(tmp_path)
    assert png in str(e.value)


def test_unknown_category(tmp_path):
    root = _make(tmp_path / "coco", num_train=3)

    def edit(data):
        data["annotations"][1]["segments_info"][0]["category_id"] = 999

    json_path = _edit_json(root, edit)
    with pytest.raises(build.ConversionError, match="category_id 999") as e:
        _convert_small(tmp_path)
    assert json_path in str(e.value)
    assert not os.path.exists(str(tmp_path / "out" / "train-00000-of-00002"
                                  ".tfrecord"))


def test_shards_of_another_conversion_are_refused(tmp_path):
    root = _make(tmp_path / "coco", num_train=2)
    build.convert(root, "train", str(tmp_path / "out"), num_shards=2,
                  num_workers=1)
    with pytest.raises(build.ConversionError, match="same number of shards"):
        build.convert(root, "train", str(tmp_path / "out"), num_shards=3,
                      num_workers=1)


def test_missing_split_lists_tried_paths(tmp_path):
    with pytest.raises(build.ConversionError, match="panoptic_test2017.json"):
        build.convert(str(tmp_path), "test", str(tmp_path / "out"))


def test_interrupted_conversion_resumes(tmp_path, monkeypatch):
    root = _make(tmp_path / "coco", num_train=6)
    out = str(tmp_path / "out")
    calls = []
    original = build.panoptic_label

    def interrupt_on_fourth(*args, **kwargs):
        calls.append(args[3])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(build, "panoptic_label", interrupt_on_fourth)
    with pytest.raises(KeyboardInterrupt):
        build.convert(root, "train", out, num_shards=3, num_workers=1)
    # Shard 0 (images 1-2) is complete, shard 1 was interrupted at its
    # second image: no file of it, final or temporary.
    names = sorted(os.listdir(out))
    assert names == ["dataset_descriptor.json",
                     "train-00000-of-00003.tfrecord"]
    first = open(os.path.join(out, names[1]), "rb").read()
    # A hard kill leaves a partial file in the hidden folder (and versions
    # before it left one beside the shards); a re-run removes both, and
    # nothing else.
    os.makedirs(os.path.join(out, ".partial"), exist_ok=True)
    stale = os.path.join(out, ".partial",
                         "train-00001-of-00003.tfrecord.tmp-1-0123abcd")
    legacy = os.path.join(out, "train-00002-of-00003.tfrecord.tmp-7-89abcdef")
    user = os.path.join(out, "train-notes.tmp-mine")
    for path in (stale, legacy, user):
        with open(path, "wb") as f:
            f.write(b"partial")

    calls.clear()
    monkeypatch.setattr(build, "panoptic_label",
                        lambda *a, **k: calls.append(a[3]) or original(*a,
                                                                       **k))
    result = build.convert(root, "train", out, num_shards=3, num_workers=1)
    assert result.skipped_shards == 1
    assert len(calls) == 4  # Only the images of shards 1 and 2.
    assert not os.path.exists(stale) and not os.path.exists(legacy)
    assert open(user, "rb").read() == b"partial"
    assert open(os.path.join(out, names[1]), "rb").read() == first
    assert len(_records(os.path.join(out, "train-*.tfrecord"))) == 6
    assert sorted(os.listdir(out)) == [
        "dataset_descriptor.json", "train-00000-of-00003.tfrecord",
        "train-00001-of-00003.tfrecord", "train-00002-of-00003.tfrecord",
        "train-notes.tmp-mine"]


def test_worker_processes_fail_cleanly_and_match_in_process(tmp_path):
    root = _make(tmp_path / "coco", num_train=6)
    build.convert(root, "train", str(tmp_path / "one"), num_shards=3,
                  num_workers=1)
    # Break the last image (shard 2 of 3), convert with 2 processes.
    json_path, png_dir, _ = synthetic.split_paths(root, "train")
    last = sorted(os.listdir(png_dir))[-1]
    saved = open(os.path.join(png_dir, last), "rb").read()
    os.remove(os.path.join(png_dir, last))
    out = tmp_path / "two"
    with pytest.raises(build.ConversionError, match="does not exist") as e:
        build.convert(root, "train", str(out), num_shards=3, num_workers=2)
    assert last in str(e.value)
    assert not glob.glob(str(out / "*.tmp-*"))
    assert not os.path.exists(out / "train-00002-of-00003.tfrecord")
    # Shard 2 starts only after a worker finished shard 0 or 1.
    by_workers = glob.glob(str(out / "train-*.tfrecord"))
    assert by_workers
    with open(os.path.join(png_dir, last), "wb") as f:
        f.write(saved)
    result = build.convert(root, "train", str(out), num_shards=3,
                           num_workers=1)
    assert result.skipped_shards == len(by_workers)
    for i in range(3):
        name = f"train-0000{i}-of-00003.tfrecord"
        with open(tmp_path / "one" / name, "rb") as a, \
                open(out / name, "rb") as b:
            assert a.read() == b.read()


def test_ram_filesystem(tmp_path):
    root = "ram://convert_test/coco"
    synthetic.generate(root, 2, 1, 24, seed=0)
    result = build.convert(root, "val", "ram://convert_test/out",
                           num_shards=1)
    assert tf.io.gfile.exists(result.shard_paths[0])
    assert tf.io.gfile.exists(result.descriptor_path)
    assert len(list(tf.data.TFRecordDataset(result.shard_paths))) == 1


def test_explicit_paths_and_subfolders(tmp_path):
    # Cityscapes-like layout: images in per-city subfolders, JSON and PNG
    # folder named alike elsewhere.
    root = _make(tmp_path / "coco", num_train=2)
    json_path, png_dir, image_dir = synthetic.split_paths(root, "train")
    city = tmp_path / "leftImg8bit" / "train" / "city"
    city.mkdir(parents=True)
    for name in os.listdir(image_dir):
        os.rename(os.path.join(image_dir, name), city / name)
    result = build.convert(None, "train", str(tmp_path / "out"),
                           annotation_json=json_path,
                           image_dir=str(tmp_path / "leftImg8bit" / "train"),
                           num_workers=1)
    assert result.num_images == 2
    assert os.path.basename(png_dir) == os.path.basename(
        os.path.splitext(json_path)[0])


def test_command_lines(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    root, out = str(tmp_path / "coco"), str(tmp_path / "out")
    subprocess.run([sys.executable, "-m", "max_deeplab_tf.data.synthetic",
                    f"--output_dir={root}", "--num_images=2",
                    "--num_val_images=1", "--image_size=24", "--seed=1"],
                   check=True, env=env, capture_output=True, timeout=120)
    run = subprocess.run(
        [sys.executable, "-m", "max_deeplab_tf.data.build_coco_panoptic",
         f"--coco_root={root}", "--split=train,val", f"--output_dir={out}",
         "--num_shards=1", "--num_workers=1"],
        env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert sorted(os.listdir(out)) == [
        "dataset_descriptor.json", "train-00000-of-00001.tfrecord",
        "val-00000-of-00001.tfrecord"]
    assert "train shards: 2/2 images" in run.stderr


# --- Hardening: hard kills, the no-overwrite rule, bad inputs -------------

_ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
# The converter command, slowed down to half a second per image so that a
# kill lands in the middle of a shard.
_SLOW_CONVERTER = """
import time
from max_deeplab_tf import cli
from max_deeplab_tf.data import build_coco_panoptic as build
original = build.panoptic_label
def slow(*args, **kwargs):
    time.sleep(0.5)
    return original(*args, **kwargs)
build.panoptic_label = slow
build._define_flags()
cli.run_absl_main(build.main)
"""


def _wait_for(condition, seconds, what):
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _read_names(pattern):
    options = dataset_pb2.DatasetOptions(
        dataset="synthetic_panoptic", file_pattern=[pattern], batch_size=1,
        crop_size=[25, 25])
    return sorted(b[common.IMAGE_NAME][0].numpy().decode() for b in
                  input_pipeline.build_dataset(options, False))


def test_killed_converter_leaves_nothing_the_pattern_reads(tmp_path):
    root = _make(tmp_path / "coco", num_train=6, size=24)
    out = tmp_path / "out"
    flags = [f"--coco_root={root}", "--split=train", f"--output_dir={out}",
             "--num_shards=3", "--num_workers=1"]
    with open(tmp_path / "log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", _SLOW_CONVERTER] + flags, env=_ENV,
            stdout=log, stderr=subprocess.STDOUT)
        try:
            # Shard 0 done, shard 1 half written.
            _wait_for(lambda: (out / "train-00000-of-00003.tfrecord").exists()
                      and glob.glob(str(out / ".partial" / "train-00001-*")),
                      120, "the second shard to start")
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    assert glob.glob(str(out / ".partial" / "train-00001-of-00003.tfrecord"
                              ".tmp-*"))
    # The README's pattern matches the complete shard only, and the input
    # pipeline refuses the incomplete set by name.
    pattern = str(out / "train-*")
    assert tf.io.gfile.glob(pattern) == [
        str(out / "train-00000-of-00003.tfrecord")]
    with pytest.raises(cli.UserError, match="2 of its 3 shards are missing"):
        _read_names(pattern)
    # A re-run resumes, removes the partial file, and the pattern reads
    # every image once.
    result = build.convert(root, "train", str(out), num_shards=3,
                           num_workers=1, progress=False)
    assert result.skipped_shards == 1
    assert sorted(os.listdir(out)) == [
        "dataset_descriptor.json", "train-00000-of-00003.tfrecord",
        "train-00001-of-00003.tfrecord", "train-00002-of-00003.tfrecord"]
    json_path, _, _ = synthetic.split_paths(root, "train")
    with open(json_path) as f:
        expected = sorted(os.path.splitext(i["file_name"])[0]
                          for i in json.load(f)["images"])
    assert _read_names(pattern) == expected


def test_user_files_in_the_output_folder_survive(tmp_path):
    root = _make(tmp_path / "coco", num_train=2)
    out = tmp_path / "out"
    out.mkdir()
    mine = {"notes.txt": b"mine", "train-notes.txt": b"also mine",
            "train-00000-of-00002.tfrecord.bak": b"a backup"}
    for name, data in mine.items():
        (out / name).write_bytes(data)
    build.convert(root, "train", str(out), num_shards=2, num_workers=1,
                  progress=False)
    for name, data in mine.items():
        assert (out / name).read_bytes() == data
    assert not (out / ".partial").exists()


def test_existing_descriptor_is_never_replaced(tmp_path):
    root = _make(tmp_path / "coco", num_train=2)
    categories = builtin_datasets.categories_as_json(
        builtin_datasets.SYNTHETIC_CATEGORIES)[:4]

    def custom(data):
        data["categories"] = categories
        for a in data["annotations"]:
            for s in a["segments_info"]:
                s["category_id"] = categories[0]["id"]
                s["iscrowd"] = 0

    _edit_json(root, custom)
    # A foreign file of the descriptor's name.
    foreign = tmp_path / "a"
    foreign.mkdir()
    (foreign / "dataset_descriptor.json").write_text("my notes")
    with pytest.raises(build.ConversionError,
                       match="is not a dataset descriptor") as e:
        build.convert(root, "train", str(foreign), num_workers=1,
                      progress=False)
    assert str(foreign / "dataset_descriptor.json") in str(e.value)
    assert (foreign / "dataset_descriptor.json").read_text() == "my notes"
    # Ours, named after the dataset folder ('coco'); another name is
    # refused, not written over it.
    out = tmp_path / "b"
    result = build.convert(root, "train", str(out), num_workers=1,
                           progress=False)
    descriptor = dataset_info.get_dataset_descriptor(result.descriptor_path)
    assert descriptor.name == "coco"
    before = (out / "dataset_descriptor.json").read_bytes()
    with pytest.raises(build.ConversionError,
                       match="pass --dataset_name=coco"):
        build.convert(root, "train", str(out), num_workers=1,
                      dataset_name="cars", progress=False)
    assert (out / "dataset_descriptor.json").read_bytes() == before


def _edit_copy(root, name, edit):
    """A copy of the train JSON, edited; returns its path."""
    json_path, _, _ = synthetic.split_paths(root, "train")
    with open(json_path) as f:
        data = json.load(f)
    edit(data)
    path = os.path.join(root, name)
    with open(path, "w") as f:
        json.dump(data, f)
    return path


def _resize_first_png(root):
    _, png, _ = _first(root)
    with Image.open(png) as image:
        image.resize((image.width + 3, image.height)).save(png)
    return png


def _bad_inputs(root, tmp_path):
    """(name, annotation JSON, other flags, texts the error line names)."""
    json_path, _, _ = synthetic.split_paths(root, "train")
    cases = []

    def add(name, edit, *texts):
        path = _edit_copy(root, f"{name}.json", edit)
        cases.append((name, path, [], (path,) + texts))

    def non_utf8_name(data):
        data["images"][0]["file_name"] = "caf\udce9.jpg"

    def no_isthing(data):
        del data["categories"][0]["isthing"]

    def empty(data):
        data["images"], data["annotations"] = [], []

    add("non_utf8_name", non_utf8_name, "not valid UTF-8")
    add("no_isthing", no_isthing, "category #0", "lacks field 'isthing'")
    add("empty", empty, "has no images", "--allow_empty")
    bad_json = os.path.join(root, "bad.json")
    with open(bad_json, "w") as f:
        f.write('{"images": [')
    cases.append(("bad_json", bad_json, [], (bad_json, "not valid JSON")))
    png = _resize_first_png(root)
    cases.append(("png_size", json_path, [],
                  (png, "is 24x27 (height x width)", "is 24x24")))
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    cases.append(("output_dir", json_path,
                  [f"--output_dir={blocker}/out"], ("--output_dir",)))
    return cases


def test_bad_inputs_are_one_line_exit_2(tmp_path):
    root = _make(tmp_path / "coco", num_train=2, size=24)
    _, png_dir, image_dir = synthetic.split_paths(root, "train")
    cases = _bad_inputs(root, tmp_path)
    processes = []
    for name, json_path, extra, _ in cases:
        command = [sys.executable, "-m",
                   "max_deeplab_tf.data.build_coco_panoptic",
                   f"--annotation_json={json_path}",
                   f"--panoptic_dir={png_dir}", f"--image_dir={image_dir}",
                   f"--output_dir={tmp_path / ('out_' + name)}",
                   "--num_workers=1"] + extra
        processes.append(subprocess.Popen(
            command, env=_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True))
    start = time.time()
    for (name, _, _, texts), process in zip(cases, processes):
        try:
            _, stderr = process.communicate(timeout=240)
        finally:
            process.kill()
        assert process.returncode == 2, (name, stderr[-2000:])
        assert "Traceback" not in stderr, name
        errors = [l for l in stderr.splitlines() if l.startswith("error: ")]
        assert len(errors) == 1, (name, stderr[-2000:])
        assert errors[0] == stderr.strip().splitlines()[-1], name
        for text in texts:
            assert text in errors[0], (name, text, errors[0])
    # The empty JSON fails within seconds (it was the slowest to start at
    # most), and writes nothing.
    assert time.time() - start < 60 * len(cases)
    assert not os.path.exists(tmp_path / "out_empty" / "train-00000-of-"
                              "00001.tfrecord")


def test_verbose_shows_the_traceback(tmp_path):
    root = _make(tmp_path / "coco", num_train=1, size=24)
    _, png_dir, image_dir = synthetic.split_paths(root, "train")

    def empty(data):
        data["images"], data["annotations"] = [], []

    path = _edit_copy(root, "empty.json", empty)
    start = time.time()
    run = subprocess.run(
        [sys.executable, "-m", "max_deeplab_tf.data.build_coco_panoptic",
         f"--annotation_json={path}", f"--panoptic_dir={png_dir}",
         f"--image_dir={image_dir}", "--split=train",
         f"--output_dir={tmp_path / 'out'}", "--verbose"],
        env=_ENV, capture_output=True, text=True, timeout=120)
    assert time.time() - start < 60
    assert run.returncode == 2
    assert "Traceback" in run.stderr and "has no images" in run.stderr
    # --allow_empty writes the empty shards (the input pipeline then
    # refuses them by name: tests/data/test_shards.py).
    result = build.convert(None, "train", str(tmp_path / "out"),
                           annotation_json=path, panoptic_dir=png_dir,
                           image_dir=image_dir, num_shards=2,
                           num_workers=1, allow_empty=True, progress=False)
    assert result.num_images == 0
    assert all(os.path.getsize(p) == 0 for p in result.shard_paths)


def test_more_bad_inputs_name_the_file(tmp_path):
    root = _make(tmp_path / "coco", num_train=2, size=24)
    json_path, png_dir, image_dir = synthetic.split_paths(root, "train")

    def convert(path):
        return build.convert(None, "train", str(tmp_path / "out"),
                             annotation_json=path, panoptic_dir=png_dir,
                             image_dir=image_dir, num_workers=1,
                             progress=False)

    def expect(path, *texts):
        with pytest.raises(build.ConversionError) as e:
            convert(path)
        for text in (path,) + texts:
            assert text in str(e.value)

    not_utf8 = os.path.join(root, "latin1.json")
    with open(json_path, "rb") as f:
        data = f.read()
    with open(not_utf8, "wb") as f:
        f.write(data.replace(b'"licenses"', b'"lic\xe9nses"'))
    expect(not_utf8, "not UTF-8")
    expect(_edit_copy(root, "list.json", lambda d: d["images"].append(3)),
           "images[2]")
    expect(_edit_copy(root, "segs.json", lambda d: d["annotations"][0]
                      .__setitem__("segments_info", {"id": 1})),
           "expected a list")
    expect(_edit_copy(root, "area.json", lambda d: d["annotations"][0][
        "segments_info"][0].__setitem__("area", "big")), "area 'big'")
    expect(_edit_copy(root, "id.json", lambda d: d["annotations"][0][
        "segments_info"][0].__setitem__("id", True)), "segment id True")
    expect(_edit_copy(root, "noname.json", lambda d: d["images"][0]
                      .__setitem__("file_name", "")), "non-empty string")
    # A folder where the JSON should be.
    os.makedirs(os.path.join(root, "dir.json"))
    expect(os.path.join(root, "dir.json"), "cannot read")
    with pytest.raises(build.ConversionError, match="--num_shards"):
        build.convert(root, "train", str(tmp_path / "out"), num_shards=0)


def test_png_of_another_size_is_reported_as_such(tmp_path):
    root = _make(tmp_path / "coco", num_train=2, size=24)
    png = _resize_first_png(root)
    with pytest.raises(build.ConversionError) as e:
        _convert_small(tmp_path)
    assert str(e.value).startswith(f"{png}: panoptic PNG is 24x27 (height x "
                                   "width) but its image ")
    assert "area" not in str(e.value)

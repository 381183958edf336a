"""The predict command: COCO files and overlays from an export root or a
version folder, integer image ids, a user's output folder refused, one line
for an unreadable image or a model_dir, and predict -> panoptic_quality on
the synthetic dataset equal to the library's PQ on the same maps."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import max_deeplab_tf
from max_deeplab_tf import cli
from max_deeplab_tf import export
from max_deeplab_tf.data import build_coco_panoptic
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.data import synthetic
from max_deeplab_tf.evaluation import panoptic_quality
from max_deeplab_tf.evaluation import streaming
from max_deeplab_tf.inference import post_processing
from max_deeplab_tf.inference import predict
from tests import conftest
from tests.export import file_tree
from tests.export import tiny_model

COCO = dataset_info.get_dataset_descriptor("coco_panoptic")
SYNTHETIC = dataset_info.get_dataset_descriptor("synthetic_panoptic")


def _write_images(directory):
    rng = np.random.RandomState(0)
    images = {
        "photo.jpg": rng.randint(0, 256, [40, 52, 3]).astype(np.uint8),
        "gray.png": rng.randint(0, 256, [30, 30]).astype(np.uint8),
        "rgba.png": rng.randint(0, 256, [20, 45, 4]).astype(np.uint8),
        "000000000139.png": rng.randint(0, 256, [33, 33, 3]).astype(
            np.uint8),
    }
    for name, array in images.items():
        Image.fromarray(array).save(os.path.join(directory, name))
    with open(os.path.join(directory, "broken.png"), "wb") as f:
        f.write(b"\x89PNG not really" + bytes(range(50)))
    return images


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("images")
    _write_images(str(directory))
    return directory


def test_predict_writes_coco_files_and_overlays(tiny_export, image_dir,
                                                tmp_path):
    _, _, root, version = tiny_export
    messages = []
    status = predict.run(root, [f"{image_dir}/*"], str(tmp_path / "out"),
                         log=messages.append, progress=False)
    text = "\n".join(messages)
    assert status == 2, text
    assert f"skipped {image_dir}/broken.png: not a readable image" in text
    assert "function_node" not in text and "Traceback" not in text
    assert "wrote 4 of 5" in text

    data = json.load(open(tmp_path / "out" / "panoptic.json"))
    # COCO's integer id for an all-digit stem, the stem otherwise.
    assert sorted(map(str, (a["image_id"] for a in data["annotations"]))) == [
        "139", "gray", "photo", "rgba"]
    assert {a["image_id"] for a in data["annotations"]} >= {139}
    assert len(data["categories"]) == COCO.num_classes - 1

    predictor = max_deeplab_tf.Predictor.from_saved_model(version)
    for annotation in data["annotations"]:
        stem = annotation["file_name"][:-4]
        source = next(p for p in image_dir.iterdir()
                      if p.name.startswith(stem + "."))
        result = predictor(str(source))
        ids = panoptic_quality.read_id_png(
            str(tmp_path / "out" / "panoptic" / annotation["file_name"]))
        void = result.panoptic // COCO.label_divisor == COCO.ignore_label
        np.testing.assert_array_equal(ids, np.where(void, 0,
                                                    result.panoptic + 1))
        segments = {s["id"]: s["area"] for s in annotation["segments_info"]}
        assert segments == {s.id + 1: s.area for s in result.segments}
        overlay = np.asarray(Image.open(tmp_path / "out" / "overlay" /
                                        f"{stem}.png"))
        np.testing.assert_array_equal(overlay, np.asarray(result.overlay()))

    # The version folder gives the same files.
    assert predict.run(version, [f"{image_dir}/*"], str(tmp_path / "again"),
                       log=lambda m: None, progress=False) == 2
    assert file_tree.snapshot(tmp_path / "again") == file_tree.snapshot(tmp_path / "out")


def test_output_dir_of_a_user_is_refused_and_intact(tiny_export, image_dir,
                                                    tmp_path):
    root = tiny_export[2]
    output = tmp_path / "mine"
    before = file_tree.users_folder(output)
    with pytest.raises(cli.UserError) as error:
        predict.run(root, [f"{image_dir}/*.png"], str(output),
                    log=lambda m: None, progress=False)
    assert str(output) in str(error.value) and "notes.txt" in str(error.value)
    assert file_tree.snapshot(output) == before
    assert sorted(os.listdir(output)) == ["notes.txt", "sub"]

    # An earlier predict output is ours: predicting again replaces our files.
    ours = tmp_path / "ours"
    pattern = [f"{image_dir}/gray.png"]
    assert predict.run(root, pattern, str(ours), log=lambda m: None,
                       progress=False) == 0
    first = file_tree.snapshot(ours)
    assert predict.run(root, pattern, str(ours), log=lambda m: None,
                       progress=False) == 0
    assert file_tree.snapshot(ours) == first
    # ... unless a file that predict does not write is in it.
    (ours / "overlay" / "notes.txt").write_text("mine")
    with pytest.raises(cli.UserError, match="overlay/notes.txt"):
        predict.run(root, pattern, str(ours), log=lambda m: None,
                    progress=False)
    assert (ours / "overlay" / "notes.txt").read_text() == "mine"


def test_image_ids_from_a_gt_json(tiny_export, image_dir, tmp_path):
    gt = tmp_path / "gt.json"
    gt.write_text(json.dumps({"images": [
        {"id": 7, "file_name": "gray.jpg"},
        {"id": 8, "file_name": "rgba.jpg"}]}))
    assert predict.run(tiny_export[2], [f"{image_dir}/gray.png",
                                        f"{image_dir}/rgba.png"],
                       str(tmp_path / "out"), gt_json=str(gt),
                       log=lambda m: None, progress=False) == 0
    data = json.load(open(tmp_path / "out" / "panoptic.json"))
    assert sorted(a["image_id"] for a in data["annotations"]) == [7, 8]
    with pytest.raises(cli.UserError, match="has no file named like"):
        predict.run(tiny_export[2], [f"{image_dir}/photo.jpg"],
                    str(tmp_path / "other"), gt_json=str(gt),
                    log=lambda m: None, progress=False)
    assert not (tmp_path / "other").exists()


def test_no_matching_image_is_one_line(tiny_export, tmp_path):
    with pytest.raises(cli.UserError, match="matches no file"):
        predict.run(tiny_export[2], [f"{tmp_path}/*.jpg"],
                    str(tmp_path / "out"), log=lambda m: None)


def _command(args, timeout=300):
    return subprocess.run(
        [sys.executable, "-m", "max_deeplab_tf.predict"] + args,
        capture_output=True, text=True, timeout=timeout,
        cwd=conftest.REPO_ROOT)


def test_command_on_a_model_dir_and_progress_lines(tiny_export, image_dir,
                                                   tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"')
    os.symlink(tiny_export[2], model_dir / "export")
    run = _command([f"--saved_model={model_dir}",
                    f"--images={image_dir}/*.png",
                    f"--output_dir={tmp_path / 'out'}"])
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stderr.strip().splitlines()[-1] == (
        f"error: {model_dir} is not a SavedModel; the export is in "
        f"{model_dir}/export")
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out").exists()

    # On the export: plain progress lines (stderr is a pipe), exit 2 for
    # the unreadable file, named on one line.
    run = _command([f"--saved_model={model_dir}/export",
                    f"--images={image_dir}/*", "--batch_size=2",
                    f"--output_dir={tmp_path / 'out'}"])
    assert run.returncode == 2, run.stderr[-3000:]
    assert "predict: 5/5 images" in run.stderr
    assert f"skipped {image_dir}/broken.png: not a readable image" in (
        run.stdout)
    assert "function_node" not in run.stdout + run.stderr


@pytest.fixture(scope="module")
def synthetic_data(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("synthetic"))
    synthetic.generate(directory, num_train_images=1, num_val_images=8,
                       image_size=33, seed=3)
    return directory


def _ground_truth_maps(coco_dir):
    """image_id -> int32 [h, w] panoptic map (our encoding) of the val GT."""
    json_path = f"{coco_dir}/annotations/panoptic_val2017.json"
    data = json.load(open(json_path))
    spec = build_coco_panoptic.LabelSpec(
        category_to_class=dataset_info.category_to_class(SYNTHETIC),
        thing_classes=frozenset(SYNTHETIC.thing_class_ids),
        label_divisor=SYNTHETIC.label_divisor,
        ignore_label=SYNTHETIC.ignore_label, treat_crowd_as_ignore=False)
    maps = {}
    for annotation in data["annotations"]:
        png = f"{coco_dir}/annotations/panoptic_val2017/" + (
            annotation["file_name"])
        maps[annotation["image_id"]] = build_coco_panoptic.panoptic_label(
            open(png, "rb").read(), annotation["segments_info"], spec, png,
            json_path)
    return maps


def test_predict_then_panoptic_quality_equals_the_library(synthetic_data,
                                                          tmp_path):
    # A model whose maps have a known layout (sky above, ground below), so
    # that PQ is neither 0 nor 1.
    classes = post_processing.thing_stuff_class_ids(SYNTHETIC)
    sky, ground = (SYNTHETIC.class_names.index(n) for n in ("sky", "ground"))
    model = tiny_model.HorizonModel(len(classes) + 1, classes.index(sky),
                                    classes.index(ground), horizon=0.45)
    model(np.zeros([1, 33, 33, 3], np.float32))
    root = str(tmp_path / "export")
    export.export_saved_model(model, tiny_model.config(), root, 1,
                              descriptor=SYNTHETIC)

    coco = synthetic_data
    out = tmp_path / "predictions"
    assert predict.main([f"--saved_model={root}",
                         f"--images={coco}/val2017/*.jpg",
                         f"--output_dir={out}"]) == 0
    assert panoptic_quality.main([
        f"--gt_json={coco}/annotations/panoptic_val2017.json",
        f"--gt_dir={coco}/annotations/panoptic_val2017",
        f"--pred_json={out}/panoptic.json", f"--pred_dir={out}/panoptic",
        f"--output_json={tmp_path / 'pq.json'}", "--workers=1"]) in (0, None)
    command = json.load(open(tmp_path / "pq.json"))

    # The library on the same maps: the Predictor's panoptic maps against
    # the ground truth, with the trainer's streaming PQ.
    predictor = max_deeplab_tf.Predictor.from_saved_model(root)
    gt_maps = _ground_truth_maps(coco)
    images = sorted(os.listdir(f"{coco}/val2017"))
    assert len(images) == len(gt_maps) == 8
    gt, pred = [], []
    for name in images:
        image_id = int(name.split(".")[0])
        gt.append(gt_maps[image_id])
        pred.append(predictor(f"{coco}/val2017/{name}").panoptic)
    sums = streaming.statistics_fn(SYNTHETIC)(tf.constant(np.stack(gt)),
                                              tf.constant(np.stack(pred)))
    library = streaming.result_from_statistics(
        {k: v.numpy() for k, v in sums.items()}, SYNTHETIC)
    assert 0.05 < command["All"]["pq"] < 0.95, command["All"]
    for group in ("All", "Things", "Stuff"):
        for metric in ("pq", "sq", "rq"):
            assert command[group][metric] == pytest.approx(
                library[group][metric], abs=1e-6), (group, metric)

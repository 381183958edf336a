"""Tests for max_deeplab_tf.data.synthetic."""

import json
import os
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from max_deeplab_tf import cli
from max_deeplab_tf.data import builtin_datasets
from max_deeplab_tf.data import synthetic
from tests.export import file_tree

THINGS = {c[0] for c in builtin_datasets.SYNTHETIC_CATEGORIES if c[2]}
STUFF = {c[0] for c in builtin_datasets.SYNTHETIC_CATEGORIES if not c[2]}


def _read_ids(path):
    rgb = np.asarray(Image.open(path).convert("RGB"), np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def test_deterministic_for_a_seed(tmp_path):
    synthetic.generate(str(tmp_path / "a"), 3, 2, 40, seed=5)
    synthetic.generate(str(tmp_path / "b"), 3, 2, 40, seed=5)
    synthetic.generate(str(tmp_path / "c"), 3, 2, 40, seed=6)
    a, b, c = (file_tree.snapshot(tmp_path / n) for n in "abc")
    assert a == b
    assert len(a) == 3 + 3 + 2 + 2 + 2  # images, PNGs, 2 JSONs.
    assert a != c


def test_coco_panoptic_format(tmp_path):
    root = str(tmp_path)
    synthetic.generate(root, 4, 2, (48, 64), seed=1)
    image_ids = set()
    for split in ("train", "val"):
        json_path, png_dir, image_dir = synthetic.split_paths(root, split)
        assert json_path.endswith(f"annotations/panoptic_{split}2017.json")
        with open(json_path) as f:
            data = json.load(f)
        categories = {c["id"]: c for c in data["categories"]}
        assert {k for k, c in categories.items() if c["isthing"]} == THINGS
        images = {i["id"]: i for i in data["images"]}
        assert len(images) == len(data["annotations"])
        assert not image_ids & set(images)  # Ids unique across splits.
        image_ids |= set(images)
        for annotation in data["annotations"]:
            image = images[annotation["image_id"]]
            pixels = Image.open(os.path.join(image_dir, image["file_name"]))
            assert pixels.format == "JPEG" and pixels.mode == "RGB"
            assert pixels.size == (64, 48)
            assert (image["width"], image["height"]) == (64, 48)
            ids = _read_ids(os.path.join(png_dir, annotation["file_name"]))
            segments = annotation["segments_info"]
            listed = [s["id"] for s in segments]
            assert len(set(listed)) == len(listed)
            assert set(np.unique(ids)) - {0} == set(listed)
            for s in segments:
                ys, xs = np.nonzero(ids == s["id"])
                assert s["area"] == ys.size
                assert s["bbox"] == [xs.min(), ys.min(),
                                     xs.max() - xs.min() + 1,
                                     ys.max() - ys.min() + 1]
                assert s["category_id"] in categories
                if s["iscrowd"]:
                    assert s["category_id"] in THINGS
            stuff = [s["category_id"] for s in segments
                     if s["category_id"] in STUFF]
            assert len(stuff) == len(set(stuff))  # One segment per stuff.


def test_scenes_are_varied_and_not_trivial():
    stats = {"crowd": 0, "void": 0, "water": 0, "same_class_pairs": 0,
             "occluded": 0}
    shapes = set()
    for index in range(40):
        _, ids, info = synthetic.make_example(0, "train", index, 48)
        things = [s for s in info if s["category_id"] in THINGS]
        assert 1 <= len(things) <= 8
        stats["crowd"] += any(s["iscrowd"] for s in things)
        stats["void"] += bool((ids == 0).any())
        stats["water"] += any(s["category_id"] == synthetic.WATER
                              for s in info)
        classes = [s["category_id"] for s in things if not s["iscrowd"]]
        stats["same_class_pairs"] += len(classes) > len(set(classes))
        shapes |= set(classes)
        # An instance whose bounding box holds other segments' pixels
        # beyond its own shape is occluded or overlaps (not proof, but
        # a box rarely fits a lone disc or triangle exactly).
        for s in things:
            x, y, w, h = s["bbox"]
            if s["area"] < 0.5 * w * h:
                stats["occluded"] += 1
                break
    assert shapes == THINGS
    assert 3 <= stats["crowd"] <= 30
    assert stats["void"] >= 10
    assert stats["water"] >= 10
    assert stats["same_class_pairs"] >= 10
    assert stats["occluded"] >= 10


def test_later_instances_occlude_earlier_ones(monkeypatch):
    # Record each shape the renderer draws, then compare a shape's own
    # pixel count with the visible area of the segment it became.
    drawn = []
    original = synthetic._shape_mask

    def recording(*args):
        window = original(*args)
        drawn.append(0 if window is None else int(window[2].sum()))
        return window

    monkeypatch.setattr(synthetic, "_shape_mask", recording)
    partly_hidden = 0
    for index in range(20):
        drawn.clear()
        rng = np.random.default_rng(index)
        _, segment_map, segments = synthetic.render_scene(rng, 64, 64)
        areas = np.bincount(segment_map.ravel(),
                            minlength=len(segments) + 1)[1:]
        assert (areas > 0).all()
        singles = [k for k, (_, crowd) in enumerate(segments)
                   if segments[k][0] in THINGS and not crowd]
        # Without crowds, shapes and non-crowd thing segments pair up in
        # order among the survivors; count visible < drawn as occlusion.
        if len(drawn) == len(singles):
            partly_hidden += sum(areas[k] < d for k, d in zip(singles, drawn))
    assert partly_hidden >= 5


def test_ids_to_rgb_is_coco_encoding():
    rgb = synthetic.ids_to_rgb(np.array([[1 + 2 * 256 + 3 * 65536]]))
    assert rgb.tolist() == [[[1, 2, 3]]]


def test_too_small_images_are_refused(tmp_path):
    with pytest.raises(ValueError, match="16"):
        synthetic.generate_split(str(tmp_path), "train", 1, 8)


def _run(*flags):
    return subprocess.run(
        [sys.executable, "-m", "max_deeplab_tf.data.synthetic", *flags],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), capture_output=True,
        text=True, timeout=120)


@pytest.mark.parametrize("flags, named", [
    (["--image_size=8"], "--image_size"),
    (["--num_images=-1"], "--num_images"),
    ([], "--output_dir"),
])
def test_bad_flags_are_one_line_exit_2(tmp_path, flags, named):
    if named != "--output_dir":
        flags = flags + [f"--output_dir={tmp_path / 'out'}"]
    run = _run(*flags)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and named in last
    assert not (tmp_path / "out").exists()


def test_a_foreign_dataset_is_never_overwritten(tmp_path):
    # --output_dir pointed at a real COCO folder by mistake.
    json_path, _, _ = synthetic.split_paths(str(tmp_path), "train")
    os.makedirs(os.path.dirname(json_path))
    with open(json_path, "w") as f:
        f.write('{"info": {"description": "COCO 2017 Panoptic"}}')
    with pytest.raises(cli.UserError, match="not a synthetic dataset") as e:
        synthetic.generate(str(tmp_path), 1, 1, 16)
    assert json_path in str(e.value)
    with open(json_path) as f:
        assert "COCO 2017" in f.read()
    assert not os.path.exists(os.path.join(tmp_path, "train2017"))
    # Ours is regenerated in place, and no temporary file is left.
    synthetic.generate(str(tmp_path / "ours"), 1, 1, 16)
    synthetic.generate(str(tmp_path / "ours"), 2, 1, 16)
    assert len(os.listdir(tmp_path / "ours" / "train2017")) == 2
    for folder, _, files in os.walk(tmp_path / "ours"):
        assert not [n for n in files if n.startswith(".")], folder


def test_output_dir_under_a_file(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(cli.UserError, match="--output_dir"):
        synthetic.generate(str(tmp_path / "file" / "out"), 1, 1, 16)

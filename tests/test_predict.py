"""The predict command on generated images (RGB JPEG, grayscale, RGBA, an
unreadable file), with an export of the tiny model."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from max_deeplab_tf import export
from max_deeplab_tf import predict
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.evaluation import panoptic_quality
from tests.export import tiny_model


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    config = tiny_model.config()
    model = tiny_model.build(config)
    export_dir = str(tmp_path_factory.mktemp("predict") / "export")
    export.export_saved_model(model, config, export_dir)
    return export_dir


def _write_images(directory):
    rng = np.random.RandomState(0)
    images = {
        "photo.jpg": rng.randint(0, 256, [40, 52, 3]).astype(np.uint8),
        "gray.png": rng.randint(0, 256, [30, 30]).astype(np.uint8),
        "rgba.png": rng.randint(0, 256, [20, 45, 4]).astype(np.uint8),
    }
    for name, array in images.items():
        Image.fromarray(array).save(os.path.join(directory, name))
    with open(os.path.join(directory, "broken.png"), "wb") as f:
        f.write(b"\x89PNG not really" + bytes(range(50)))
    return images


def test_predict_writes_overlays_and_coco_files(saved_model, tmp_path):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    images = _write_images(str(image_dir))
    output_dir = tmp_path / "out"
    messages = []
    status = predict.run(saved_model, [f"{image_dir}/*"], str(output_dir),
                         log=messages.append)
    text = "\n".join(messages)
    assert status == 1, text
    assert "broken.png: skipped" in text and "not a readable image" in text
    assert "[4/4]" in text  # progress
    assert "wrote 3 of 4" in text

    data = json.load(open(output_dir / "panoptic.json"))
    assert sorted(a["file_name"] for a in data["annotations"]) == [
        "gray.png", "photo.png", "rgba.png"]
    coco = dataset_info.get_dataset_descriptor("coco_panoptic")
    assert len(data["categories"]) == coco.num_classes - 1

    served = tf.saved_model.load(saved_model).signatures["serving_default"]
    for annotation in data["annotations"]:
        stem = annotation["file_name"][:-4]
        source = next(n for n in images if n.startswith(stem + "."))
        if source.endswith(".jpg"):
            # JPEG decoders differ by a few levels; decode as TF does.
            rgb = tf.io.decode_jpeg(open(image_dir / source, "rb").read()
                                    ).numpy()
        else:
            rgb = np.asarray(Image.open(image_dir / source).convert("RGB"))
        height, width = rgb.shape[:2]
        ids = panoptic_quality.read_id_png(
            str(output_dir / "panoptic" / annotation["file_name"]))
        assert ids.shape == (height, width)
        segments = {s["id"]: s for s in annotation["segments_info"]}
        assert set(np.unique(ids)) - {0} == set(segments)
        for seg_id, segment in segments.items():
            assert segment["area"] == int((ids == seg_id).sum())
        overlay = np.asarray(Image.open(output_dir / "overlay" /
                                        f"{stem}.png"))
        assert overlay.shape == (height, width, 3)
        # The PNG holds what the SavedModel predicts for the RGB image
        # (grayscale repeated, alpha dropped): id = panoptic + 1.
        expected = served(images=tf.constant(rgb[None]))[
            "panoptic_pred"].numpy()[0]
        void = expected // coco.label_divisor == coco.ignore_label
        np.testing.assert_array_equal(ids, np.where(void, 0, expected + 1))


def test_predict_without_matches_fails_cleanly(tmp_path):
    messages = []
    status = predict.run(str(tmp_path), [f"{tmp_path}/*.jpg"],
                         str(tmp_path / "out"), log=messages.append)
    assert status == 2
    assert "no file matches" in messages[0]


def test_overlay_colours_boundaries_and_void():
    descriptor = dataset_info.DatasetDescriptor(
        name="overlay", num_classes=3, ignore_label=0, label_divisor=10,
        thing_class_ids=(1,), class_names=("void", "a", "b"))
    colormap = np.array([[0, 0, 0], [200, 0, 0], [0, 200, 0]], np.uint8)
    image = np.full([12, 40, 3], 100, np.uint8)
    panoptic = np.zeros([12, 40], np.int64)
    panoptic[:, 20:] = 20  # class 2 on the right half, void on the left
    drawn = predict.overlay(image, panoptic, descriptor, colormap)
    # Void keeps the image; the boundary column is white; inside the
    # segment (away from the drawn name) the colour is blended.
    assert drawn[0, 0].tolist() == [100, 100, 100]
    assert drawn[0, 20].tolist() == [255, 255, 255]
    blend = (1 - predict._OVERLAY_ALPHA) * 100 + predict._OVERLAY_ALPHA * 200
    np.testing.assert_allclose(drawn[0, 38], [
        (1 - predict._OVERLAY_ALPHA) * 100, blend,
        (1 - predict._OVERLAY_ALPHA) * 100], atol=1)
    # The class name is drawn (some pixels differ from the plain blend).
    plain = predict.overlay(image, panoptic, dataset_info.DatasetDescriptor(
        name="overlay", num_classes=3, ignore_label=0, label_divisor=10,
        thing_class_ids=(1,), class_names=("void", "a", "")), colormap)
    assert (plain != drawn).any()

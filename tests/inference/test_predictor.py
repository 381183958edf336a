"""The Python inference API: Predictor on real-size arrays, paths, PIL
images and batches, against the exported signature called directly; segments
against an independent numpy count; from_checkpoint against the export."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image

import max_deeplab_tf
from max_deeplab_tf import cli
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.inference import predictor as predictor_lib
from max_deeplab_tf.inference import visualization
from max_deeplab_tf.training import checkpoints
from tests.export import tiny_model

COCO = dataset_info.get_dataset_descriptor("coco_panoptic")
MAPS = (("panoptic", "panoptic_pred"), ("semantic", "semantic_pred"),
        ("instance", "instance_pred"), ("instance_scores", "instance_scores"),
        ("semantic_scores", "semantic_scores"))


@pytest.fixture(scope="module")
def predictor(tiny_export):
    # The export root: its newest (only) version is used.
    return max_deeplab_tf.Predictor.from_saved_model(tiny_export[2])


@pytest.fixture(scope="module")
def served(tiny_export):
    return tf.saved_model.load(tiny_export[3]).signatures["serving_default"]


def _image(height, width, seed=0):
    rng = np.random.RandomState(seed)
    # Smooth blobs rather than noise, so the segments are large.
    small = rng.randint(0, 256, [4, 5, 3]).astype(np.uint8)
    image = np.asarray(Image.fromarray(small).resize((width, height),
                                                     Image.BILINEAR))
    return image


def _assert_same(a, b):
    for attr, _ in MAPS:
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr),
                                      err_msg=attr)


def _assert_same_across_batch_sizes(a, b):
    """The same label maps, and scores equal to the last bits: TensorFlow's
    own (Eigen) CPU convolutions split their work by batch size, so an
    image's float outputs in a batch of 2 may differ from those of the
    image alone by rounding (2 ulp seen on an AMD EPYC, where TensorFlow
    leaves oneDNN off; with oneDNN they were equal)."""
    for attr, _ in MAPS:
        got, want = getattr(a, attr), getattr(b, attr)
        if np.issubdtype(want.dtype, np.floating):
            np.testing.assert_array_max_ulp(got, want, maxulp=4)
        else:
            np.testing.assert_array_equal(got, want, err_msg=attr)


def test_import_of_the_package_stays_light():
    code = ("import sys, max_deeplab_tf; "
            "assert hasattr(max_deeplab_tf, 'Predictor'); "
            "print('tensorflow' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    # hasattr imports the Predictor module (TF); before it, nothing heavy.
    code = ("import sys, max_deeplab_tf; "
            "print('tensorflow' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert run.stdout.strip() == "False", run.stderr[-2000:]


def test_real_size_array_gives_the_signatures_maps_and_counted_segments(
        predictor, served):
    image = _image(1500, 2000)
    result = predictor(image)
    assert isinstance(result, predictor_lib.Prediction)
    want = served(images=tf.constant(image[None]))
    for attr, key in MAPS:
        got = getattr(result, attr)
        assert got.shape == (1500, 2000), attr
        np.testing.assert_array_equal(got, want[key].numpy()[0], err_msg=attr)
    np.testing.assert_array_equal(result.image, image)

    # Segments: an independent count of the map's values with numpy.
    values, counts = np.unique(result.panoptic, return_counts=True)
    expected = {int(v): int(c) for v, c in zip(values, counts)
                if v // COCO.label_divisor != COCO.ignore_label}
    assert len(expected) >= 2
    assert {s.id: s.area for s in result.segments} == expected
    assert sum(s.area for s in result.segments) == int(
        (result.panoptic // COCO.label_divisor != COCO.ignore_label).sum())
    for segment in result.segments:
        mask = result.panoptic == segment.id
        assert segment.class_id == segment.id // COCO.label_divisor
        assert segment.class_name == COCO.class_names[segment.class_id]
        assert segment.is_thing == (segment.class_id in COCO.thing_class_ids)
        assert segment.category_id == COCO.category_ids[segment.class_id]
        score = np.mean(result.semantic_scores[mask].astype(np.float64)
                        * result.instance_scores[mask])
        assert segment.score == pytest.approx(score, rel=1e-6)
        assert 0.0 <= segment.score <= 1.0


def test_root_and_version_folder_give_the_same(tiny_export, predictor):
    _, _, root, version = tiny_export
    assert predictor.source == version
    by_version = max_deeplab_tf.Predictor.from_saved_model(version)
    image = _image(120, 90, seed=1)
    _assert_same(predictor(image), by_version(image))


def test_paths_pil_images_gray_and_rgba(predictor, tmp_path):
    image = _image(300, 400, seed=2)
    Image.fromarray(image).save(tmp_path / "photo.png")
    want = predictor(image)
    for source in (str(tmp_path / "photo.png"), tmp_path / "photo.png",
                   Image.open(tmp_path / "photo.png")):
        _assert_same(predictor(source), want)
    gray = image[..., 0]
    Image.fromarray(gray).save(tmp_path / "gray.png")
    rgb_of_gray = np.repeat(gray[..., None], 3, axis=-1)
    _assert_same(predictor(str(tmp_path / "gray.png")), predictor(rgb_of_gray))
    _assert_same(predictor(gray), predictor(rgb_of_gray))
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 7,
                                          np.uint8)], axis=-1)
    _assert_same(predictor(rgba), want)


def test_batches_array_and_list_of_sizes(tiny_export):
    batched = max_deeplab_tf.Predictor.from_saved_model(tiny_export[2],
                                                        batch_size=2)
    images = np.stack([_image(64, 80, seed=s) for s in range(3)])
    results = batched(images)
    assert isinstance(results, list) and len(results) == 3
    for image, result in zip(images, results):
        _assert_same_across_batch_sizes(result, batched(image))
    mixed = [images[0], _image(50, 30, seed=5), Image.fromarray(images[2])]
    results = batched(mixed)
    assert [r.panoptic.shape for r in results] == [(64, 80), (50, 30),
                                                   (64, 80)]
    _assert_same_across_batch_sizes(results[1], batched(mixed[1]))


def test_overlay_is_the_blend_with_a_legend(predictor):
    image = _image(240, 320, seed=3)
    result = predictor(image)
    drawn = result.overlay()
    assert isinstance(drawn, Image.Image) and drawn.mode == "RGB"
    pixels = np.asarray(drawn)
    assert pixels.shape[0] >= 240 and pixels.shape[1] > 320
    np.testing.assert_array_equal(
        pixels[:240, :320], visualization.blend(image, result.panoptic, COCO))
    legend = pixels[:, 320:]
    colours = visualization.colormap_for(COCO)
    for class_id in {s.class_id for s in result.segments}:
        assert np.all(legend == colours[class_id], axis=-1).any(), class_id
    np.testing.assert_array_equal(np.asarray(result.overlay(legend=False)),
                                  pixels[:240, :320])


def test_bad_inputs_get_one_line(predictor, tmp_path):
    with pytest.raises(cli.UserError, match="expected uint8"):
        predictor(np.zeros([10, 10, 3], np.float32))
    with pytest.raises(cli.UserError, match=r"shape \(10, 10, 5\)"):
        predictor(np.zeros([10, 10, 5], np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not a jpeg" + bytes(range(40)))
    with pytest.raises(cli.UserError) as error:
        predictor(str(broken))
    assert str(error.value).startswith(f"{broken}: not a readable image")
    assert "function_node" not in str(error.value)
    with pytest.raises(cli.UserError, match="missing.png"):
        predictor([str(tmp_path / "missing.png")])


def test_model_dir_is_answered_with_its_export(tiny_export, tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "checkpoint").write_text('model_checkpoint_path: "ckpt-3"')
    os.symlink(tiny_export[2], model_dir / "export")
    with pytest.raises(cli.UserError) as error:
        max_deeplab_tf.Predictor.from_saved_model(str(model_dir))
    assert str(error.value) == (f"{model_dir} is not a SavedModel; the "
                                f"export is in {model_dir}/export")


def test_from_checkpoint_equals_the_export(tiny_export, predictor, tmp_path):
    model, config, _, _ = tiny_export
    model_dir = tmp_path / "model"
    # As the trainer writes it: the model beside a step and optimizer state
    # that inference does not read.
    checkpoint = tf.train.Checkpoint(
        model=checkpoints.model_view(model),
        global_step=tf.Variable(3, dtype=tf.int64),
        optimizer=tf.train.Checkpoint(slot=tf.Variable([1.0, 2.0])))
    tf.train.CheckpointManager(checkpoint, str(model_dir), 3).save(
        checkpoint_number=3)
    image = _image(70, 90, seed=4)
    want = predictor(image)
    # The config given as a file with overrides...
    from_file = max_deeplab_tf.Predictor.from_checkpoint(
        str(model_dir), config_file=tiny_model.CONFIG,
        config_overrides=tiny_model.OVERRIDES)
    assert from_file.source == f"{model_dir}/ckpt-3"
    _assert_same(from_file(image), want)
    # ... or found in the model_dir (as the deeplab2 importer writes it),
    # with an unset ${VARIABLE} in a data path it does not read.
    config.train_dataset_options.file_pattern[:] = ["${UNSET_TRAIN_SET}"]
    (model_dir / "experiment.textproto").write_text(
        text_format.MessageToString(config))
    os.environ.pop("UNSET_TRAIN_SET", None)
    _assert_same(max_deeplab_tf.Predictor.from_checkpoint(str(model_dir))(
        image), want)


def test_from_checkpoint_errors_name_the_path(tmp_path):
    with pytest.raises(cli.UserError, match="experiment.textproto: no "
                       "experiment config; pass config_file="):
        max_deeplab_tf.Predictor.from_checkpoint(str(tmp_path))
    with pytest.raises(cli.UserError, match="holds no checkpoint"):
        max_deeplab_tf.Predictor.from_checkpoint(
            str(tmp_path), config_file=tiny_model.CONFIG,
            config_overrides=tiny_model.OVERRIDES)
    # A checkpoint of another model.
    other = tf.train.Checkpoint(model=tf.train.Checkpoint(
        w=tf.Variable(1.0)))
    other.save(str(tmp_path / "ckpt"))
    with pytest.raises(cli.UserError, match="not a checkpoint of the model"):
        max_deeplab_tf.Predictor.from_checkpoint(
            str(tmp_path), config_file=tiny_model.CONFIG,
            config_overrides=tiny_model.OVERRIDES)


def test_pathlike_is_accepted_by_read_image(tmp_path):
    Image.fromarray(np.zeros([3, 4, 3], np.uint8)).save(tmp_path / "a.png")
    assert predictor_lib.read_image(pathlib.Path(tmp_path / "a.png")
                                    ).shape == (3, 4, 3)


def test_prediction_repr_is_short():
    descriptor = dataset_info.get_dataset_descriptor("synthetic_panoptic")
    panoptic = np.full([4, 6], 4 * 256, np.int32)  # sky
    panoptic[:2, :2] = 1 * 256 + 1  # one disc
    zeros = np.zeros([4, 6], np.float32)
    result = predictor_lib.Prediction(
        image=np.zeros([4, 6, 3], np.uint8), panoptic=panoptic,
        semantic=panoptic // 256, instance=panoptic % 256,
        instance_scores=zeros, semantic_scores=zeros, descriptor=descriptor)
    assert repr(result) == "Prediction(4x6, 2 segment(s): disc, sky)"
    assert [(s.class_name, s.area, s.is_thing) for s in result.segments] == [
        ("disc", 4, True), ("sky", 20, False)]


def _pipeline_image(path):
    """The image the trainer's evaluation sees: the file as the converter
    stores it in a record, decoded by the input pipeline."""
    from max_deeplab_tf.data import tfrecord

    with open(path, "rb") as f:
        data = f.read()
    with Image.open(path) as image:
        width, height = image.size
    example = tfrecord.make_example(data, "jpeg", "a", height, width)
    decoded = tfrecord.decode_example(
        tf.constant(example.SerializeToString()), decode_label=False)
    return decoded["image"].numpy()


def test_read_image_decodes_a_jpeg_as_evaluation_does(tmp_path):
    # Smooth gradients with texture, as photos: JPEG decoders disagree.
    rows, cols = np.mgrid[0:61, 0:83]
    rng = np.random.RandomState(0)
    image = np.stack([rows * 4, cols * 3, (rows + cols) * 2], -1)
    image = np.clip(image + rng.randint(0, 40, image.shape), 0, 255)
    Image.fromarray(image.astype(np.uint8)).save(tmp_path / "a.jpg",
                                                 quality=90)
    expected = _pipeline_image(tmp_path / "a.jpg")
    # Pillow decodes this file to other values: the check below has teeth.
    with Image.open(tmp_path / "a.jpg") as pil_image:
        assert (np.asarray(pil_image.convert("RGB")) != expected).any()
    np.testing.assert_array_equal(
        predictor_lib.read_image(tmp_path / "a.jpg"), expected)


@pytest.mark.parametrize("orientation,quarter_turns", [
    (1, 0), (3, 2), (6, -1), (8, 1)])
def test_read_image_applies_the_exif_orientation(tmp_path, orientation,
                                                 quarter_turns):
    # EXIF orientation 6: the stored pixels are shown turned a quarter
    # clockwise; 8: counter-clockwise; 3: half a turn.
    stored = np.arange(3 * 5 * 3, dtype=np.uint8).reshape([3, 5, 3])
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored).save(tmp_path / "a.png", exif=exif)
    np.testing.assert_array_equal(
        predictor_lib.read_image(tmp_path / "a.png"),
        np.rot90(stored, quarter_turns))


def test_read_image_converts_palette_and_alpha_images(tmp_path):
    rgba = np.zeros([4, 6, 4], np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 7
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(
        predictor_lib.read_image(tmp_path / "rgba.png"), rgba[..., :3])
    Image.fromarray(rgba[..., :3]).convert(
        "P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    np.testing.assert_array_equal(
        predictor_lib.read_image(tmp_path / "p.png"), rgba[..., :3])


def test_tflite_paths_without_a_model_get_one_line(tiny_export, tmp_path):
    # Converted models are checked in tests/export/test_tflite.py; here the
    # dispatch and the messages (no conversion needed).
    _, _, root, version = tiny_export
    missing = str(tmp_path / "model.tflite")
    for call in (max_deeplab_tf.Predictor.from_saved_model,
                 max_deeplab_tf.Predictor.from_tflite):
        with pytest.raises(cli.UserError, match="no such LiteRT") as error:
            call(missing)
        assert "\n" not in str(error.value)
    # An export without LiteRT models: the file it would have is named.
    with pytest.raises(cli.UserError, match="tflite_variants") as error:
        max_deeplab_tf.Predictor.from_tflite(root)
    assert f"{version}/assets.extra/model.tflite" in str(error.value)

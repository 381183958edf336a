"""Tests for max_deeplab_tf.data.autoaugment: each operation against numpy,
label/image alignment after geometric operations, deeplab2's policy table,
and the operation inside tf.data and the training input pipeline."""

import os

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import cli
from max_deeplab_tf.data import autoaugment as aa

# deeplab2's published policy, copied as data from google-research/deeplab2
# at commit 64bc1c1a6505b6cd1779b65f9127180840b8a4fa,
# data/preprocessing/autoaugment_policy.py: the reduced operation space, the
# probability grid and simple_classification_policy (six numbers per
# sub-policy: operation index, probability index, magnitude, twice).
DL2_OPERATIONS = ('AutoContrast', 'Equalize', 'Invert', 'Posterize',
                  'Solarize', 'Color', 'Contrast', 'Brightness', 'Sharpness')
DL2_PROBABILITIES = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
DL2_SIMPLE_CLASSIFICATION_POLICY = [8, 2, 7, 7, 1, 10,
                                    1, 0, 9, 6, 1, 10,
                                    8, 1, 9, 5, 1, 9,
                                    4, 1, 7, 1, 3, 9,
                                    8, 1, 1, 1, 1, 7]
# deeplab2's available_policies: name -> magnitude scale.
DL2_POLICY_SCALES = {"simple_classification_policy": 1,
                     "simple_classification_policy_magnitude_scale_0.2": 0.2}

FILL = 999  # a label fill value that no test label uses


def _decode(numbers, magnitude_scale):
    sub_policies = []
    for start in range(0, len(numbers), 6):
        sub_policies.append(tuple(
            (DL2_OPERATIONS[numbers[start + i]],
             DL2_PROBABILITIES[numbers[start + i + 1]],
             numbers[start + i + 2] * magnitude_scale)
            for i in (0, 3)))
    return tuple(sub_policies)


@pytest.mark.parametrize("name", sorted(DL2_POLICY_SCALES))
def test_policies_are_deeplab2s(name):
    expected = _decode(DL2_SIMPLE_CLASSIFICATION_POLICY,
                       DL2_POLICY_SCALES[name])
    assert aa.POLICIES[name] == expected
    assert set(aa.POLICIES) == set(DL2_POLICY_SCALES)
    assert aa.REDUCED_OPERATIONS == DL2_OPERATIONS
    assert list(aa.PROBABILITIES) == DL2_PROBABILITIES


def test_scaled_policy_is_tf_models_panoptic_deeplab_policy():
    # A second published copy of the 0.2-scaled policy.
    from official.vision.ops import augment
    theirs = augment.AutoAugment.panoptic_deeplab_policy()
    ours = aa.POLICIES["simple_classification_policy_magnitude_scale_0.2"]
    assert [[op[:2] for op in sub] for sub in ours] == [
        [tuple(op[:2]) for op in sub] for sub in theirs]
    np.testing.assert_allclose([[op[2] for op in sub] for sub in ours],
                               [[op[2] for op in sub] for sub in theirs],
                               rtol=1e-12)


@pytest.mark.parametrize("name, magnitude, expected", [
    # deeplab2's autoaugment_utils.level_to_arg, worked by hand.
    ("Sharpness", 7, (7 / 10 * 1.8 + 0.1,)),   # 1.36
    ("Brightness", 10, (1.9,)),
    ("Color", 9, (1.72,)),
    ("Contrast", 2.0, (0.46,)),
    ("Solarize", 7, (179,)),                   # int(0.7 * 256)
    ("Solarize", 1.4, (35,)),                  # int(0.14 * 256)
    ("Posterize", 10, (4,)),
    ("Posterize", 6, (2,)),
    ("Equalize", 9, ()),
    ("AutoContrast", 3, ()),
    ("Invert", 5, ()),
])
def test_magnitude_to_argument(name, magnitude, expected):
    arguments = aa.operation_arguments(name, magnitude)
    assert len(arguments) == len(expected)
    for got, want in zip(arguments, expected):
        assert got == pytest.approx(want, abs=1e-12)
        assert type(got) is type(want)


@pytest.mark.parametrize("name, magnitude, size", [
    ("Rotate", 10, 30.0), ("Rotate", 5, 15.0), ("ShearX", 10, 0.3),
    ("ShearY", 5, 0.15), ("TranslateX", 10, aa.TRANSLATE_CONST),
    ("TranslateY", 2, 0.2 * aa.TRANSLATE_CONST),
])
def test_geometric_arguments_have_a_random_sign(name, magnitude, size):
    tf.random.set_seed(1)
    values = {round(float(aa.operation_arguments(name, magnitude)[0]), 6)
              for _ in range(40)}
    assert values == {round(size, 6), round(-size, 6)}


# --- photometric operations against numpy --------------------------------

def _image(seed=0, height=6, width=7):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (height, width, 3)).astype(np.uint8)


def _run(name, image, magnitude):
    out, _ = aa.apply_operation(name, tf.constant(image), None, magnitude,
                                FILL)
    assert out.dtype == tf.uint8 and out.shape == image.shape
    return out.numpy()


def _blend(degenerate, image, factor):
    """tf-models'/deeplab2's blend, in float32 as they compute it."""
    if factor == 0.0:
        return degenerate
    if factor == 1.0:
        return image
    d = degenerate.astype(np.float32)
    i = image.astype(np.float32)
    temp = d + np.float32(factor) * (i - d)
    if 0.0 < factor < 1.0:
        return temp.astype(np.uint8)
    return np.clip(temp, 0.0, 255.0).astype(np.uint8)


def test_invert_solarize_posterize():
    image = _image(1)
    np.testing.assert_array_equal(_run("Invert", image, 3), 255 - image)
    np.testing.assert_array_equal(_run("Solarize", image, 7),
                                  np.where(image < 179, image, 255 - image))
    np.testing.assert_array_equal(_run("Posterize", image, 10),
                                  image & 0xF0)
    np.testing.assert_array_equal(_run("Posterize", image, 6),
                                  image & 0xC0)


def test_autocontrast_stretches_each_channel():
    image = _image(2)
    image[:, :, 2] = 77  # a flat channel stays as it is
    expected = image.copy()
    for c in range(2):
        channel = image[:, :, c].astype(np.float64)
        lo, hi = channel.min(), channel.max()
        expected[:, :, c] = np.clip((channel - lo) * (255.0 / (hi - lo)), 0,
                                    255).astype(np.uint8)
    got = _run("AutoContrast", image, 0)
    # Float rounding of the scale may differ by one grey level at most
    # where (x - lo) * 255 / (hi - lo) is an integer; elsewhere exact.
    exact = np.zeros_like(image, bool)
    for c in range(2):
        channel = image[:, :, c].astype(np.int64)
        lo, hi = channel.min(), channel.max()
        exact[:, :, c] = ((channel - lo) * 255) % (hi - lo) != 0
    exact[:, :, 2] = True
    np.testing.assert_array_equal(got[exact], expected[exact])
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert got[:, :, 0].min() == 0 and got[:, :, 0].max() == 255


def _equalize_reference(image):
    """PIL's ImageOps.equalize, channel by channel (integer arithmetic)."""
    out = image.copy()
    for c in range(3):
        channel = image[:, :, c]
        histogram = np.bincount(channel.ravel(), minlength=256)
        nonzero = histogram[histogram > 0]
        step = (nonzero.sum() - nonzero[-1]) // 255
        if step == 0:
            continue
        lut = np.zeros(256, np.int64)
        count = step // 2
        for value in range(256):
            lut[value] = min(255, count // step)
            count += histogram[value]
        out[:, :, c] = lut[channel]
    return out


def test_equalize_is_pils():
    rng = np.random.default_rng(3)
    image = rng.integers(40, 120, (32, 32, 3)).astype(np.uint8)
    image[:, :, 2] = 5  # one value: step 0, unchanged
    np.testing.assert_array_equal(_run("Equalize", image, 9),
                                  _equalize_reference(image))


def test_brightness_blends_with_black():
    image = _image(4)
    for magnitude in (10, 2.0, 4.5):  # factors 1.9, 0.46, 0.91
        factor = magnitude / 10 * 1.8 + 0.1
        np.testing.assert_array_equal(
            _run("Brightness", image, magnitude),
            _blend(np.zeros_like(image), image, factor))


@pytest.mark.parametrize("height, width, level", [(16, 16, 1), (32, 48, 6),
                                                  (40, 40, 6)])
def test_contrast_blends_with_deeplab2s_pixel_count_grey(height, width,
                                                         level):
    # deeplab2's degenerate grey is (number of pixels) / 256, truncated:
    # 256 px -> 1, 1536 px -> 6, 1600 px -> 6.25 -> 6.
    image = _image(5, height, width)
    assert int(height * width / 256) == level
    for magnitude in (10, 2.0):
        factor = magnitude / 10 * 1.8 + 0.1
        np.testing.assert_array_equal(
            _run("Contrast", image, magnitude),
            _blend(np.full_like(image, level), image, factor))


def test_contrast_grey_is_clipped_at_255():
    image = _image(6, 300, 300)  # 351 > 255
    np.testing.assert_array_equal(
        _run("Contrast", image, 2.0),
        _blend(np.full_like(image, 255), image, 0.46))


def test_color_blends_with_grey():
    image = _image(7)
    grey = tf.image.grayscale_to_rgb(
        tf.image.rgb_to_grayscale(tf.constant(image))).numpy()
    for magnitude in (9, 1.8):
        factor = magnitude / 10 * 1.8 + 0.1
        np.testing.assert_array_equal(_run("Color", image, magnitude),
                                      _blend(grey, image, factor))


def test_sharpness_blends_with_pils_smooth_filter():
    # PIL's SMOOTH kernel [[1, 1, 1], [1, 5, 1], [1, 1, 1]] / 13 inside, the
    # border kept. Images whose 3x3 sums are never a multiple of 13 keep the
    # truncation away from float rounding.
    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]])
    for seed in range(100):
        image = _image(seed, 4, 5)
        sums = np.zeros((2, 3, 3), np.int64)
        for dy in range(3):
            for dx in range(3):
                sums += kernel[dy, dx] * image[dy:dy + 2, dx:dx + 3]
        if np.all(sums % 13):
            break
    else:
        pytest.fail("no test image without a multiple of 13")
    smooth = image.copy()
    smooth[1:-1, 1:-1] = np.clip(sums // 13, 0, 255)
    for magnitude in (7, 1, 9):
        factor = magnitude / 10 * 1.8 + 0.1
        np.testing.assert_array_equal(_run("Sharpness", image, magnitude),
                                      _blend(smooth, image, factor))


# --- geometric operations against numpy ----------------------------------

def _pair(seed=0, height=5, width=5):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 120, (height, width)).astype(np.int32)
    image = np.stack([label, (label * 2) % 256, 255 - label], -1).astype(
        np.uint8)
    return image, label


def _geometric(function, image, label, argument):
    out_image, out_label = function(tf.constant(image), tf.constant(label),
                                    argument, FILL)
    return out_image.numpy(), out_label.numpy()


def _reference_warp(image, label, source):
    """Nearest-neighbour warp: output (y, x) reads source(y, x) = (y', x')
    rounded half up; outside pixels get 128 / FILL."""
    height, width = label.shape
    out_image = np.full_like(image, 128)
    out_label = np.full_like(label, FILL)
    for y in range(height):
        for x in range(width):
            sy, sx = source(y, x)
            sy, sx = int(np.floor(sy + 0.5)), int(np.floor(sx + 0.5))
            if 0 <= sy < height and 0 <= sx < width:
                out_image[y, x] = image[sy, sx]
                out_label[y, x] = label[sy, sx]
    return out_image, out_label


def test_rotate_by_quarter_turns_is_rot90():
    image, label = _pair(0)
    got_image, got_label = _geometric(aa.rotate, image, label, 90.0)
    np.testing.assert_array_equal(got_image, np.rot90(image))
    np.testing.assert_array_equal(got_label, np.rot90(label))
    got_image, got_label = _geometric(aa.rotate, image, label, -180.0)
    np.testing.assert_array_equal(got_label, label[::-1, ::-1])
    np.testing.assert_array_equal(got_image, image[::-1, ::-1])


def test_rotate_matches_brute_force():
    image, label = _pair(1, 7, 9)
    degrees = 21.0
    theta = np.deg2rad(degrees)
    cy, cx = 3.0, 4.0

    def source(y, x):
        # Inverse rotation about the centre (output -> input).
        dx, dy = x - cx, y - cy
        return (np.sin(theta) * dx + np.cos(theta) * dy + cy,
                np.cos(theta) * dx - np.sin(theta) * dy + cx)

    want_image, want_label = _reference_warp(image, label, source)
    got_image, got_label = _geometric(aa.rotate, image, label, degrees)
    np.testing.assert_array_equal(got_label, want_label)
    np.testing.assert_array_equal(got_image, want_image)
    assert (got_label == FILL).any()


@pytest.mark.parametrize("pixels", [2.0, -1.0, 0.0, 7.0])
def test_translate_shifts_and_fills(pixels):
    image, label = _pair(2, 4, 6)
    p = int(pixels)
    want = _reference_warp(image, label, lambda y, x: (y, x + p))
    got = _geometric(aa.translate_x, image, label, pixels)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    want = _reference_warp(image, label, lambda y, x: (y + p, x))
    got = _geometric(aa.translate_y, image, label, pixels)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    if pixels == 2.0:  # by hand: columns move two to the left
        moved = _geometric(aa.translate_x, image, label, pixels)[1]
        np.testing.assert_array_equal(moved[:, :4], label[:, 2:])
        assert (moved[:, 4:] == FILL).all()


# Levels whose multiples (up to 5 pixels) stay clear of .5 ties.
@pytest.mark.parametrize("level", [0.27, -0.27, 0.13])
def test_shear_matches_brute_force(level):
    image, label = _pair(3, 5, 6)
    want = _reference_warp(image, label, lambda y, x: (y, x + level * y))
    got = _geometric(aa.shear_x, image, label, level)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])
    want = _reference_warp(image, label, lambda y, x: (y + level * x, x))
    got = _geometric(aa.shear_y, image, label, level)
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[0], want[0])


def _assert_aligned(image, label):
    """The test image encodes its label; the fill is (128, 128, 128)."""
    inside = label != FILL
    encoded = np.stack([label, (label * 2) % 256, 255 - label], -1)
    np.testing.assert_array_equal(image[inside], encoded[inside])
    assert (image[~inside] == 128).all()


@pytest.mark.parametrize("name", sorted(aa.GEOMETRIC_OPS))
def test_geometric_operations_move_label_with_image(name):
    image, label = _pair(4, 23, 31)
    tf.random.set_seed(4)
    for magnitude in (1, 4, 7, 10):
        got_image, got_label = aa.apply_operation(
            name, tf.constant(image), tf.constant(label), magnitude, FILL,
            translate_const=20.0)
        assert got_image.shape == image.shape
        assert got_label.shape == label.shape
        _assert_aligned(got_image.numpy(), got_label.numpy())


def test_custom_geometric_policy_keeps_alignment():
    augment = aa.AutoAugment(policy=[
        [("Rotate", 1.0, 10), ("ShearX", 1.0, 7)],
        [("TranslateY", 1.0, 3), ("ShearY", 0.5, 5)],
        [("TranslateX", 1.0, 8), ("Rotate", 1.0, 2)],
    ], label_fill_value=FILL, translate_const=20.0)
    image, label = _pair(5, 21, 17)
    tf.random.set_seed(5)
    moved = 0
    for _ in range(12):
        got_image, got_label = augment(tf.constant(image), tf.constant(label))
        _assert_aligned(got_image.numpy(), got_label.numpy())
        moved += int((got_label.numpy() == FILL).any())
    assert moved == 12


def test_photometric_policy_leaves_label_alone():
    augment = aa.AutoAugment("simple_classification_policy",
                             label_fill_value=FILL)
    image, label = _pair(6, 16, 16)
    tf.random.set_seed(6)
    changed = 0
    for _ in range(30):
        got_image, got_label = augment(tf.constant(image), tf.constant(label))
        np.testing.assert_array_equal(got_label.numpy(), label)
        changed += int(not np.array_equal(got_image.numpy(), image))
    assert changed > 0


def test_operation_probability_is_applied():
    # Invert with probability 0.4: 400 draws, 4-sigma binomial bounds.
    augment = aa.AutoAugment(policy=[[("Invert", 0.4, 0)]])
    image = tf.constant(_image(8))
    tf.random.set_seed(8)
    inverted = sum(int(augment(image)[0].numpy()[0, 0, 0]
                       != image.numpy()[0, 0, 0]) for _ in range(400))
    sigma = np.sqrt(400 * 0.4 * 0.6)
    assert abs(inverted - 160) < 4 * sigma, inverted


def test_probability_zero_and_one():
    image = tf.constant(_image(9))
    never = aa.AutoAugment(policy=[[("Invert", 0.0, 0)]])
    always = aa.AutoAugment(policy=[[("Invert", 1.0, 0)]])
    for _ in range(10):
        np.testing.assert_array_equal(never(image)[0].numpy(), image.numpy())
        np.testing.assert_array_equal(always(image)[0].numpy(),
                                      255 - image.numpy())


def test_sub_policies_are_drawn_uniformly():
    augment = aa.AutoAugment(policy=[[("Invert", 1.0, 0)],
                                     [("Solarize", 1.0, 0)],
                                     [("Posterize", 1.0, 10)]])
    image = np.full((2, 2, 3), 100, np.uint8)
    tf.random.set_seed(10)
    # Invert -> 155, Solarize (threshold 0) -> 155 too; Posterize -> 96.
    outcomes = [int(augment(tf.constant(image))[0].numpy()[0, 0, 0])
                for _ in range(300)]
    posterized = outcomes.count(96)
    assert set(outcomes) == {155, 96}
    sigma = np.sqrt(300 * (1 / 3) * (2 / 3))
    assert abs(posterized - 100) < 4 * sigma, posterized


def test_float_image_is_truncated_to_uint8_as_deeplab2():
    augment = aa.AutoAugment(policy=[[("Invert", 0.0, 0)]])
    image = tf.constant(np.full((3, 4, 3), 10.7, np.float32))
    out, label = augment(image)
    assert out.dtype == tf.float32 and label is None
    np.testing.assert_array_equal(out.numpy(), 10.0)


def test_unknown_policy_names_the_field():
    with pytest.raises(cli.UserError,
                       match="autoaugment_policy_name: unknown policy 'x'"):
        aa.AutoAugment("x")
    with pytest.raises(ValueError, match="unknown operation"):
        aa.AutoAugment(policy=[[("Wobble", 0.5, 3)]])
    with pytest.raises(ValueError, match="magnitude 11"):
        aa.AutoAugment(policy=[[("Rotate", 0.5, 11)]])


# --- inside tf.data --------------------------------------------------------

def test_runs_in_tf_data_with_static_shapes():
    geometric = aa.AutoAugment(policy=[
        [("Rotate", 0.8, 6), ("TranslateX", 0.5, 4)],
        [("ShearY", 1.0, 9), ("TranslateY", 0.7, 2)]],
        label_fill_value=FILL, translate_const=30.0)
    photometric = aa.AutoAugment("simple_classification_policy",
                                 label_fill_value=FILL)
    image, label = _pair(11, 33, 33)
    tf.random.set_seed(11)
    for augment in (geometric, photometric):
        dataset = tf.data.Dataset.from_tensors(
            (tf.constant(image, tf.float32), tf.constant(label))).repeat(8)
        dataset = dataset.map(augment, num_parallel_calls=2).batch(
            4, drop_remainder=True)
        assert dataset.element_spec[0].shape == (4, 33, 33, 3)
        assert dataset.element_spec[1].shape == (4, 33, 33)
        for images, labels in dataset:
            for one_image, one_label in zip(images.numpy(), labels.numpy()):
                if augment is geometric:
                    _assert_aligned(one_image.astype(np.uint8), one_label)
                else:
                    np.testing.assert_array_equal(one_label, label)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from max_deeplab_tf.data import build_coco_panoptic
    from max_deeplab_tf.data import synthetic
    root = tmp_path_factory.mktemp("data")
    synthetic.generate(str(root / "coco"), 6, 2, 40, seed=3)
    build_coco_panoptic.convert(str(root / "coco"), "train",
                                str(root / "shards"), num_shards=1,
                                num_workers=1)
    return os.path.join(str(root / "shards"), "train-*")


def test_training_pipeline_applies_the_configured_policy(shards):
    from max_deeplab_tf import common
    from max_deeplab_tf.data import input_pipeline
    from max_deeplab_tf.protos import dataset_pb2
    options = dataset_pb2.DatasetOptions(
        dataset="synthetic_panoptic", file_pattern=[shards], batch_size=2,
        crop_size=[33, 33])
    # Random scaling makes fractional (bilinear) pixel values, which
    # AutoAugment's uint8 conversion truncates.
    options.augmentations.min_scale_factor = 0.7
    options.augmentations.max_scale_factor = 1.3
    options.augmentations.scale_factor_step_size = 0.1
    options.augmentations.autoaugment_policy_name = (
        "simple_classification_policy")
    generator = input_pipeline.generator_from_options(options, True)
    assert generator._autoaugment.policy == aa.POLICIES[
        "simple_classification_policy"]
    # Evaluation never augments.
    assert input_pipeline.generator_from_options(
        options, False)._autoaugment is None
    dataset = input_pipeline.build_dataset(options, True)
    spec = dataset.element_spec
    assert spec[common.IMAGE].shape == (2, 33, 33, 3)
    assert spec[common.GT_PANOPTIC_KEY].shape == (2, 33, 33)
    iterator = iter(dataset)
    for _ in range(3):
        image = next(iterator)[common.IMAGE].numpy()
        assert image.min() >= 0 and image.max() <= 255
        # AutoAugment works in uint8 before padding: whole numbers, except
        # the padding's mean pixel 127.5.
        fractional = image != np.floor(image)
        assert (image[fractional] == 127.5).all()
    # Without the policy, the same scaling leaves fractional values.
    options.augmentations.autoaugment_policy_name = ""
    image = next(iter(input_pipeline.build_dataset(options, True)))[
        common.IMAGE].numpy()
    assert ((image != np.floor(image)) & (image != 127.5)).any()

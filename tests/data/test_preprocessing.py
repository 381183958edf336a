"""Tests for max_deeplab_tf.data.preprocessing."""

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.data import preprocessing


def _size(h, w, min_size=None, max_size=None, factor=None):
    return preprocessing.resize_to_range_size(
        tf.constant(h), tf.constant(w), min_size, max_size,
        factor).numpy().tolist()


def test_resize_to_range_by_hand():
    # min (50, 50): scale max(50/100, 50/200) = 0.5 -> 50 x 100.
    assert _size(100, 200, min_size=(50, 50)) == [50, 100]
    # then max (80, 80): scale min(80/50, 80/100) = 0.8 -> 40 x 80.
    assert _size(100, 200, (50, 50), (80, 80)) == [40, 80]
    # max never enlarges: scale min(1000/100, 1000/200, 1) = 1.
    assert _size(100, 200, max_size=(1000, 1000)) == [100, 200]
    # factor 8: max stays 81 (= 8 * 10 + 1); scale 81 / 200 = 0.405 ->
    # floor(40.5) = 40, floor(81.0) = 81; then sides become 8k + 1: 41, 81.
    assert _size(100, 200, max_size=(81, 81), factor=8) == [41, 81]
    # COCO-like 480 x 640 to 641: min scale 641/480 -> 641 x 854, then
    # max scale 641/854 -> 481 x 641.
    assert _size(480, 640, (641, 641), (641, 641)) == [481, 641]


def test_resize_value_forms():
    assert preprocessing.resize_value([]) is None
    assert preprocessing.resize_value([5]) == (5, 5)
    assert preprocessing.resize_value([5, 7]) == (5, 7)
    assert preprocessing.resize_value([0, 7]) is None
    with pytest.raises(ValueError, match="max_resize_value"):
        preprocessing.resize_value([1, 2, 3], "max_resize_value")


def test_random_scale_draws_the_steps():
    scale = preprocessing.random_scale(0.5, 1.5, 0.1)
    draws = {round(float(preprocessing.random_scale(0.5, 1.5, 0.1)), 4)
             for _ in range(400)}
    assert draws == {round(0.5 + 0.1 * k, 4) for k in range(11)}
    assert scale is not None
    assert preprocessing.random_scale(1.0, 1.0, 0.25) is None
    with pytest.raises(ValueError):
        preprocessing.random_scale(1.5, 0.5, 0.1)


def test_resize_is_align_corners():
    # align_corners=True keeps the corner pixels exactly.
    image = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 4, 1))
    out = preprocessing.resize_image(image, tf.constant([5, 7])).numpy()
    assert out[0, 0, 0] == 0 and out[-1, -1, 0] == 11
    assert out[0, -1, 0] == 3 and out[-1, 0, 0] == 8
    # Midpoint of row 0 between columns 1 and 2 (x = 3 * 3 / 6 = 1.5).
    assert out[0, 3, 0] == pytest.approx(1.5)
    label = tf.constant([[1, 2], [3, 4]], tf.int32)
    out = preprocessing.resize_label(label, tf.constant([3, 3])).numpy()
    assert out[0, 0] == 1 and out[2, 2] == 4 and out[0, 2] == 2


def test_eval_pads_bottom_right():
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    label = np.array([[1, 2, 3], [4, 5, 6]], np.int32)
    out_image, out_label = preprocessing.preprocess(
        tf.constant(image), tf.constant(label), (4, 5), False, 99)
    out_image, out_label = out_image.numpy(), out_label.numpy()
    np.testing.assert_array_equal(out_image[:2, :3], image)
    assert (out_image[2:] == 127.5).all() and (out_image[:, 3:] == 127.5).all()
    np.testing.assert_array_equal(out_label[:2, :3], label)
    assert (out_label[2:] == 99).all() and (out_label[:, 3:] == 99).all()


def test_eval_shrinks_large_images_to_crop():
    image = tf.zeros([20, 10, 3], tf.uint8)
    out_image, out_label = preprocessing.preprocess(
        image, tf.zeros([20, 10], tf.int32), (9, 9), False, 7)
    # Scale 9 / 20 -> 9 x 4 (floor 4.5), padded to 9 x 9.
    assert (out_label.numpy()[:, :4] == 0).all()
    assert (out_label.numpy()[:, 4:] == 7).all()


def _find_window(big, small):
    """(row, col) where small equals a window of big, or None."""
    h, w = small.shape
    for r in range(big.shape[0] - h + 1):
        for c in range(big.shape[1] - w + 1):
            if np.array_equal(big[r:r + h, c:c + w], small):
                return r, c
    return None


def test_train_crop_flip_keep_image_and_label_aligned():
    # Distinct pixel values; the label is a function of the pixel value,
    # so a crop or flip applied to only one of them would show.
    values = np.arange(12 * 15).reshape(12, 15)
    image = np.repeat(values[..., None], 3, axis=2).astype(np.uint8)
    label = values.astype(np.int32) * 3 + 1
    flipped = 0
    for _ in range(20):
        out_image, out_label = preprocessing.preprocess(
            tf.constant(image), tf.constant(label), (9, 9), True, -1)
        out_image, out_label = out_image.numpy(), out_label.numpy()
        np.testing.assert_array_equal(
            out_label, out_image[..., 0].astype(np.int32) * 3 + 1)
        plain = _find_window(label, out_label)
        mirrored = _find_window(np.fliplr(label), out_label)
        assert (plain is None) != (mirrored is None)
        flipped += mirrored is not None
    assert 0 < flipped < 20


def test_train_padding_is_ignore():
    image = tf.fill([6, 6, 3], tf.constant(255, tf.uint8))
    label = tf.fill([6, 6], 5)
    seen_padding = False
    for _ in range(10):
        out_image, out_label = preprocessing.preprocess(
            image, label, (9, 11), True, -3, min_scale_factor=0.5,
            max_scale_factor=1.5, scale_factor_step_size=0.1)
        padded = (out_image.numpy() == 127.5).all(axis=-1)
        seen_padding |= padded.any()
        np.testing.assert_array_equal(out_label.numpy() == -3, padded)
        assert set(np.unique(out_label.numpy())) <= {-3, 5}
    assert seen_padding


def test_max_resize_above_crop_is_refused():
    with pytest.raises(ValueError, match="exceeds crop_size"):
        preprocessing.preprocess(tf.zeros([4, 4, 3]), None, (5, 5), True, 0,
                                 max_resize_value=(9, 9))

"""Tests for max_deeplab_tf.data.tfrecord (deeplab2's record layout)."""

import io

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from max_deeplab_tf.data import tfrecord


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _deeplab2_record(image_bytes, label, name="img", image_format=b"png",
                     label_format=b"raw", height=None, width=None):
    """A record written with deeplab2's literal keys, not our constants."""
    height = label.shape[0] if height is None else height
    width = label.shape[1] if width is None else width

    def b(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def i(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    feature = {
        "image/encoded": b(image_bytes),
        "image/filename": b(name.encode()),
        "image/format": b(image_format),
        "image/height": i(height),
        "image/width": i(width),
        "image/channels": i(3),
        # deeplab2 writes np.int32 arrays' raw bytes (little-endian hosts).
        "image/segmentation/class/encoded": b(
            label.astype("<i4").tobytes()),
        "image/segmentation/class/format": b(label_format),
    }
    return tf.train.Example(features=tf.train.Features(
        feature=feature)).SerializeToString()


def test_deeplab2_layout_record_decodes():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    label = rng.integers(0, 134 * 256, (5, 7)).astype(np.int32)
    record = _deeplab2_record(_png(image), label, "000000000139")
    decoded = tfrecord.decode_example(tf.constant(record))
    np.testing.assert_array_equal(decoded["image"].numpy(), image)
    np.testing.assert_array_equal(decoded["label"].numpy(), label)
    assert decoded["image_name"].numpy() == b"000000000139"
    assert int(decoded["height"]) == 5 and int(decoded["width"]) == 7


def test_make_example_matches_deeplab2_layout():
    image = np.full((3, 4, 3), 9, np.uint8)
    label = np.arange(12, dtype=np.int32).reshape(3, 4) * 1000
    data = _png(image)
    ours = tfrecord.make_example(data, "png", "x", 3, 4,
                                 tfrecord.encode_panoptic_label(label))
    theirs = tf.train.Example.FromString(_deeplab2_record(data, label, "x"))
    assert ours == theirs


def test_numpy_label_round_trip():
    label = np.array([[0, 1], [256 * 133 + 255, 7]], np.int32)
    data = tfrecord.encode_panoptic_label(label)
    np.testing.assert_array_equal(
        tfrecord.decode_panoptic_label(data, 2, 2), label)
    with pytest.raises(ValueError, match="expected 16"):
        tfrecord.decode_panoptic_label(data[:-1], 2, 2)


def test_wrong_label_size_names_the_image():
    image = np.zeros((4, 4, 3), np.uint8)
    record = _deeplab2_record(_png(image), np.zeros((4, 4), np.int32),
                              "bad_one", height=4, width=4)
    example = tf.train.Example.FromString(record)
    example.features.feature["image/segmentation/class/encoded"].bytes_list \
        .value[0] = b"\0" * 12
    with pytest.raises(tf.errors.InvalidArgumentError, match="bad_one"):
        tfrecord.decode_example(tf.constant(example.SerializeToString()))


def test_png_label_format_is_rejected_with_name():
    image = np.zeros((2, 2, 3), np.uint8)
    record = _deeplab2_record(_png(image), np.zeros((2, 2), np.int32),
                              "semantic_png", label_format=b"png")
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="semantic_png"):
        tfrecord.decode_example(tf.constant(record))


def test_make_example_checks_its_inputs():
    with pytest.raises(ValueError, match="bmp"):
        tfrecord.make_example(b"", "bmp", "x", 1, 1)
    with pytest.raises(ValueError, match="expected 8"):
        tfrecord.make_example(b"", "png", "x", 1, 2, b"\0" * 4)

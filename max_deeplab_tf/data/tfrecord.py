"""deeplab2's tf.train.Example layout for panoptic images, both directions.

One record per image (deeplab2's data/data_utils.py layout, keys in
max_deeplab_tf.common):

  image/encoded                     bytes  the JPEG or PNG file, unchanged
  image/filename                    bytes  file name without extension
  image/format                      bytes  'jpeg' or 'png'
  image/height, image/width         int64
  image/channels                    int64  3
  image/segmentation/class/encoded  bytes  raw little-endian int32
                                           [height, width] panoptic label,
                                           semantic * label_divisor + instance
  image/segmentation/class/format   bytes  'raw'

Shards written by deeplab2's build_coco_data.py therefore read here and ours
read in deeplab2.
"""

from typing import Dict, Optional

import numpy as np
import tensorflow as tf

from max_deeplab_tf import common

LABEL_FORMAT_RAW = "raw"
IMAGE_FORMATS = ("jpeg", "png")
# Raw labels are little-endian int32, whatever the host's byte order.
_LABEL_DTYPE = np.dtype("<i4")


def _bytes_feature(value) -> tf.train.Feature:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64_feature(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_panoptic_label(panoptic: np.ndarray) -> bytes:
    """Raw bytes of an int32 [height, width] panoptic label."""
    panoptic = np.asarray(panoptic)
    if panoptic.ndim != 2:
        raise ValueError(f"panoptic label must be [height, width], got shape "
                         f"{panoptic.shape}")
    if panoptic.min(initial=0) < 0 or panoptic.max(initial=0) > 2**31 - 1:
        raise ValueError("panoptic label values must fit in int32 and be "
                         "non-negative")
    return panoptic.astype(_LABEL_DTYPE).tobytes()


def decode_panoptic_label(data: bytes, height: int, width: int) -> np.ndarray:
    """Inverse of `encode_panoptic_label` (numpy, for tools and tests)."""
    expected = height * width * _LABEL_DTYPE.itemsize
    if len(data) != expected:
        raise ValueError(f"raw label has {len(data)} bytes, expected "
                         f"{expected} for {height}x{width} int32")
    return np.frombuffer(data, _LABEL_DTYPE).reshape(height, width).astype(
        np.int32)


def make_example(image_data: bytes, image_format: str, filename: str,
                 height: int, width: int,
                 label_data: Optional[bytes] = None,
                 label_format: str = LABEL_FORMAT_RAW) -> tf.train.Example:
    """Builds one record in deeplab2's layout.

    Args:
      image_data: The encoded image file.
      image_format: 'jpeg' or 'png'.
      filename: Image name without extension (deeplab2 stores the prefix).
      height: Image height in pixels.
      width: Image width in pixels.
      label_data: Raw int32 panoptic label (`encode_panoptic_label`), or None
        for an unlabelled image.
      label_format: Only 'raw' (deeplab2's panoptic format).

    Returns:
      A tf.train.Example.

    Raises:
      ValueError: on an unknown format or a label of the wrong length.
    """
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"{filename}: image format {image_format!r} is not "
                         f"one of {IMAGE_FORMATS}")
    features = {
        common.KEY_ENCODED_IMAGE: _bytes_feature(image_data),
        common.KEY_IMAGE_FILENAME: _bytes_feature(filename),
        common.KEY_IMAGE_FORMAT: _bytes_feature(image_format),
        common.KEY_IMAGE_HEIGHT: _int64_feature(height),
        common.KEY_IMAGE_WIDTH: _int64_feature(width),
        common.KEY_IMAGE_CHANNELS: _int64_feature(3),
    }
    if label_data is not None:
        if label_format != LABEL_FORMAT_RAW:
            raise ValueError(f"{filename}: label format {label_format!r} is "
                             "not 'raw'")
        expected = height * width * _LABEL_DTYPE.itemsize
        if len(label_data) != expected:
            raise ValueError(f"{filename}: raw label has {len(label_data)} "
                             f"bytes, expected {expected} for {height}x{width}")
        features[common.KEY_ENCODED_LABEL] = _bytes_feature(label_data)
        features[common.KEY_LABEL_FORMAT] = _bytes_feature(label_format)
    return tf.train.Example(features=tf.train.Features(feature=features))


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Decodes a JPEG or PNG as the input pipeline does.

    One decoder for training, evaluation and prediction: TensorFlow's JPEG
    decoder (its default DCT method, as deeplab2) gives values up to 3 apart
    from Pillow's or OpenCV's on most pixels, so an image decoded another way
    is, to the network, another image.

    Args:
      encoded: scalar string tensor, the encoded image.

    Returns:
      uint8 [height, width, 3] (grayscale repeated over the channels).
    """
    image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8,
                               expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_example(serialized: tf.Tensor,
                   decode_label: bool = True) -> Dict[str, tf.Tensor]:
    """Parses one record (graph-compatible, for tf.data).

    Args:
      serialized: Scalar string tensor, a serialized tf.train.Example.
      decode_label: Whether to decode the panoptic label (records without
        one fail to parse when True).

    Returns:
      dict with 'image' uint8 [height, width, 3], 'image_name' string,
      'height' and 'width' int32 scalars and, if decode_label, 'label' int32
      [height, width] (the panoptic label).

    Raises (at run time):
      InvalidArgumentError: naming the image, when the label is not raw or
        its size does not match height and width.
    """
    string = tf.io.FixedLenFeature((), tf.string)
    integer = tf.io.FixedLenFeature((), tf.int64)
    spec = {
        common.KEY_ENCODED_IMAGE: string,
        common.KEY_IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string,
                                                         default_value=""),
        common.KEY_IMAGE_HEIGHT: integer,
        common.KEY_IMAGE_WIDTH: integer,
    }
    if decode_label:
        spec[common.KEY_ENCODED_LABEL] = string
        spec[common.KEY_LABEL_FORMAT] = tf.io.FixedLenFeature(
            (), tf.string, default_value=LABEL_FORMAT_RAW)
    parsed = tf.io.parse_single_example(serialized, spec)
    name = parsed[common.KEY_IMAGE_FILENAME]
    height = tf.cast(parsed[common.KEY_IMAGE_HEIGHT], tf.int32)
    width = tf.cast(parsed[common.KEY_IMAGE_WIDTH], tf.int32)
    image = decode_image(parsed[common.KEY_ENCODED_IMAGE])
    image_shape = tf.shape(image)
    checks = [tf.debugging.Assert(
        tf.logical_and(tf.equal(image_shape[0], height),
                       tf.equal(image_shape[1], width)),
        ["record", name, "image/height, image/width", height, width,
         "differ from the decoded image's", image_shape[0], image_shape[1]])]
    result = {"image_name": name, "height": height, "width": width}
    if decode_label:
        label_format = parsed[common.KEY_LABEL_FORMAT]
        flat = tf.io.decode_raw(parsed[common.KEY_ENCODED_LABEL], tf.int32,
                                little_endian=True)
        checks.append(tf.debugging.Assert(
            tf.equal(label_format, LABEL_FORMAT_RAW),
            ["record", name, f"{common.KEY_LABEL_FORMAT} is", label_format,
             "but only 'raw' int32 panoptic labels are supported"]))
        checks.append(tf.debugging.Assert(
            tf.equal(tf.size(flat), height * width),
            ["record", name, "raw label has", tf.size(flat),
             "int32 values, expected height * width =", height * width]))
        with tf.control_dependencies(checks):
            result["label"] = tf.reshape(flat, tf.stack([height, width]))
    with tf.control_dependencies(checks):
        result["image"] = tf.identity(image)
    return result

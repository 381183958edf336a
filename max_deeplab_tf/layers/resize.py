"""Bilinear resizing with aligned corners, computed as deeplab2 computes it.

Inputs of size k * stride + 1 make 'align corners' resizing exact between
strides: corner pixels map onto corner pixels.

Under XLA for a CPU the resize is two matmuls with interpolation matrices
(`_resize_as_matmuls`); elsewhere it is TensorFlow's ResizeBilinear op, as
in deeplab2.
"""

from typing import Sequence

import numpy as np
import tensorflow as tf

from max_deeplab_tf.layers.xla_context import xla_compiling_for_cpu


def _resize(images, size):
    static_size = [tf.get_static_value(s) for s in size]
    if (xla_compiling_for_cpu() and None not in images.shape[1:3]
            and None not in static_size):
        return _resize_as_matmuls(images, [int(s) for s in static_size])
    # The op behind tf.compat.v1.image.resize_bilinear(align_corners=True).
    size = tf.cast(tf.stack([size[0], size[1]]), tf.int32)
    return tf.raw_ops.ResizeBilinear(
        images=images, size=size, align_corners=True,
        half_pixel_centers=False)


def interpolation_matrix(input_size: int, output_size: int) -> np.ndarray:
    """The [output_size, input_size] float32 weights of 1D align-corners
    linear interpolation: row o holds 1 - t and t at the two input pixels
    around o * (input_size - 1) / (output_size - 1), computed in float32
    as TensorFlow's ResizeBilinear computes its source positions."""
    if output_size > 1:
        scale = np.float32(input_size - 1) / np.float32(output_size - 1)
    else:
        scale = np.float32(0)
    source = np.arange(output_size, dtype=np.float32) * scale
    lower = np.floor(source).astype(np.int64)
    upper = np.minimum(np.ceil(source).astype(np.int64), input_size - 1)
    fraction = source - lower.astype(np.float32)
    weights = np.zeros((output_size, input_size), np.float32)
    rows = np.arange(output_size)
    np.add.at(weights, (rows, lower), 1 - fraction)
    np.add.at(weights, (rows, upper), fraction)
    return weights


def _resize_as_matmuls(images, size: Sequence[int]):
    """Align-corners bilinear resize as two matmuls with interpolation
    matrices, for XLA on a CPU.

    XLA lowers ResizeBilinear to a depthwise convolution, which its CPU
    backend runs as plain loops: forward and gradient of [2, 17, 17, 512]
    -> 33x33 took 33 ms, against 2.9-3.6 ms for TensorFlow's kernels; as
    matmuls 3.5 ms (minimum of 20 jit-compiled calls, AMD EPYC). Values
    agree with the op's to float rounding.

    Args:
      images: A [batch, height, width, channels] float32 tensor with static
        height, width and channels.
      size: The target (height, width) as ints.

    Returns:
      A [batch, size[0], size[1], channels] tensor.
    """
    _, height, width, channels = images.shape
    batch = tf.shape(images)[0]
    x = images
    if width != size[1]:
        # [batch * height, width, channels] -> [batch * height, size[1], c]
        x = tf.matmul(interpolation_matrix(width, size[1]),
                      tf.reshape(x, [-1, width, channels]))
    if height != size[0]:
        # [batch, height, size[1] * c] -> [batch, size[0], size[1] * c]
        x = tf.matmul(interpolation_matrix(height, size[0]),
                      tf.reshape(x, [batch, height, size[1] * channels]))
    return tf.reshape(x, [batch, size[0], size[1], channels])


def resize_align_corners(images, size: Sequence[int]):
    """Bilinear resize with align_corners=True (one ResizeBilinear op; two
    matmuls under XLA for a CPU).

    Args:
      images: A [batch, height, width, channels] float tensor.
      size: The target [height, width] (ints or scalar tensors).

    Returns:
      A [batch, size[0], size[1], channels] tensor of the input's dtype.
    """
    dtype = images.dtype
    return tf.cast(_resize(tf.cast(images, tf.float32), size), dtype)


def resize_bilinear(images, size: Sequence[int]):
    """deeplab2's memory-friendly align-corners bilinear resize.

    Identity when the size already matches. With 32 channels or fewer the
    resize runs as two 1D resizes with a spatial axis moved to the channel
    position (less padding on TPUs), as deeplab2's utils.resize_bilinear; the
    result is the same bilinear interpolation up to float rounding, and the
    order of operations matches deeplab2's.

    Args:
      images: A [batch, height, width, channels] tensor with static height,
        width and channels.
      size: The target (height, width) as ints.

    Returns:
      A [batch, size[0], size[1], channels] tensor of the input's dtype.
    """
    _, height, width, channels = images.shape
    if height == size[0] and width == size[1]:
        return images
    dtype = images.dtype
    x = tf.cast(images, tf.float32)
    if channels > 32:
        x = _resize(x, size)
    else:
        x = tf.transpose(x, [0, 3, 1, 2])
        x = _resize(x, [channels, size[0]])
        x = tf.transpose(x, [0, 1, 3, 2])
        x = _resize(x, [channels, size[1]])
        x = tf.transpose(x, [0, 3, 2, 1])
    return tf.cast(x, dtype)

"""Bilinear resizing with aligned corners, computed as deeplab2 computes it.

Inputs of size k * stride + 1 make 'align corners' resizing exact between
strides: corner pixels map onto corner pixels.
"""

from typing import Sequence

import tensorflow as tf


def _resize(images, size):
    # The op behind tf.compat.v1.image.resize_bilinear(align_corners=True).
    size = tf.cast(tf.stack([size[0], size[1]]), tf.int32)
    return tf.raw_ops.ResizeBilinear(
        images=images, size=size, align_corners=True,
        half_pixel_centers=False)


def resize_align_corners(images, size: Sequence[int]):
    """Bilinear resize with align_corners=True (one ResizeBilinear op).

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

"""Image and label preprocessing with deeplab2's arithmetic.

Resizing to a range, random scaling, padding and random cropping, and
horizontal flipping follow deeplab2's data/preprocessing (sizes computed in
the same float precision, bilinear images and nearest-neighbour labels with
align_corners=True, padding of images by the mean pixel 127.5 and of labels
by ignore_label * label_divisor), so that a model trained here sees the
inputs a deeplab2 model saw.
"""

from typing import Callable, Optional, Sequence, Tuple

import tensorflow as tf

MEAN_PIXEL = 127.5


def resize_value(value: Optional[Sequence[int]], field: str = "resize value"
                 ) -> Optional[Tuple[int, int]]:
    """Normalises a (height, width) resize option: one value means both.

    Returns:
      (height, width), or None when unset or any side is <= 0 (deeplab2
      treats those as "no limit").

    Raises:
      ValueError: naming `field` when more than two values are given.
    """
    if value is None:
        return None
    if isinstance(value, int):
        value = (value,)
    value = tuple(int(v) for v in value)
    if not value:
        return None
    if len(value) == 1:
        value = (value[0], value[0])
    if len(value) != 2:
        raise ValueError(f"{field}: expected one or two values (height, "
                         f"width), got {list(value)}")
    if value[0] <= 0 or value[1] <= 0:
        return None
    return value


def _scaled(size: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """floor(size * factor) in float32, as deeplab2's _scale_dim."""
    return tf.cast(tf.floor(tf.cast(size, tf.float32) *
                            tf.cast(factor, tf.float32)), tf.int32)


def resize_to_range_size(height: tf.Tensor, width: tf.Tensor,
                         min_size: Optional[Tuple[int, int]],
                         max_size: Optional[Tuple[int, int]],
                         factor: Optional[int] = None) -> tf.Tensor:
    """The [height, width] that resize_to_range resizes to.

    The smaller scale that brings both sides up to min_size is applied
    first; then, if a side exceeds max_size, the image is scaled down
    (never up) to fit. With `factor`, sides become factor * k + 1.

    Args:
      height: int32 scalar, input height.
      width: int32 scalar, input width.
      min_size: (height, width) minimum, or None.
      max_size: (height, width) maximum, or None.
      factor: Optional resize factor.

    Returns:
      int32 [2] tensor.
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    if min_size:
        # Python int / int32 tensor divides in float64, as in deeplab2.
        scale = tf.maximum(
            min_size[0] / tf.cast(height, tf.float64),
            min_size[1] / tf.cast(width, tf.float64))
        height, width = _scaled(height, scale), _scaled(width, scale)
    if max_size:
        max_h, max_w = max_size
        if factor:
            max_h -= (max_h - 1) % factor
            max_w -= (max_w - 1) % factor
        scale = tf.minimum(max_h / tf.cast(height, tf.float64),
                           max_w / tf.cast(width, tf.float64))
        scale = tf.minimum(tf.cast(scale, tf.float32), 1.0)
        height, width = _scaled(height, scale), _scaled(width, scale)
    size = tf.stack([height, width])
    if factor:
        size += (factor - (size - 1) % factor) % factor
    return size


def resize_image(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Bilinear, align_corners=True: float32 [h, w, c] -> [size, c]."""
    return tf.raw_ops.ResizeBilinear(
        images=tf.cast(image, tf.float32)[tf.newaxis], size=size,
        align_corners=True, half_pixel_centers=False)[0]


def resize_label(label: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
    """Nearest neighbour, align_corners=True: int32 [h, w] -> size."""
    return tf.raw_ops.ResizeNearestNeighbor(
        images=label[tf.newaxis, :, :, tf.newaxis], size=size,
        align_corners=True, half_pixel_centers=False)[0, :, :, 0]


def random_scale(min_scale: float, max_scale: float,
                 step: float) -> Optional[tf.Tensor]:
    """A random scale factor, or None when min == max == 1.

    With step > 0 one of min, min + step, ..., max is drawn uniformly
    (deeplab2 draws from linspace(min, max, int((max - min) / step + 1)));
    with step == 0 the scale is uniform in [min, max).

    Raises:
      ValueError: when min_scale < 0 or min_scale > max_scale.
    """
    if min_scale < 0 or min_scale > max_scale:
        raise ValueError(f"scale range [{min_scale}, {max_scale}] is invalid")
    if min_scale == max_scale:
        return None if min_scale == 1.0 else tf.constant(min_scale,
                                                         tf.float32)
    if step == 0:
        return tf.random.uniform([], min_scale, max_scale)
    num_steps = int((max_scale - min_scale) / step + 1)
    scales = tf.linspace(tf.constant(min_scale, tf.float32),
                         tf.constant(max_scale, tf.float32), num_steps)
    return scales[tf.random.uniform([], 0, num_steps, dtype=tf.int32)]


def scale_image_and_label(image: tf.Tensor, label: Optional[tf.Tensor],
                          scale: tf.Tensor):
    """Resizes both by `scale` (new size truncated, as deeplab2)."""
    shape = tf.shape(image)[:2]
    size = tf.cast(tf.cast(shape, tf.float32) * scale, tf.int32)
    image = resize_image(image, size)
    if label is not None:
        label = resize_label(label, size)
    return image, label


def pad_image_and_label(image: tf.Tensor, label: Optional[tf.Tensor],
                        offset_height: tf.Tensor, offset_width: tf.Tensor,
                        target_height: tf.Tensor, target_width: tf.Tensor,
                        label_pad_value: int):
    """Pads to the target size: image by MEAN_PIXEL, label by a value.

    Raises (at run time):
      InvalidArgumentError: when the image does not fit the target.
    """
    shape = tf.shape(image)
    bottom = target_height - offset_height - shape[0]
    right = target_width - offset_width - shape[1]
    check = tf.debugging.Assert(
        tf.logical_and(bottom >= 0, right >= 0),
        ["image of size", shape[0], shape[1], "does not fit the padded size",
         target_height, target_width, "(crop_size); set max_resize_value to "
         "at most crop_size"])
    with tf.control_dependencies([check]):
        paddings = tf.stack([tf.stack([offset_height, bottom]),
                             tf.stack([offset_width, right]),
                             tf.constant([0, 0])])
    # Padding the mean-subtracted image by 0 rounds the same way as deeplab2.
    image = tf.pad(image - MEAN_PIXEL, paddings) + MEAN_PIXEL
    if label is not None:
        label = tf.pad(label, paddings[:2], constant_values=label_pad_value)
    return image, label


def random_crop(image: tf.Tensor, label: Optional[tf.Tensor],
                crop_height: int, crop_width: int):
    """The same random crop of both (they must be at least crop size)."""
    shape = tf.shape(image)
    offset_height = tf.random.uniform([], 0, shape[0] - crop_height + 1,
                                      dtype=tf.int32)
    offset_width = tf.random.uniform([], 0, shape[1] - crop_width + 1,
                                     dtype=tf.int32)
    image = image[offset_height:offset_height + crop_height,
                  offset_width:offset_width + crop_width]
    if label is not None:
        label = label[offset_height:offset_height + crop_height,
                      offset_width:offset_width + crop_width]
    return image, label


def random_flip(image: tf.Tensor, label: Optional[tf.Tensor],
                probability: float):
    """Flips both left-right with the given probability."""
    flip = tf.random.uniform([]) <= probability
    image = tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)
    if label is not None:
        label = tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label)
    return image, label


def preprocess(image: tf.Tensor, label: Optional[tf.Tensor],
               crop_size: Tuple[int, int], is_training: bool,
               ignore_value: int,
               min_resize_value: Optional[Tuple[int, int]] = None,
               max_resize_value: Optional[Tuple[int, int]] = None,
               resize_factor: Optional[int] = None,
               min_scale_factor: float = 1.0, max_scale_factor: float = 1.0,
               scale_factor_step_size: float = 0.0,
               flip_probability: float = 0.5,
               augment_fn: Optional[Callable] = None):
    """deeplab2's preprocess_image_and_label for one image.

    Args:
      image: uint8 or float [height, width, 3].
      label: int32 [height, width] panoptic label, or None.
      crop_size: (crop_height, crop_width) of the output.
      is_training: Training augments (random scale, pad, random crop,
        flip); evaluation resizes (max_resize_value defaults to crop_size)
        and pads at the bottom and right.
      ignore_value: Label value of padding (ignore_label * label_divisor).
      min_resize_value: Resize so that sides reach this, or None.
      max_resize_value: Resize so that sides do not exceed this, or None.
      resize_factor: Output sides factor * k + 1 when set.
      min_scale_factor: Random scale range, lower end.
      max_scale_factor: Random scale range, upper end.
      scale_factor_step_size: Step between the scales (0: continuous).
      flip_probability: Horizontal flip probability in training.
      augment_fn: Training only: (image, label) -> (image, label) applied
        after the random scaling and before padding, where deeplab2 applies
        AutoAugment (an autoaugment.AutoAugment).

    Returns:
      (image float32 [crop_height, crop_width, 3], label int32
      [crop_height, width] or None).

    Raises:
      ValueError: when max_resize_value exceeds crop_size.
    """
    crop_height, crop_width = crop_size
    if max_resize_value is None and not is_training:
        max_resize_value = (crop_height, crop_width)
    if max_resize_value is not None and (max_resize_value[0] > crop_height or
                                         max_resize_value[1] > crop_width):
        raise ValueError(f"max_resize_value {list(max_resize_value)} exceeds "
                         f"crop_size {list(crop_size)}")
    image = tf.cast(image, tf.float32)
    if label is not None:
        label = tf.cast(label, tf.int32)
    if min_resize_value or max_resize_value:
        shape = tf.shape(image)
        size = resize_to_range_size(shape[0], shape[1], min_resize_value,
                                    max_resize_value, resize_factor)
        image = resize_image(image, size)
        if label is not None:
            label = resize_label(label, size)

    if not is_training:
        image, label = pad_image_and_label(
            image, label, 0, 0, crop_height, crop_width, ignore_value)
    else:
        scale = random_scale(min_scale_factor, max_scale_factor,
                             scale_factor_step_size)
        if scale is not None:
            image, label = scale_image_and_label(image, label, scale)
        if augment_fn is not None:
            image, label = augment_fn(image, label)
        shape = tf.shape(image)
        target_height = tf.maximum(shape[0], crop_height)
        target_width = tf.maximum(shape[1], crop_width)

        def offset(margin):
            return tf.random.uniform([], 0, tf.maximum(margin, 1),
                                     dtype=tf.int32)

        image, label = pad_image_and_label(
            image, label, offset(crop_height - shape[0]),
            offset(crop_width - shape[1]), target_height, target_width,
            ignore_value)
        image, label = random_crop(image, label, crop_height, crop_width)
        image, label = random_flip(image, label, flip_probability)
    image = tf.ensure_shape(image, [crop_height, crop_width, 3])
    if label is not None:
        label = tf.ensure_shape(label, [crop_height, crop_width])
    return image, label

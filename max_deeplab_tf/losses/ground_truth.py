"""Ground-truth preprocessing for the MaX-DeepLab losses.

Turns the data pipeline's pixel labels (deeplab2's keys, see
max_deeplab_tf/common.py) into the mask-level targets the losses need, at the
resolution of the model's pixel outputs:

- Pixel labels are strided-downsampled, as deeplab2 does: an input of height
  H and an output of height h = (H - 1) / s + 1 keep every s-th row and
  column (pixels [0, s, 2s, ...]).
- The ground-truth masks are `max_thing_id` thing masks (one per thing id,
  padded) followed by one mask per stuff class, so there are always
  max_thing_id + num_stuff_classes of them (static shape). A mask is valid
  when it has pixels at the output resolution and a thing or stuff class;
  others (padding, absent stuff, things lost by downsampling) are void.
- Crowd pixels (thing class, thing id -1) belong to no mask but are not void;
  void pixels (semantic == ignore_label) belong to no mask.

Transformer class order: the transformer's class k is the dataset class
`transformer_class_ids(descriptor)[k]`, i.e. the descriptor's thing class ids
in their listed order followed by its stuff class ids in ascending order,
with one extra void ("no object") class last. This is deeplab2's order
(thing_class_ids + stuff_class_ids); for COCO panoptic (things 1..80, stuff
81..133) transformer class k is dataset class k + 1.
"""

import dataclasses
from typing import Dict, Sequence, Tuple

import numpy as np
import tensorflow as tf

from max_deeplab_tf import common


def transformer_class_ids(dataset_descriptor) -> Tuple[int, ...]:
    """Dataset class id of each transformer class (void excluded).

    Args:
      dataset_descriptor: a `max_deeplab_tf.data.dataset_info.DatasetDescriptor`.

    Returns:
      thing_class_ids (as listed) + stuff_class_ids (ascending).
    """
    return (tuple(dataset_descriptor.thing_class_ids) +
            tuple(dataset_descriptor.stuff_class_ids))


def strided_downsample(labels: tf.Tensor, target_size: Sequence[int],
                       name: str = "labels") -> tf.Tensor:
    """Keeps every s-th pixel of a [batch, height, width] map.

    The stride is s = (height - 1) / (target_height - 1), which must be an
    integer equal along both axes (deeplab2's `strided_downsample`).

    Args:
      labels: [batch, height, width] tensor with static height and width.
      target_size: (target_height, target_width).
      name: Name of the tensor, for error messages.

    Returns:
      [batch, target_height, target_width] tensor.

    Raises:
      ValueError: if the sizes do not allow one integer stride.
    """
    height, width = labels.shape[1], labels.shape[2]
    target_height, target_width = int(target_size[0]), int(target_size[1])
    if height is None or width is None:
        raise ValueError(f"{name}: height and width must be static, got "
                         f"shape {labels.shape}")
    if (height, width) == (target_height, target_width):
        return labels

    def _stride(size, target):
        if target < 2 or (size - 1) % (target - 1):
            raise ValueError(
                f"{name}: cannot downsample size {height}x{width} to "
                f"{target_height}x{target_width} with an integer stride; "
                "expected (size - 1) to be a multiple of (target - 1)")
        return (size - 1) // (target - 1)

    stride_h = _stride(height, target_height)
    stride_w = _stride(width, target_width)
    if stride_h != stride_w:
        raise ValueError(
            f"{name}: downsampling {height}x{width} to {target_height}x"
            f"{target_width} needs different strides {stride_h} and "
            f"{stride_w} along height and width")
    return labels[:, ::stride_h, ::stride_w]


@dataclasses.dataclass
class MaskGroundTruth:
    """Mask-level targets at the output resolution.

    P = output_height * output_width pixels, M = max_thing_id +
    num_stuff_classes ground-truth masks, K = number of transformer classes
    (void excluded).

    Attributes:
      pixel_non_void: float32 [batch, P], 1 where semantic != ignore_label.
      pixel_thing: float32 [batch, P], 1 on non-crowd thing pixels.
      pixel_mask_one_hot: float32 [batch, P, M], the mask of each pixel (all
        zero for void and crowd pixels).
      mask_valid: float32 [batch, M], 1 for masks that exist (see module doc).
      mask_area: float32 [batch, M], pixel count of each mask.
      mask_class_one_hot: float32 [batch, M, K], the transformer class of each
        valid mask (all zero for void masks).
    """

    pixel_non_void: tf.Tensor
    pixel_thing: tf.Tensor
    pixel_mask_one_hot: tf.Tensor
    mask_valid: tf.Tensor
    mask_area: tf.Tensor
    mask_class_one_hot: tf.Tensor


def _class_lookup_table(class_ids: Sequence[int]) -> np.ndarray:
    """Table from dataset class id to transformer class index (-1: none)."""
    table = np.full([max(class_ids, default=0) + 1], -1, np.int32)
    for index, class_id in enumerate(class_ids):
        table[class_id] = index
    return table


def _lookup(table: np.ndarray, ids: tf.Tensor) -> tf.Tensor:
    """table[ids], with -1 for ids outside the table."""
    size = table.shape[0]
    inside = tf.logical_and(ids >= 0, ids < size)
    gathered = tf.gather(tf.constant(table), tf.clip_by_value(ids, 0, size - 1))
    return tf.where(inside, gathered, -1)


def preprocess_ground_truth(y_true: Dict[str, tf.Tensor],
                            output_size: Sequence[int],
                            thing_class_ids: Sequence[int],
                            stuff_class_ids: Sequence[int],
                            ignore_label: int) -> MaskGroundTruth:
    """Builds mask-level targets at the output resolution.

    Args:
      y_true: dict with common.GT_SEMANTIC_KEY int [batch, H, W],
        common.GT_THING_ID_MASK_KEY int [batch, H, W] (-1 outside non-crowd
        things) and common.GT_THING_ID_CLASS_KEY int [batch, max_thing_id]
        (-1 for unused ids).
      output_size: (output_height, output_width).
      thing_class_ids: Dataset ids of the thing classes, in transformer order.
      stuff_class_ids: Dataset ids of the stuff classes, in transformer order.
      ignore_label: Semantic label of void pixels.

    Returns:
      A MaskGroundTruth.

    Raises:
      ValueError: naming the tensor when a key is missing or a shape is wrong.
    """
    for key in (common.GT_SEMANTIC_KEY, common.GT_THING_ID_MASK_KEY,
                common.GT_THING_ID_CLASS_KEY):
        if key not in y_true:
            raise ValueError(f"ground truth lacks {key!r}; got keys "
                             f"{sorted(y_true)}")
    semantic = tf.cast(y_true[common.GT_SEMANTIC_KEY], tf.int32)
    thing_id = tf.cast(y_true[common.GT_THING_ID_MASK_KEY], tf.int32)
    thing_id_class = tf.cast(y_true[common.GT_THING_ID_CLASS_KEY], tf.int32)
    if semantic.shape.rank != 3 or thing_id.shape.rank != 3:
        raise ValueError(
            f"{common.GT_SEMANTIC_KEY} and {common.GT_THING_ID_MASK_KEY} must "
            f"be [batch, height, width], got {semantic.shape} and "
            f"{thing_id.shape}")
    if thing_id_class.shape.rank != 2 or thing_id_class.shape[1] is None:
        raise ValueError(
            f"{common.GT_THING_ID_CLASS_KEY} must be [batch, max_thing_id] "
            f"with a static max_thing_id, got {thing_id_class.shape}")
    max_thing_id = int(thing_id_class.shape[1])
    num_pixels = int(output_size[0]) * int(output_size[1])

    semantic = strided_downsample(semantic, output_size,
                                  common.GT_SEMANTIC_KEY)
    thing_id = strided_downsample(thing_id, output_size,
                                  common.GT_THING_ID_MASK_KEY)
    semantic = tf.reshape(semantic, [-1, num_pixels])
    thing_id = tf.reshape(thing_id, [-1, num_pixels])

    pixel_non_void = tf.cast(tf.not_equal(semantic, ignore_label), tf.float32)
    pixel_thing = tf.cast(tf.not_equal(thing_id, -1), tf.float32)

    # Thing masks by id, then one mask per stuff class; tf.one_hot gives zeros
    # for -1 and out-of-range ids, so void, crowd and other pixels join none.
    stuff_table = _class_lookup_table(stuff_class_ids)
    pixel_stuff_index = _lookup(stuff_table, semantic)
    pixel_mask_one_hot = tf.concat([
        tf.one_hot(thing_id, max_thing_id, dtype=tf.float32),
        tf.one_hot(pixel_stuff_index, len(stuff_class_ids), dtype=tf.float32),
    ], axis=-1)
    mask_area = tf.reduce_sum(pixel_mask_one_hot, axis=1)

    class_ids = tuple(thing_class_ids) + tuple(stuff_class_ids)
    class_table = _class_lookup_table(class_ids)
    thing_class_index = _lookup(class_table, thing_id_class)
    stuff_class_index = tf.zeros_like(thing_id_class[:, :1]) + tf.range(
        len(thing_class_ids), len(class_ids), dtype=tf.int32)[None, :]
    mask_class_index = tf.concat([thing_class_index, stuff_class_index],
                                 axis=1)
    mask_valid = tf.logical_and(mask_area > 0.5, mask_class_index >= 0)
    mask_class_index = tf.where(mask_valid, mask_class_index, -1)

    return MaskGroundTruth(
        pixel_non_void=pixel_non_void,
        pixel_thing=pixel_thing,
        pixel_mask_one_hot=pixel_mask_one_hot,
        mask_valid=tf.cast(mask_valid, tf.float32),
        mask_area=mask_area,
        mask_class_one_hot=tf.one_hot(mask_class_index, len(class_ids),
                                      dtype=tf.float32))

"""MaX-DeepLab post-processing: mask slots -> panoptic, semantic, instance maps.

Follows deeplab2's pixel-wise post-processing (model/post_processor/
max_deeplab.py) step for step, so that the maps it produces on deeplab2's raw
outputs are deeplab2's:

1. Class per slot: softmax over all classes (void included), the void column
   dropped, then argmax and max give each slot's class index and confidence.
   Slots with confidence >= `transformer_class_confidence_threshold` are
   "detected".
2. The stride-4 mask logits are upsampled to the output size (bilinear,
   align_corners=True) and the logits of undetected slots are replaced by a
   very low constant; each pixel takes the argmax slot. A pixel is confident
   when that slot's softmax probability is > `pixel_confidence_threshold` and
   its overall argmax slot (detected or not) is a detected one.
3. Transformer class index k maps to the dataset semantic id
   (thing_class_ids + stuff_class_ids)[k], stuff ids being the non-void,
   non-thing ids in ascending order (deeplab2's get_stuff_class_ids).
4. Thing segments (one per slot) with fewer than `thing_area_limit` pixels
   and stuff regions (one per class, slots merged) with fewer than
   `stuff_area_limit` pixels become void.
5. panoptic = semantic * label_divisor + instance, instance = slot + 1 for
   things and 0 for stuff; void pixels are ignore_label * label_divisor.

The semantic map comes from a second pass without any threshold (every slot
detected), as in deeplab2, so it has no void pixels. When no slot is
detected the panoptic map is all void, the instance map all 1 and the scores
0 (deeplab2's empty result).

Everything uses static shapes and XLA-compilable ops (no tf.unique, no
bincount): per-image counts go through unsorted_segment_sum with per-image
offsets.
"""

from typing import Dict, Optional, Sequence

import tensorflow as tf

from max_deeplab_tf import common

# deeplab2's logit for undetected slots: softmax gives them probability 0.
_UNDETECTED_LOGIT = -99999.0


def thing_stuff_class_ids(descriptor) -> Sequence[int]:
    """Dataset semantic id of each transformer class index (void excluded).

    Things first in the descriptor's order, then the stuff ids ascending, as
    deeplab2 (thing_class_ids + get_stuff_class_ids(...)).
    """
    return tuple(descriptor.thing_class_ids) + tuple(
        descriptor.stuff_class_ids)


def resize_align_corners_bilinear(images: tf.Tensor,
                                  size: Sequence[int]) -> tf.Tensor:
    """Bilinear resize with corner pixels aligned (deeplab2's resize).

    Args:
      images: float [batch, height, width, channels].
      size: [out_height, out_width].

    Returns:
      float32 [batch, out_height, out_width, channels].
    """
    return tf.raw_ops.ResizeBilinear(
        images=images, size=tf.constant(list(size), tf.int32),
        align_corners=True, half_pixel_centers=False)


def _segment_areas(index_map: tf.Tensor, num_indices: int) -> tf.Tensor:
    """Per-pixel area of the region of its index, counted per image.

    Args:
      index_map: int32 [batch, height, width], values in [0, num_indices).
      num_indices: static upper bound of the values.

    Returns:
      int32 [batch, height, width]: how many pixels of the same image carry
      the pixel's index.
    """
    shape = tf.shape(index_map)
    batch = shape[0]
    flat = tf.reshape(index_map, [batch, -1])
    offsets = tf.range(batch, dtype=tf.int32)[:, None] * num_indices
    segment_ids = flat + offsets
    counts = tf.math.unsorted_segment_sum(
        tf.ones_like(segment_ids), segment_ids, batch * num_indices)
    return tf.reshape(tf.gather(counts, segment_ids), shape)


def panoptic_post_process(
        transformer_class_logits: tf.Tensor,
        pixel_space_mask_logits: tf.Tensor,
        output_size: Sequence[int],
        thing_class_ids: Sequence[int],
        stuff_class_ids: Sequence[int],
        ignore_label: int,
        label_divisor: int,
        transformer_class_confidence_threshold: float = 0.7,
        pixel_confidence_threshold: float = 0.4,
        thing_area_limit: int = 0,
        stuff_area_limit: int = 0,
        compute_semantic: bool = True) -> Dict[str, tf.Tensor]:
    """Turns MaX-DeepLab outputs into panoptic, semantic and instance maps.

    Args:
      transformer_class_logits: float [batch, num_mask_slots, num_classes]
        where num_classes = len(thing) + len(stuff) + 1, the last being void.
      pixel_space_mask_logits: float [batch, height/4, width/4,
        num_mask_slots] (any size; upsampled to `output_size`).
      output_size: static [height, width] of the outputs.
      thing_class_ids: semantic id of each thing transformer class, in order.
      stuff_class_ids: semantic ids of the stuff classes, ascending.
      ignore_label: semantic id written on void pixels.
      label_divisor: panoptic = semantic * label_divisor + instance.
      transformer_class_confidence_threshold: slots whose best non-void class
        probability is below this are dropped.
      pixel_confidence_threshold: pixels whose mask probability is not above
        this are void.
      thing_area_limit: thing segments smaller than this (pixels) are void.
      stuff_area_limit: stuff regions (per class) smaller than this are void.
      compute_semantic: also compute the threshold-free semantic map.

    Returns:
      Dict with, all [batch, height, width]:
        common.PRED_PANOPTIC_KEY: int32 panoptic map.
        common.PRED_SEMANTIC_KEY: int32 semantic map (if compute_semantic).
        common.PRED_INSTANCE_KEY: int32 mask slot + 1 of each pixel.
        common.PRED_INSTANCE_SCORES_KEY: float32 mask probability.
        common.PRED_SEMANTIC_SCORES_KEY: float32 class confidence of the
          pixel's slot.
    """
    class_logits = tf.cast(transformer_class_logits, tf.float32)
    mask_logits = tf.cast(pixel_space_mask_logits, tf.float32)
    num_things = len(thing_class_ids)
    class_ids = list(thing_class_ids) + list(stuff_class_ids)
    num_classes = class_logits.shape[-1]
    if num_classes is not None and num_classes != len(class_ids) + 1:
        raise ValueError(
            f"transformer_class_logits has {num_classes} classes; the dataset "
            f"has {len(class_ids)} thing + stuff classes, so {len(class_ids) + 1}"
            " (with void last) were expected")
    if len(output_size) != 2:
        raise ValueError(f"output_size must be [height, width], got "
                         f"{output_size}")
    height, width = int(output_size[0]), int(output_size[1])

    # Step 1: one class per slot, void excluded (probabilities keep void's
    # share, as deeplab2: no renormalisation).
    class_probs = tf.nn.softmax(class_logits, axis=-1)[..., :-1]
    slot_class = tf.argmax(class_probs, axis=-1, output_type=tf.int32)
    slot_confidence = tf.reduce_max(class_probs, axis=-1)
    detected = tf.cast(slot_confidence >= transformer_class_confidence_threshold,
                       tf.float32)
    num_detections = tf.reduce_sum(detected, axis=-1)

    # Step 2: pixel -> slot.
    logits = resize_align_corners_bilinear(mask_logits, [height, width])
    # deeplab2's logits * detected + _UNDETECTED_LOGIT * (1 - detected), in
    # one pass over the [batch, height, width, slots] logits (the same
    # values: x * 1 + c * 0 is x and x * 0 + c * 1 is c for finite x).
    detected_logits = tf.where(detected[:, None, None, :] > 0.0, logits,
                               _UNDETECTED_LOGIT)
    pixel_confidence = tf.reduce_max(tf.nn.softmax(detected_logits, axis=-1),
                                     axis=-1)
    confident = pixel_confidence > pixel_confidence_threshold
    mask_id = tf.argmax(detected_logits, axis=-1, output_type=tf.int32)
    all_mask_id = tf.argmax(logits, axis=-1, output_type=tf.int32)
    # A pixel whose best slot overall was dropped is void, not handed to the
    # runner-up. The maxima are read at the argmax slots (a gather instead
    # of two more passes over the logits).
    argmax_detected = tf.equal(
        tf.gather(logits, all_mask_id[..., None], batch_dims=3)[..., 0],
        tf.gather(detected_logits, mask_id[..., None], batch_dims=3)[..., 0])
    confident = tf.logical_and(confident, argmax_detected)
    semantic_scores = tf.gather(slot_confidence, mask_id, batch_dims=1)
    pixel_class = tf.gather(slot_class, mask_id, batch_dims=1)

    # Step 3: class index -> semantic id.
    class_id_table = tf.constant(class_ids, tf.int32)
    semantic = tf.gather(class_id_table, pixel_class)
    is_thing = tf.logical_and(pixel_class < num_things, confident)
    is_stuff = tf.logical_and(pixel_class >= num_things, confident)

    # Step 4: area limits. Regions are counted in "plus one" index space so
    # that index 0 means "not this kind of region".
    thing_index = tf.where(is_thing, mask_id + 1, 0)
    semantic_plus_one = semantic + 1
    stuff_index = tf.where(is_stuff, semantic_plus_one, 0)
    if thing_area_limit > 0:
        num_slots = mask_logits.shape[-1]
        big = _segment_areas(thing_index, num_slots + 1) >= thing_area_limit
        is_thing = tf.logical_and(is_thing, big)
        thing_index = tf.where(is_thing, thing_index, 0)
    if stuff_area_limit > 0:
        bound = max(class_ids) + 2
        big = _segment_areas(stuff_index, bound) >= stuff_area_limit
        is_stuff = tf.logical_and(is_stuff, big)

    # Step 5: merge.
    kept = tf.logical_or(is_thing, is_stuff)
    panoptic_semantic = tf.where(kept, semantic, ignore_label)
    panoptic = panoptic_semantic * label_divisor + thing_index

    empty = (num_detections < 0.5)[:, None, None]
    outputs = {
        common.PRED_PANOPTIC_KEY: tf.where(
            empty, ignore_label * label_divisor, panoptic),
        common.PRED_INSTANCE_KEY: tf.where(empty, 1, mask_id + 1),
        common.PRED_INSTANCE_SCORES_KEY: tf.where(empty, 0.0,
                                                  pixel_confidence),
        common.PRED_SEMANTIC_SCORES_KEY: tf.where(empty, 0.0, semantic_scores),
    }
    if compute_semantic:
        # The threshold-free pass: every slot detected, so the masked logits
        # are the logits themselves.
        outputs[common.PRED_SEMANTIC_KEY] = tf.gather(
            class_id_table, tf.gather(slot_class, all_mask_id, batch_dims=1))
    return outputs


class PostProcessor:
    """deeplab2's MaX-DeepLab PostProcessor, configured from our protos.

    Args:
      evaluator_options: EvaluatorOptions proto (thresholds, area limits).
      descriptor: DatasetDescriptor (thing ids, void label, label divisor).
      output_size: [height, width] of the maps; None: taken from the mask
        logits as 4 * (h - 1) + 1 (the input size of a stride-4 output).
    """

    def __init__(self, evaluator_options, descriptor,
                 output_size: Optional[Sequence[int]] = None):
        post_processing = evaluator_options.transformer_post_processing
        if post_processing not in ("", "pixelwise"):
            raise ValueError(
                "evaluator_options.transformer_post_processing: only "
                f"'pixelwise' is supported, got {post_processing!r}")
        self._descriptor = descriptor
        self._output_size = (None if output_size is None
                             else [int(s) for s in output_size])
        self._options = dict(
            thing_class_ids=tuple(descriptor.thing_class_ids),
            stuff_class_ids=tuple(descriptor.stuff_class_ids),
            ignore_label=int(descriptor.ignore_label),
            label_divisor=int(descriptor.label_divisor),
            transformer_class_confidence_threshold=float(
                evaluator_options.transformer_class_confidence_threshold),
            pixel_confidence_threshold=float(
                evaluator_options.pixel_confidence_threshold),
            thing_area_limit=int(evaluator_options.thing_area_limit),
            stuff_area_limit=int(evaluator_options.stuff_area_limit))

    @property
    def descriptor(self):
        return self._descriptor

    def output_size_for(self, mask_logits: tf.Tensor) -> Sequence[int]:
        if self._output_size is not None:
            return self._output_size
        h, w = mask_logits.shape[1:3]
        if h is None or w is None:
            raise ValueError(
                "pixel_space_mask_logits has an unknown spatial size "
                f"{mask_logits.shape}; give PostProcessor an output_size")
        return [4 * (h - 1) + 1, 4 * (w - 1) + 1]

    def __call__(self, outputs: Dict[str, tf.Tensor],
                 output_size: Optional[Sequence[int]] = None
                 ) -> Dict[str, tf.Tensor]:
        """Post-processes a model output dictionary.

        Args:
          outputs: dict with common.PRED_TRANSFORMER_CLASS_LOGITS_KEY [batch,
            N, C] and common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY [batch, h, w, N].
          output_size: overrides the constructor's [height, width].

        Returns:
          The dict of `panoptic_post_process`.
        """
        for key in (common.PRED_TRANSFORMER_CLASS_LOGITS_KEY,
                    common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY):
            if key not in outputs:
                raise KeyError(f"model outputs lack {key!r} (have "
                               f"{sorted(outputs)})")
        mask_logits = outputs[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY]
        size = (list(output_size) if output_size is not None
                else self.output_size_for(mask_logits))
        return panoptic_post_process(
            outputs[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY], mask_logits,
            size, **self._options)

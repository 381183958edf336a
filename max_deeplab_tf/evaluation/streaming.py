"""Streaming panoptic quality in TensorFlow, for the evaluator.

Same definition as `panoptic_quality` (the COCO panoptic evaluation), computed
in the graph on panoptic maps encoded as semantic * label_divisor + instance:

  * void: ground-truth pixels whose semantic id is the ignore label (or out
    of [0, num_classes)); predicted pixels likewise are not part of any
    segment.
  * crowd: ground-truth pixels of a thing class with instance 0 form that
    class's crowd region (max_deeplab_tf.common's encoding).

The statistics of a batch (IoU sum, TP, FP, FN per semantic class) are
additive, so they can be summed over batches, replicas and hosts before
`result_from_statistics` turns them into PQ/SQ/RQ.

Per image, every pixel gets the key gt_id * T + pred_id (T = num_classes *
label_divisor + 1, the last id standing for void); the keys are sorted, and
runs of equal keys are the (gt segment, predicted segment) intersections.
All shapes are static and every op compiles with XLA (sort, cumsum,
unsorted_segment_sum, gather).
"""

from typing import Dict, Mapping, Sequence

import numpy as np
import tensorflow as tf

from max_deeplab_tf.evaluation import panoptic_quality

IOU_SUM = "iou_sum"
TRUE_POSITIVES = "tp"
FALSE_POSITIVES = "fp"
FALSE_NEGATIVES = "fn"
STATISTICS = (IOU_SUM, TRUE_POSITIVES, FALSE_POSITIVES, FALSE_NEGATIVES)


def panoptic_statistics(gt_panoptic: tf.Tensor, pred_panoptic: tf.Tensor,
                        num_classes: int, label_divisor: int,
                        ignore_label: int,
                        thing_class_ids: Sequence[int]) -> Dict[str, tf.Tensor]:
    """PQ statistics of a batch, summed over its images.

    Args:
      gt_panoptic: int [batch, height, width] ground truth.
      pred_panoptic: int [batch, height, width] prediction, same size.
      num_classes: semantic classes including void.
      label_divisor: panoptic = semantic * label_divisor + instance.
      ignore_label: the void semantic id.
      thing_class_ids: semantic ids of thing classes (crowd = instance 0).

    Returns:
      Dict: IOU_SUM float32 [num_classes], TRUE_POSITIVES, FALSE_POSITIVES,
      FALSE_NEGATIVES int32 [num_classes], indexed by semantic id.
    """
    gt = tf.cast(gt_panoptic, tf.int32)
    pred = tf.cast(pred_panoptic, tf.int32)
    gt.shape.assert_has_rank(3)
    gt.shape.assert_is_compatible_with(pred.shape)
    num_ids = num_classes * label_divisor
    void_id = num_ids
    width = num_ids + 1  # T: ids plus void.
    key_dtype = tf.int32 if width * width < 2 ** 31 else tf.int64

    batch = tf.shape(gt)[0]
    gt = tf.reshape(gt, [batch, -1])
    pred = tf.reshape(pred, [batch, -1])
    num_pixels = tf.shape(gt)[1]

    is_thing_class = np.zeros([num_classes + 1], bool)
    is_thing_class[[c for c in thing_class_ids if 0 <= c < num_classes]] = True
    is_thing_class = tf.constant(is_thing_class)

    def canonical(ids):
        semantic = tf.math.floordiv(ids, label_divisor)
        void = ((ids < 0) | (ids >= num_ids)
                | tf.equal(semantic, ignore_label))
        return tf.where(void, void_id, ids)

    def crowd(ids):  # ids canonical
        semantic = tf.math.floordiv(ids, label_divisor)
        return (tf.gather(is_thing_class, semantic)
                & tf.equal(tf.math.floormod(ids, label_divisor), 0)
                & (ids < void_id))

    gt = canonical(gt)
    pred = canonical(pred)
    gt_void = tf.equal(gt, void_id)
    gt_crowd = crowd(gt)
    same_class = tf.equal(tf.math.floordiv(gt, label_divisor),
                          tf.math.floordiv(pred, label_divisor))

    image_offset = tf.range(batch, dtype=tf.int32)[:, None] * width
    num_slots = batch * width
    gt_slot = gt + image_offset  # [batch, pixels] -> per-image id slot
    pred_slot = pred + image_offset
    ones = tf.ones_like(gt)

    def per_id(values, slots):
        return tf.math.unsorted_segment_sum(values, slots, num_slots)

    gt_area = per_id(ones, gt_slot)
    pred_area = per_id(ones, pred_slot)
    void_overlap = per_id(tf.cast(gt_void, tf.int32), pred_slot)
    crowd_overlap = per_id(tf.cast(gt_crowd & same_class, tf.int32),
                           pred_slot)

    # Intersections: runs of equal (gt, pred) keys in each sorted row.
    keys = tf.cast(gt, key_dtype) * width + tf.cast(pred, key_dtype)
    keys = tf.sort(keys, axis=-1)
    first = tf.concat([tf.ones([batch, 1], tf.bool),
                       tf.not_equal(keys[:, 1:], keys[:, :-1])], axis=1)
    run = tf.cumsum(tf.cast(first, tf.int32), axis=1) - 1
    run += tf.range(batch, dtype=tf.int32)[:, None] * num_pixels
    run_size = tf.math.unsorted_segment_sum(ones, run, batch * num_pixels)
    intersection = tf.gather(run_size, run)
    pair_gt = tf.cast(keys // width, tf.int32)
    pair_pred = tf.cast(keys % width, tf.int32)
    pair_gt_slot = pair_gt + image_offset
    pair_pred_slot = pair_pred + image_offset
    candidate = (first
                 & tf.not_equal(pair_gt, void_id)
                 & tf.not_equal(pair_pred, void_id)
                 & ~crowd(pair_gt)
                 & tf.equal(tf.math.floordiv(pair_gt, label_divisor),
                            tf.math.floordiv(pair_pred, label_divisor)))
    union = (tf.gather(gt_area, pair_gt_slot)
             + tf.gather(pred_area, pair_pred_slot)
             - intersection - tf.gather(void_overlap, pair_pred_slot))
    iou = tf.cast(intersection, tf.float32) / tf.cast(
        tf.maximum(union, 1), tf.float32)
    # IoU > 0.5 exactly, in integers: 2 * intersection > union.
    matched = candidate & (2 * intersection > union)
    matched_int = tf.cast(matched, tf.int32)

    pair_class = tf.where(matched,
                          tf.math.floordiv(pair_gt, label_divisor), 0)
    true_positives = tf.math.unsorted_segment_sum(
        tf.reshape(matched_int, [-1]), tf.reshape(pair_class, [-1]),
        num_classes)
    iou_sum = tf.math.unsorted_segment_sum(
        tf.reshape(tf.where(matched, iou, 0.0), [-1]),
        tf.reshape(pair_class, [-1]), num_classes)

    gt_matched = per_id(matched_int, pair_gt_slot) > 0
    pred_matched = per_id(matched_int, pair_pred_slot) > 0

    all_ids = tf.range(width, dtype=tf.int32)
    id_is_real = tf.tile((all_ids < void_id)[None, :], [batch, 1])
    id_is_crowd = tf.tile(crowd(all_ids)[None, :], [batch, 1])

    def by_id(flat):
        return tf.reshape(flat, [batch, width])

    unmatched_gt = (by_id(gt_area > 0) & id_is_real & ~id_is_crowd
                    & ~by_id(gt_matched))
    # A prediction more than half on void + same-class crowd is ignored:
    # 2 * (void + crowd) > area.
    ignored = 2 * (void_overlap + crowd_overlap) > pred_area
    unmatched_pred = (by_id(pred_area > 0) & id_is_real & ~by_id(pred_matched)
                      & ~by_id(ignored))

    def per_class(segments):
        counts = tf.reduce_sum(tf.cast(segments[:, :num_ids], tf.int32),
                               axis=0)
        return tf.reduce_sum(tf.reshape(counts, [num_classes, label_divisor]),
                             axis=1)

    return {IOU_SUM: iou_sum,
            TRUE_POSITIVES: true_positives,
            FALSE_POSITIVES: per_class(unmatched_pred),
            FALSE_NEGATIVES: per_class(unmatched_gt)}


def statistics_fn(descriptor):
    """(gt, pred) -> statistics, bound to a DatasetDescriptor (for the
    trainer's EvalHooks.pq_statistics)."""

    def fn(gt_panoptic, pred_panoptic):
        return panoptic_statistics(
            gt_panoptic, pred_panoptic, descriptor.num_classes,
            descriptor.label_divisor, descriptor.ignore_label,
            descriptor.thing_class_ids)
    return fn


def category_of_class(descriptor) -> Dict[int, int]:
    """Semantic id -> category id used in results (the dataset's original
    category ids when the descriptor has them, else the semantic ids)."""
    ids = list(descriptor.category_ids)
    out = {}
    for semantic in range(descriptor.num_classes):
        if semantic == descriptor.ignore_label:
            continue
        out[semantic] = int(ids[semantic]) if len(ids) == \
            descriptor.num_classes else semantic
    return out


def result_from_statistics(statistics: Mapping[str, np.ndarray],
                           descriptor) -> Dict:
    """Summed statistics -> the panoptic-quality result dictionary.

    Args:
      statistics: STATISTICS keys -> arrays [num_classes] (numpy or eager
        tensors), summed over all images.
      descriptor: DatasetDescriptor.

    Returns:
      {"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class": {...}},
      keyed by category id (see `category_of_class`), as the command writes;
      each per-class entry also carries the class's "name" (the
      descriptor's class name, or "class_<semantic id>" without one) and
      "isthing".
    """
    values = {k: np.asarray(statistics[k], np.float64) for k in STATISTICS}
    mapping = category_of_class(descriptor)
    things = set(descriptor.thing_class_ids)
    stats = {}
    categories = {}
    for semantic, category in mapping.items():
        categories[category] = semantic in things
        stats[category] = np.array([values[k][semantic] for k in STATISTICS])
    result = panoptic_quality.summarize(stats, categories)
    names = list(descriptor.class_names)
    for semantic, category in mapping.items():
        entry = result["per_class"].get(str(category))
        if entry is not None:
            entry["name"] = (names[semantic] if semantic < len(names)
                             and names[semantic] else f"class_{semantic}")
            entry["isthing"] = semantic in things
    return result


class PanopticQuality(tf.Module):
    """Streaming PQ: accumulate batches, read PQ/SQ/RQ.

        metric = PanopticQuality(descriptor)
        for gt, pred in batches:
            metric.update_state(gt, pred)     # also inside tf.function
        metric.result()  # {"All": {"pq", ...}, ..., "per_class": {...}}

    The variables are summed over replicas when read (ON_READ, SUM), so
    update_state can run in a replica context of any tf.distribute strategy;
    statistics from elsewhere (other hosts, other metrics) can be added with
    `merge_state`.

    Args:
      descriptor: DatasetDescriptor.
    """

    def __init__(self, descriptor, name: str = "panoptic_quality"):
        super().__init__(name=name)
        self._descriptor = descriptor
        self._statistics = statistics_fn(descriptor)
        self._variables = {}
        with self.name_scope:
            for key in STATISTICS:
                self._variables[key] = tf.Variable(
                    tf.zeros([descriptor.num_classes],
                             tf.float32 if key == IOU_SUM else tf.int32),
                    trainable=False, name=key,
                    synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.SUM)

    def update_state(self, gt_panoptic, pred_panoptic):
        """Adds a batch: int [batch, height, width] each."""
        batch = self._statistics(gt_panoptic, pred_panoptic)
        return [self._variables[k].assign_add(batch[k]) for k in STATISTICS]

    def merge_state(self, statistics: Mapping[str, tf.Tensor]):
        """Adds statistics (a `statistics()` dict of another metric)."""
        for k in STATISTICS:
            self._variables[k].assign_add(
                tf.cast(statistics[k], self._variables[k].dtype))

    def statistics(self) -> Dict[str, tf.Tensor]:
        """The accumulated sums, [num_classes] each."""
        return {k: tf.convert_to_tensor(v) for k, v in self._variables.items()}

    def reset_state(self):
        for v in self._variables.values():
            v.assign(tf.zeros_like(v))

    def result(self) -> Dict:
        """PQ/SQ/RQ of everything accumulated (eager)."""
        return result_from_statistics(
            {k: v.numpy() for k, v in self.statistics().items()},
            self._descriptor)

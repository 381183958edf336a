"""The MaX-DeepLab losses (Wang et al., CVPR 2021, arXiv 2012.00759).

Same definitions as deeplab2's model/loss/max_deeplab_loss.py (with the
semantic loss of its base_loss.TopKCrossEntropyLoss). With N mask slots, M
ground-truth masks (see ground_truth.py), K transformer classes plus void and
alpha = LossOptions.pq_style_loss_alpha:

Matching. For each ground-truth mask j and slot i, similarity
  S_ji = Dice(gt_j, m_i) * p_i(class_j),
with m_i the slot's mask probabilities (softmax over slots, zeroed on void
pixels; Dice = 2|m∩g| / (|m| + |g| + 1e-5)) and p_i the softmax of the class
logits. The slots are matched one-to-one to the valid ground-truth masks by
minimising -sum S (max_deeplab_tf.ops.hungarian_matching). The matching and
all weights marked "fixed" below are stop-gradient.

PQ-style loss (weight w_pq), returned as two terms:
- pq_style_loss_class_term: a focal-free (gamma 0) alpha-weighted
  cross-entropy of every slot's class logits against its target: the matched
  mask's class for a matched slot, void for the others. A matched slot is
  weighted by alpha * max(its fixed Dice, 1e-5); an unmatched slot by
  (1 - alpha) * max(fixed void ratio, 1e-5), where the void ratio is the
  fraction of the slot's mask probability that lies on void pixels (this is
  deeplab2's weighting; the paper's negative weight is plain 1 - alpha).
  Summed over slots, divided by the number of slots with a non-zero term
  (normally N), times w_pq.
- pq_style_loss_mask_dice_term: for every matched ground-truth mask, the
  smoothed Dice loss 1 - (2|m∩g| + 1) / (|m| + |g| + 1) of its slot
  (computed on the pixels of ground-truth masks only, i.e. void and crowd
  pixels removed), weighted by max(fixed p(class), 1e-5); summed over masks
  and multiplied by w_pq * alpha / N (deeplab2's mask_dice_term_modifier,
  which gives the class and Dice terms the same weight and normaliser).

Mask-ID cross-entropy (weight w_id): per pixel of a matched ground-truth
mask, the cross-entropy of the softmax over slots against the matched slot;
averaged over those pixels (top-k optional).

Instance discrimination (weight w_inst, temperature tau): each valid mask's
mean pixel feature, L2-normalised, is a class prototype; per non-crowd thing
pixel, the cross-entropy of softmax_j(<g_p, prototype_j> / tau) over all
valid masks (things and stuff) against the pixel's mask; averaged over
those pixels (top-k optional).

Semantic loss (weight w_sem): softmax cross-entropy of semantic_logits
against the ground-truth semantic map strided-downsampled to the logits'
resolution, times semantic_loss_weight (downsampled the same way), pixels
labelled ignore_label removed; averaged over pixels with non-zero loss
(top-k optional).

Every average counts only elements whose weighted loss is non-zero (as
deeplab2's), and an example with none gets 0.

Differences from deeplab2, all outside its normal operating range:
- If an image has more valid masks than slots, deeplab2 assigns the masks
  left unmatched to slot 0 (its class target becomes a multi-hot vector) and
  gives their pixels a mask-ID cross-entropy of ~1e5 against padding logits.
  Here unmatched masks are simply left out of every term.
- A thing id whose class is not a thing or stuff class of the dataset, or
  pixels of such an id, are treated as void (deeplab2 would give them a
  ~1e5 instance-discrimination loss).
- deeplab2 runs its Dice term on a square, padded permutation; the result is
  the same.
"""

from typing import Callable, Dict, Optional

import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf.losses import base_loss
from max_deeplab_tf.losses import ground_truth

# Logit given to void ground-truth masks so that a softmax ignores them.
_SOFTMAX_MASKING_CONSTANT = -99999.0
# Lower bound of the (fixed) per-slot and per-mask weights, as deeplab2.
_MIN_DYNAMIC_WEIGHT = 1e-5

_SEMANTIC_LOSS_NAMES = ("", "softmax_cross_entropy")

Matcher = Callable[..., tf.Tensor]


def _default_matcher() -> Matcher:
    try:
        from max_deeplab_tf.ops.hungarian_matching import hungarian_matching
    except ImportError as e:
        raise ImportError(
            "MaXDeepLabLoss needs max_deeplab_tf.ops.hungarian_matching for "
            "the PQ-style and mask-ID losses, and it could not be imported: "
            f"{e}") from e
    return hungarian_matching


class MaXDeepLabLoss:
    """Computes the MaX-DeepLab loss terms from deeplab2-keyed dictionaries.

    Usage:
      loss = MaXDeepLabLoss(experiment.trainer_options.loss_options,
                            get_dataset_descriptor('coco_panoptic'))
      terms = loss(y_true, y_pred)   # dict of [batch] float32 tensors
      per_example = terms[common.TOTAL_LOSS]
      # The trainer averages over the GLOBAL batch, e.g.
      # tf.nn.compute_average_loss(per_example, global_batch_size=...).

    The loss is a plain callable (not a Keras layer): it holds no variables.
    It runs eagerly, under tf.function and under jit_compile=True (static
    shapes required there), and always computes in float32, casting model
    outputs from mixed precision.

    Attributes:
      loss_terms: Tuple of the term keys returned besides common.TOTAL_LOSS,
        one per LossOptions field that is set (the PQ-style loss gives two).
    """

    def __init__(self, loss_options, dataset_descriptor,
                 matcher: Optional[Matcher] = None):
        """Initialises the loss.

        Args:
          loss_options: a max_deeplab_tf.protos.trainer_pb2.LossOptions. A
            term is computed when its field is set (weight 0 gives zeros);
            pq_style_loss_alpha and instance_discrimination_temperature are
            read from it.
          dataset_descriptor: a DatasetDescriptor (num_classes, ignore_label,
            thing and stuff class ids).
          matcher: Optional replacement for
            max_deeplab_tf.ops.hungarian_matching(cost, valid_columns), which
            is used by default.

        Raises:
          ValueError: for an unsupported option value, naming the field.
        """
        self._descriptor = dataset_descriptor
        self._thing_class_ids = tuple(dataset_descriptor.thing_class_ids)
        self._stuff_class_ids = tuple(dataset_descriptor.stuff_class_ids)
        self._num_classes = int(dataset_descriptor.num_classes)
        self._ignore_label = int(dataset_descriptor.ignore_label)
        self._alpha = float(loss_options.pq_style_loss_alpha)
        self._temperature = float(
            loss_options.instance_discrimination_temperature)
        if not 0.0 <= self._alpha <= 1.0:
            raise ValueError("LossOptions.pq_style_loss_alpha must lie in "
                             f"[0, 1], got {self._alpha}")
        if self._temperature <= 0.0:
            raise ValueError(
                "LossOptions.instance_discrimination_temperature must be "
                f"positive, got {self._temperature}")

        def _option(field):
            if not loss_options.HasField(field):
                return None
            option = getattr(loss_options, field)
            base_loss.check_top_k_percent(
                option.top_k_percent, f"LossOptions.{field}.top_k_percent")
            return option

        self._semantic = _option("semantic_loss")
        self._pq = _option("pq_style_loss")
        self._mask_id = _option("mask_id_cross_entropy_loss")
        self._instance = _option("instance_discrimination_loss")
        if (self._semantic is not None and
                self._semantic.name not in _SEMANTIC_LOSS_NAMES):
            raise ValueError(
                "LossOptions.semantic_loss.name must be "
                f"'softmax_cross_entropy' (or empty), got "
                f"{self._semantic.name!r}")

        terms = []
        if self._pq is not None:
            terms += [common.PQ_STYLE_LOSS_CLASS_TERM,
                      common.PQ_STYLE_LOSS_MASK_DICE_TERM]
        if self._mask_id is not None:
            terms.append(common.MASK_ID_CROSS_ENTROPY_LOSS)
        if self._instance is not None:
            terms.append(common.INSTANCE_DISCRIMINATION_LOSS)
        if self._semantic is not None:
            terms.append(common.SEMANTIC_LOSS)
        self.loss_terms = tuple(terms)

        self._matcher = matcher
        if self._matcher is None and self._needs_matching():
            self._matcher = _default_matcher()

    def _needs_matching(self) -> bool:
        return any(option is not None and option.weight != 0.0
                   for option in (self._pq, self._mask_id))

    @property
    def transformer_class_ids(self):
        """Dataset class id of each transformer class (void excluded)."""
        return ground_truth.transformer_class_ids(self._descriptor)

    def __call__(self, y_true: Dict[str, tf.Tensor],
                 y_pred: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Computes the loss terms.

        Args:
          y_true: dict with common.GT_SEMANTIC_KEY [batch, H, W],
            common.GT_THING_ID_MASK_KEY [batch, H, W],
            common.GT_THING_ID_CLASS_KEY [batch, max_thing_id] and, for the
            semantic loss, common.SEMANTIC_LOSS_WEIGHT_KEY [batch, H, W].
          y_pred: dict with common.PRED_TRANSFORMER_CLASS_LOGITS_KEY
            [batch, N, K + 1] (void last), common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY
            [batch, h, w, N], common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY
            [batch, h, w, D] and common.PRED_SEMANTIC_LOGITS_KEY
            [batch, h', w', num_classes], as far as the enabled terms need
            them. H = (h - 1) * s + 1 for an integer stride s (same for h').

        Returns:
          dict from each key of `loss_terms` and common.TOTAL_LOSS (their sum)
          to a float32 [batch] tensor: the weighted per-example loss.

        Raises:
          ValueError: naming the tensor if one is missing or mis-shaped.
        """
        with tf.name_scope("max_deeplab_loss"):
            return self._call(y_true, y_pred)

    def _get(self, y_pred, key, rank):
        if key not in y_pred:
            raise ValueError(f"model outputs lack {key!r}, needed by the "
                             f"enabled losses; got keys {sorted(y_pred)}")
        value = tf.cast(y_pred[key], tf.float32)
        if value.shape.rank != rank or None in value.shape[1:]:
            raise ValueError(
                f"{key} must have rank {rank} with static non-batch "
                f"dimensions, got shape {value.shape}")
        return value

    def _call(self, y_true, y_pred):
        needs_instance = (self._instance is not None and
                          self._instance.weight != 0.0)
        needs_semantic = (self._semantic is not None and
                          self._semantic.weight != 0.0)
        results = {}

        output_size = None
        mask_logits = class_logits = features = None
        if self._needs_matching():
            mask_logits = self._get(
                y_pred, common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY, 4)
            class_logits = self._get(
                y_pred, common.PRED_TRANSFORMER_CLASS_LOGITS_KEY, 3)
            self._check_slots(mask_logits, class_logits)
            output_size = tuple(mask_logits.shape[1:3])
        if needs_instance:
            features = self._get(
                y_pred, common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY, 4)
            if output_size not in (None, tuple(features.shape[1:3])):
                raise ValueError(
                    f"{common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY} has "
                    f"spatial size {tuple(features.shape[1:3])} but "
                    f"{common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY} has "
                    f"{output_size}")
            output_size = tuple(features.shape[1:3])

        if output_size is not None:
            gt = ground_truth.preprocess_ground_truth(
                y_true, output_size, self._thing_class_ids,
                self._stuff_class_ids, self._ignore_label)
            if mask_logits is not None:
                results.update(
                    self._matching_losses(gt, mask_logits, class_logits))
            if features is not None:
                results[common.INSTANCE_DISCRIMINATION_LOSS] = (
                    self._instance_discrimination_loss(gt, features) *
                    self._instance.weight)
        if needs_semantic:
            results[common.SEMANTIC_LOSS] = self._semantic_loss(
                y_true, y_pred) * self._semantic.weight

        # Terms whose field is set with weight 0 are reported as zeros.
        if common.GT_SEMANTIC_KEY not in y_true:
            raise ValueError(f"ground truth lacks {common.GT_SEMANTIC_KEY!r}; "
                             f"got keys {sorted(y_true)}")
        zeros = tf.zeros([tf.shape(y_true[common.GT_SEMANTIC_KEY])[0]],
                         tf.float32)
        output = {key: results.get(key, zeros) for key in self.loss_terms}
        output[common.TOTAL_LOSS] = (
            tf.add_n(list(output.values())) if output else zeros)
        return output

    def _check_slots(self, mask_logits, class_logits):
        num_slots = class_logits.shape[1]
        if mask_logits.shape[3] != num_slots:
            raise ValueError(
                f"{common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY} has "
                f"{mask_logits.shape[3]} mask slots but "
                f"{common.PRED_TRANSFORMER_CLASS_LOGITS_KEY} has {num_slots}")
        expected = len(self._thing_class_ids) + len(self._stuff_class_ids) + 1
        if class_logits.shape[2] != expected:
            raise ValueError(
                f"{common.PRED_TRANSFORMER_CLASS_LOGITS_KEY} must have "
                f"{expected} classes (the dataset's "
                f"{expected - 1} thing and stuff classes + void), got "
                f"shape {class_logits.shape}")

    def _matching_losses(self, gt, mask_logits, class_logits):
        """PQ-style and mask-ID terms, which share the Hungarian matching."""
        num_slots = int(class_logits.shape[1])
        num_pixels = int(mask_logits.shape[1]) * int(mask_logits.shape[2])
        mask_logits = tf.reshape(mask_logits, [-1, num_pixels, num_slots])
        mask_probs = tf.nn.softmax(mask_logits, axis=-1)
        non_void = gt.pixel_non_void[:, :, None]

        # [batch, M, N] similarities between ground-truth masks and slots.
        dice = base_loss.mask_similarity(
            gt.pixel_mask_one_hot, mask_probs * non_void, "dice")
        class_probs = tf.nn.softmax(class_logits, axis=-1)[:, :, :-1]
        class_similarity = tf.einsum(
            "bmk,bnk->bmn", gt.mask_class_one_hot, class_probs)

        cost = tf.stop_gradient(
            -tf.transpose(dice * class_similarity, [0, 2, 1]))
        mask_valid = gt.mask_valid
        assignment = self._matcher(cost, valid_columns=mask_valid > 0.5)
        # [batch, N, M], 1 where slot n is matched to mask m.
        assignment = tf.stop_gradient(
            tf.cast(assignment, tf.float32) * mask_valid[:, None, :])
        slot_matched = tf.reduce_sum(assignment, axis=2)
        mask_matched = tf.reduce_sum(assignment, axis=1)

        results = {}
        if self._pq is not None and self._pq.weight != 0.0:
            matched_dice = tf.stop_gradient(tf.reduce_sum(
                assignment * tf.transpose(dice, [0, 2, 1]), axis=2))
            matched_class_prob = tf.stop_gradient(tf.reduce_sum(
                assignment * tf.transpose(class_similarity, [0, 2, 1]),
                axis=1))

            # Class term.
            slot_class_target = tf.einsum(
                "bnm,bmk->bnk", assignment, gt.mask_class_one_hot)
            class_target = tf.concat(
                [slot_class_target, (1.0 - slot_matched)[:, :, None]],
                axis=-1)
            void_ratio = tf.stop_gradient(base_loss.mask_similarity(
                1.0 - non_void, mask_probs,
                "intersection_over_prediction")[:, 0, :])
            slot_weight = (
                slot_matched * self._alpha *
                tf.maximum(matched_dice, _MIN_DYNAMIC_WEIGHT) +
                (1.0 - slot_matched) * (1.0 - self._alpha) *
                tf.maximum(void_ratio, _MIN_DYNAMIC_WEIGHT))
            class_loss = base_loss.softmax_cross_entropy(
                class_target, class_logits) * slot_weight
            results[common.PQ_STYLE_LOSS_CLASS_TERM] = (
                base_loss.average_top_k_loss(class_loss) * self._pq.weight)

            # Mask Dice term, with each ground-truth mask's matched slot.
            matched_probs = tf.einsum("bpn,bnm->bpm", mask_probs, assignment)
            dice_loss = base_loss.mask_dice_loss(
                gt.pixel_mask_one_hot, matched_probs)
            mask_weight = mask_matched * tf.maximum(
                matched_class_prob, _MIN_DYNAMIC_WEIGHT)
            results[common.PQ_STYLE_LOSS_MASK_DICE_TERM] = (
                tf.reduce_sum(dice_loss * mask_weight, axis=1) *
                (self._pq.weight * self._alpha / num_slots))

        if self._mask_id is not None and self._mask_id.weight != 0.0:
            # Per pixel, the slot matched to its ground-truth mask (all zero
            # for void, crowd and unmatched pixels, which then drop out).
            slot_target = tf.einsum(
                "bpm,bnm->bpn", gt.pixel_mask_one_hot, assignment)
            pixel_loss = base_loss.softmax_cross_entropy(
                slot_target, mask_logits) * gt.pixel_non_void
            results[common.MASK_ID_CROSS_ENTROPY_LOSS] = (
                base_loss.average_top_k_loss(
                    pixel_loss, self._mask_id.top_k_percent) *
                self._mask_id.weight)
        return results

    def _instance_discrimination_loss(self, gt, features):
        num_pixels = int(features.shape[1]) * int(features.shape[2])
        features = tf.reshape(features, [-1, num_pixels,
                                         int(features.shape[3])])
        mask_feature = tf.einsum(
            "bpd,bpm->bmd", features, gt.pixel_mask_one_hot) / tf.maximum(
                gt.mask_area, 1.0)[:, :, None]
        mask_feature = tf.math.l2_normalize(mask_feature, axis=-1)
        logits = tf.einsum("bpd,bmd->bpm", features,
                           mask_feature) / self._temperature
        valid = gt.mask_valid[:, None, :]
        logits = valid * logits + (1.0 - valid) * _SOFTMAX_MASKING_CONSTANT
        pixel_loss = base_loss.softmax_cross_entropy(
            gt.pixel_mask_one_hot * valid, logits) * gt.pixel_thing
        return base_loss.average_top_k_loss(pixel_loss,
                                            self._instance.top_k_percent)

    def _semantic_loss(self, y_true, y_pred):
        logits = self._get(y_pred, common.PRED_SEMANTIC_LOGITS_KEY, 4)
        if logits.shape[3] != self._num_classes:
            raise ValueError(
                f"{common.PRED_SEMANTIC_LOGITS_KEY} must have the dataset's "
                f"{self._num_classes} classes (void included), got shape "
                f"{logits.shape}")
        for key in (common.GT_SEMANTIC_KEY, common.SEMANTIC_LOSS_WEIGHT_KEY):
            if key not in y_true:
                raise ValueError(f"ground truth lacks {key!r}, needed by the "
                                 f"semantic loss; got keys {sorted(y_true)}")
        size = tuple(logits.shape[1:3])
        labels = ground_truth.strided_downsample(
            tf.cast(y_true[common.GT_SEMANTIC_KEY], tf.int32), size,
            common.GT_SEMANTIC_KEY)
        weights = ground_truth.strided_downsample(
            tf.cast(y_true[common.SEMANTIC_LOSS_WEIGHT_KEY], tf.float32), size,
            common.SEMANTIC_LOSS_WEIGHT_KEY)
        weights *= tf.cast(tf.not_equal(labels, self._ignore_label),
                           tf.float32)
        pixel_loss = base_loss.softmax_cross_entropy(
            tf.one_hot(labels, self._num_classes, dtype=tf.float32),
            logits) * weights
        return base_loss.average_top_k_loss(pixel_loss,
                                            self._semantic.top_k_percent)

"""Per-element loss primitives shared by the MaX-DeepLab losses.

Each function computes one of deeplab2's base losses (model/loss/base_loss.py)
as a plain TensorFlow function on float32 tensors with static non-batch
shapes, so that it runs under tf.function and XLA. Reductions return one value
per example ([batch]); averaging over the (global) batch is left to the
caller, as tf.distribute requires.
"""

import numpy as np
import tensorflow as tf


def check_top_k_percent(top_k_percent: float, name: str = "top_k_percent"):
    """Raises ValueError unless 0 <= top_k_percent <= 1."""
    if not 0.0 <= top_k_percent <= 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1], got {top_k_percent}")


def num_top_k_elements(top_k_percent: float, num_elements: int) -> int:
    """Number of elements the top-k average keeps.

    Rounds half to even in float32, as tf.math.round does in deeplab2.
    """
    return int(np.round(np.float32(top_k_percent) * np.float32(num_elements)))


def average_top_k_loss(loss: tf.Tensor, top_k_percent: float = 1.0) -> tf.Tensor:
    """Averages the largest losses of each example over the non-zero ones.

    Elements whose (weighted) loss is exactly zero are not counted in the
    denominator: a zero weight therefore excludes an element (void pixel,
    unmatched mask) without changing the normalisation. An example with no
    non-zero loss gets 0 (and a zero gradient).

    Args:
      loss: float32 [batch, ...] weighted per-element losses (>= 0).
      top_k_percent: Fraction in [0, 1] of the elements of each example to
        keep, largest first (1.0 keeps all).

    Returns:
      float32 [batch].
    """
    check_top_k_percent(top_k_percent)
    num_elements = int(np.prod(loss.shape[1:]))
    loss = tf.reshape(loss, [-1, num_elements])
    if top_k_percent != 1.0:
        k = num_top_k_elements(top_k_percent, num_elements)
        loss = tf.math.top_k(loss, k=k, sorted=False).values
    num_non_zero = tf.reduce_sum(
        tf.cast(tf.not_equal(loss, 0.0), loss.dtype), axis=1)
    return tf.math.divide_no_nan(tf.reduce_sum(loss, axis=1), num_non_zero)


def softmax_cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Cross-entropy of soft or one-hot labels against logits, last axis.

    An all-zero label vector gives a zero loss (and no gradient), which is
    how void elements drop out of the losses below.

    Args:
      labels: float32 [..., channels], stop-gradient targets.
      logits: float32 [..., channels].

    Returns:
      float32 [...].
    """
    return tf.nn.softmax_cross_entropy_with_logits(
        labels=tf.stop_gradient(labels), logits=logits)


def mask_dice_loss(gt_masks: tf.Tensor, pred_probs: tf.Tensor) -> tf.Tensor:
    """Dice loss of each predicted mask against its ground-truth mask.

    deeplab2's `compute_mask_dice_loss` with smoothing 1: pixels outside every
    ground-truth mask (void and crowd) are removed from the prediction before
    the Dice ratio, so predicting them costs nothing.

    Args:
      gt_masks: float32 [batch, pixels, masks], one-hot per pixel (a pixel in
        no mask is all zero); masks must not overlap.
      pred_probs: float32 [batch, pixels, masks], predicted probabilities of
        the mask aligned with each ground-truth channel.

    Returns:
      float32 [batch, masks], 1 - (2|P∩G| + 1) / (|P| + |G| + 1).
    """
    labelled = tf.reduce_sum(gt_masks, axis=-1, keepdims=True)
    pred_probs = pred_probs * labelled
    numerator = 2.0 * tf.reduce_sum(pred_probs * gt_masks, axis=1) + 1.0
    denominator = (tf.reduce_sum(pred_probs, axis=1) +
                   tf.reduce_sum(gt_masks, axis=1) + 1.0)
    return 1.0 - numerator / denominator


def mask_similarity(gt_masks: tf.Tensor, pred_masks: tf.Tensor,
                    metric: str = "dice") -> tf.Tensor:
    """Similarity between every ground-truth mask and every predicted mask.

    Args:
      gt_masks: float32 [batch, pixels, num_gt], 0/1 masks.
      pred_masks: float32 [batch, pixels, num_pred], soft masks in [0, 1].
      metric: 'dice' (2|P∩G| / (|P| + |G|)) or 'intersection_over_prediction'
        (|P∩G| / |P|); denominators get + 1e-5 as in deeplab2.

    Returns:
      float32 [batch, num_gt, num_pred].
    """
    intersection = tf.einsum("bpi,bpj->bij", gt_masks, pred_masks)
    gt_area = tf.reduce_sum(gt_masks, axis=1)[:, :, None]
    pred_area = tf.reduce_sum(pred_masks, axis=1)[:, None, :]
    if metric == "dice":
        denominator = (gt_area + pred_area) / 2.0
    elif metric == "intersection_over_prediction":
        denominator = pred_area
    else:
        raise ValueError(
            f"mask similarity metric must be 'dice' or "
            f"'intersection_over_prediction', got {metric!r}")
    return intersection / (denominator + 1e-5)

"""Tests for max_deeplab_tf.losses.base_loss against hand-computed values."""

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.losses import base_loss


def test_average_top_k_loss_counts_only_non_zero_elements():
    loss = np.array([[0.0, 2.0, 4.0, 0.0],
                     [0.0, 0.0, 0.0, 0.0]], np.float32)
    out = base_loss.average_top_k_loss(tf.constant(loss)).numpy()
    np.testing.assert_allclose(out, [3.0, 0.0])


def test_average_top_k_loss_keeps_largest_fraction():
    loss = np.array([[1.0, 5.0, 3.0, 2.0, 4.0, 0.5, 0.0, 6.0]], np.float32)
    # 0.5 * 8 = 4 largest: 6, 5, 4, 3.
    out = base_loss.average_top_k_loss(tf.constant(loss), 0.5).numpy()
    np.testing.assert_allclose(out, [4.5])
    # 0.3125 * 8 = 2.5 rounds half to even -> 2 elements: 6, 5.
    out = base_loss.average_top_k_loss(tf.constant(loss), 0.3125).numpy()
    np.testing.assert_allclose(out, [5.5])
    with pytest.raises(ValueError, match="top_k_percent"):
        base_loss.average_top_k_loss(tf.constant(loss), 1.5)


def test_average_top_k_loss_zero_gradient_when_all_zero():
    x = tf.zeros([2, 3])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reduce_sum(base_loss.average_top_k_loss(x * 2.0))
    grad = tape.gradient(y, x).numpy()
    assert np.all(np.isfinite(grad)) and np.all(grad == 0)


def test_softmax_cross_entropy_hand_values():
    logits = np.array([[0.0, np.log(3.0)], [1.0, 1.0]], np.float32)
    labels = np.array([[1.0, 0.0], [0.0, 0.0]], np.float32)
    out = base_loss.softmax_cross_entropy(labels, logits).numpy()
    # -log(1 / (1 + 3)) = log 4; an all-zero label gives 0.
    np.testing.assert_allclose(out, [np.log(4.0), 0.0], rtol=1e-6)


def test_mask_dice_loss_hand_values():
    # 3 pixels; pixel 2 is in no mask (void), so its prediction is ignored.
    gt = np.array([[[1, 0], [0, 1], [0, 0]]], np.float32)
    pred = np.array([[[0.5, 0.25], [0.25, 0.5], [0.9, 0.9]]], np.float32)
    out = base_loss.mask_dice_loss(gt, pred).numpy()
    # mask 0: 1 - (2 * 0.5 + 1) / (0.75 + 1 + 1) = 1 - 2 / 2.75
    np.testing.assert_allclose(out, [[1 - 2 / 2.75, 1 - 2 / 2.75]],
                               rtol=1e-6)


def test_mask_similarity_hand_values():
    gt = np.array([[[1], [1], [0]]], np.float32)
    pred = np.array([[[0.5, 1.0], [0.5, 0.0], [0.0, 1.0]]], np.float32)
    dice = base_loss.mask_similarity(gt, pred, "dice").numpy()
    # slot 0: 2 * 1 / (2 + 1); slot 1: 2 * 1 / (2 + 2).
    np.testing.assert_allclose(dice, [[[2 / (3 + 1e-5 * 2),
                                        2 / (4 + 1e-5 * 2)]]], rtol=1e-6)
    iop = base_loss.mask_similarity(gt, pred,
                                    "intersection_over_prediction").numpy()
    np.testing.assert_allclose(iop, [[[1 / (1 + 1e-5), 1 / (2 + 1e-5)]]],
                               rtol=1e-6)
    with pytest.raises(ValueError, match="metric"):
        base_loss.mask_similarity(gt, pred, "iou")

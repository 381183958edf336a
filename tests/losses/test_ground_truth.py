"""Tests for max_deeplab_tf.losses.ground_truth."""

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.losses import ground_truth


def test_transformer_class_ids_coco_is_dataset_id_minus_one():
    descriptor = dataset_info.get_dataset_descriptor("coco_panoptic")
    ids = ground_truth.transformer_class_ids(descriptor)
    # COCO: void 0, things 1..80, stuff 81..133 -> transformer class k is
    # dataset class k + 1, and there are 133 of them (+ void logit).
    assert ids == tuple(range(1, 134))


def test_transformer_class_ids_keeps_thing_order_then_sorted_stuff():
    descriptor = dataset_info.DatasetDescriptor(
        name="t", num_classes=6, ignore_label=0, label_divisor=256,
        thing_class_ids=(4, 1))
    assert ground_truth.transformer_class_ids(descriptor) == (4, 1, 2, 3, 5)


def test_strided_downsample_keeps_every_stride_pixel():
    x = np.arange(2 * 9 * 9).reshape(2, 9, 9)
    out = ground_truth.strided_downsample(tf.constant(x), (3, 3)).numpy()
    # (9 - 1) / (3 - 1) = 4: rows and columns 0, 4, 8.
    np.testing.assert_array_equal(out, x[:, [0, 4, 8]][:, :, [0, 4, 8]])
    same = ground_truth.strided_downsample(tf.constant(x), (9, 9)).numpy()
    np.testing.assert_array_equal(same, x)


@pytest.mark.parametrize("shape,target", [((8, 8), (3, 3)), ((9, 5), (3, 3))])
def test_strided_downsample_rejects_non_integer_or_unequal_strides(
        shape, target):
    with pytest.raises(ValueError, match="labels"):
        ground_truth.strided_downsample(tf.zeros((1,) + shape), target)


def test_preprocess_ground_truth_hand_case():
    # Dataset: void 0, things (3, 1), stuff (2, 4); transformer classes are
    # [3, 1, 2, 4] (+ void). Full-resolution 3x5 labels, output 2x3
    # (stride 2 keeps rows 0, 2 and columns 0, 2, 4).
    semantic = np.array([[[3, 9, 3, 9, 2],
                          [9, 9, 9, 9, 9],
                          [1, 9, 0, 9, 3]]], np.int32)
    thing_id = np.array([[[0, 9, 0, 9, -1],
                          [9, 9, 9, 9, 9],
                          [1, 9, -1, 9, -1]]], np.int32)
    # Thing 2 exists at full resolution only (lost by downsampling); the
    # class-3 pixel at (2, 4) is crowd (thing id -1).
    thing_id[0, 1, 1] = 2
    thing_id_class = np.array([[3, 1, 3, -1]], np.int32)
    y_true = {common.GT_SEMANTIC_KEY: semantic,
              common.GT_THING_ID_MASK_KEY: thing_id,
              common.GT_THING_ID_CLASS_KEY: thing_id_class}
    gt = ground_truth.preprocess_ground_truth(
        y_true, (2, 3), thing_class_ids=(3, 1), stuff_class_ids=(2, 4),
        ignore_label=0)
    # Output pixels (row-major): [3/t0, 3/t0, 2, 1/t1, void, 3/crowd].
    np.testing.assert_array_equal(gt.pixel_non_void.numpy(),
                                  [[1, 1, 1, 1, 0, 1]])
    np.testing.assert_array_equal(gt.pixel_thing.numpy(),
                                  [[1, 1, 0, 1, 0, 0]])
    # Masks: thing ids 0..3, then stuff 2, stuff 4.
    expected_one_hot = np.zeros((1, 6, 6), np.float32)
    expected_one_hot[0, 0, 0] = expected_one_hot[0, 1, 0] = 1  # thing 0
    expected_one_hot[0, 3, 1] = 1                              # thing 1
    expected_one_hot[0, 2, 4] = 1                              # stuff 2
    np.testing.assert_array_equal(gt.pixel_mask_one_hot.numpy(),
                                  expected_one_hot)
    np.testing.assert_array_equal(gt.mask_area.numpy(), [[2, 1, 0, 0, 1, 0]])
    np.testing.assert_array_equal(gt.mask_valid.numpy(), [[1, 1, 0, 0, 1, 0]])
    expected_class = np.zeros((1, 6, 4), np.float32)
    expected_class[0, 0, 0] = 1  # thing 0 is class 3 -> transformer 0
    expected_class[0, 1, 1] = 1  # thing 1 is class 1 -> transformer 1
    expected_class[0, 4, 2] = 1  # stuff 2 -> transformer 2
    np.testing.assert_array_equal(gt.mask_class_one_hot.numpy(),
                                  expected_class)


def test_preprocess_ground_truth_missing_key_is_named():
    with pytest.raises(ValueError, match=common.GT_THING_ID_CLASS_KEY):
        ground_truth.preprocess_ground_truth(
            {common.GT_SEMANTIC_KEY: np.zeros((1, 3, 3), np.int32),
             common.GT_THING_ID_MASK_KEY: np.zeros((1, 3, 3), np.int32)},
            (3, 3), (1,), (2,), 0)

"""Tests for max_deeplab_tf.layers.axial_blocks."""

import numpy as np
import pytest

from max_deeplab_tf.layers import axial_blocks
from tests.layers import helpers


def test_blocks_start_as_identity_of_the_activated_input():
    # The last BN of each branch starts with gamma 0 (Goyal et al.): with
    # moving mean 0 and beta 0 the branch outputs 0, so the block returns
    # relu(input) when no shortcut projection is needed.
    rng = np.random.RandomState(0)
    x = rng.normal(size=(2, 5, 5, 8)).astype(np.float32)
    for filters, attention in (([8, 8], None), ([4, 4, 8], None),
                               ([4, 4, 8], "axial")):
        block = axial_blocks.AxialBlock(
            filters, attention_type=attention,
            axial_layer_config={"num_heads": 2}, name="block1")
        out = block(x, training=False).numpy()
        np.testing.assert_allclose(out, np.maximum(x, 0), atol=1e-6)


def test_basic_block_matches_reference():
    rng = np.random.RandomState(1)
    x = rng.normal(size=(1, 9, 9, 3)).astype(np.float32)
    block = axial_blocks.AxialBlock([4, 4], strides=2, name="block1")
    block(x)
    helpers.randomize_weights(block)
    out = block(x, training=False).numpy()
    xa = np.maximum(x.astype(np.float64), 0)
    y = helpers.conv2d_reference(xa, block._conv1_bn_act._conv.kernel.numpy(), 2, 1,
                         1, 1)
    y = np.maximum(helpers.bn_inference(y, block._conv1_bn_act._batch_norm), 0)
    y = helpers.conv2d_reference(y, block._conv2_bn._conv.kernel.numpy(), 1, 1, 1, 1)
    y = helpers.bn_inference(y, block._conv2_bn._batch_norm)
    shortcut = helpers.conv2d_reference(xa, block._shortcut._conv.kernel.numpy(), 2, 1,
                                0, 0)
    shortcut = helpers.bn_inference(shortcut, block._shortcut._batch_norm)
    assert out.shape == (1, 5, 5, 4)
    np.testing.assert_allclose(out, y + shortcut, rtol=1e-4, atol=1e-4)


def test_strided_block_without_projection_subsamples_the_shortcut():
    x = np.random.RandomState(2).normal(size=(1, 5, 5, 8)).astype(np.float32)
    block = axial_blocks.AxialBlock([2, 2, 8], strides=2, name="block1")
    out = block(x, training=False).numpy()
    assert block._shortcut is None
    np.testing.assert_allclose(out, np.maximum(x, 0)[:, ::2, ::2], atol=1e-6)


def test_drop_path_drops_only_the_residual_branch():
    x = np.random.RandomState(3).normal(size=(64, 3, 3, 4)).astype(np.float32)
    block = axial_blocks.AxialBlock([4, 4], drop_path_keep_prob=0.5,
                                    name="block1")
    block(x)
    helpers.randomize_weights(block)
    # Batch statistics depend only on the input, so the branch equals
    # training-mode output minus the shortcut when kept.
    out = block(x, training=True).numpy()
    shortcut = np.maximum(x, 0)
    branch = out - shortcut
    dropped = np.all(np.abs(branch.reshape(64, -1)) < 1e-6, axis=1)
    assert 0 < dropped.sum() < 64


def test_invalid_configurations():
    with pytest.raises(ValueError, match="2 or 3"):
        axial_blocks.AxialBlock([4])
    with pytest.raises(ValueError, match="attention"):
        axial_blocks.AxialBlock([4, 4], attention_type="axial")
    with pytest.raises(ValueError, match="attention_type"):
        axial_blocks.AxialBlock([4, 4, 8], attention_type="global")

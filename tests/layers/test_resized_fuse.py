"""Tests for max_deeplab_tf.layers.resized_fuse and layers.resize."""

import numpy as np
import pytest

from max_deeplab_tf.layers import resize
from max_deeplab_tf.layers import resized_fuse
from tests.layers import helpers


@pytest.mark.parametrize("channels", [3, 40])
def test_resizes_match_textbook_align_corners(channels):
    x = np.random.RandomState(0).normal(size=(2, 5, 3, channels)).astype(
        np.float32)
    expected = helpers.bilinear_align_corners(x.astype(np.float64), 9, 5)
    np.testing.assert_allclose(resize.resize_bilinear(x, (9, 5)).numpy(),
                               expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(resize.resize_align_corners(x, (9, 5)).numpy(),
                               expected, rtol=1e-5, atol=1e-5)
    assert resize.resize_bilinear(x, (5, 3)) is x


def test_input_modes_follow_deeplab2():
    assert resized_fuse.input_mode((1, 9, 9, 32), (17, 17), 32) == "resize"
    assert resized_fuse.input_mode((1, 33, 33, 16), (17, 17), 32) == "strided"
    assert resized_fuse.input_mode((1, 9, 9, 64), (17, 17), 32) == "project"


def test_fuse_sums_the_three_paths():
    rng = np.random.RandomState(1)
    low = rng.normal(size=(1, 9, 9, 16)).astype(np.float32)     # strided
    same = rng.normal(size=(1, 5, 5, 8)).astype(np.float32)     # resize
    high = rng.normal(size=(1, 3, 3, 12)).astype(np.float32)    # project
    inputs = [low, same, high]
    modes = [resized_fuse.input_mode(x.shape, (5, 5), 8) for x in inputs]
    assert modes == ["strided", "resize", "project"]
    layer = resized_fuse.ResizedFuse(8, modes, name="decoder_stage1_resized_fuse")
    layer(inputs, target_size=(5, 5))
    helpers.randomize_weights(layer)
    out = layer(inputs, target_size=(5, 5), training=False).numpy()
    strided = layer._strided_conv_bn1
    a = helpers.conv2d_reference(np.maximum(low, 0).astype(np.float64),
                                 strided._conv.kernel.numpy(), 2, 1, 0, 0)
    a = helpers.bn_inference(a, strided._batch_norm)
    projected = layer._resized_conv_bn3
    c = np.maximum(high, 0).astype(np.float64) @ projected._conv.kernel.numpy()[0, 0]
    c = helpers.bn_inference(c, projected._batch_norm)
    expected = a + same + helpers.bilinear_align_corners(c, 5, 5)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="fusion mode"):
        layer([low, same, high], target_size=(9, 9))

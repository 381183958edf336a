"""Tests for max_deeplab_tf.layers.convolutions against brute-force numpy."""

import numpy as np
import pytest

from max_deeplab_tf.layers import convolutions
from tests.layers import helpers


def test_padding_size():
    assert convolutions.padding_size(3, 1) == (1, 1)
    assert convolutions.padding_size(4, 1) == (1, 2)
    assert convolutions.padding_size(3, 2) == (2, 2)
    assert convolutions.padding_size(1, 1) == (0, 0)


@pytest.mark.parametrize("stride,rate,size", [(2, 1, 9), (1, 2, 7), (2, 1, 8)])
def test_conv2d_same_matches_symmetric_padding(stride, rate, size):
    rng = np.random.RandomState(0)
    x = rng.normal(size=(2, size, size, 3)).astype(np.float32)
    layer = convolutions.Conv2DSame(4, 3, strides=stride, atrous_rate=rate,
                                    use_bias=False, use_bn=True,
                                    activation="relu", name="c")
    out = layer(x, training=False).numpy()
    helpers.randomize_weights(layer)
    out = layer(x, training=False).numpy()
    kernel = layer._conv.kernel.numpy().astype(np.float64)
    # deeplab2: strided convs pad (k_eff - 1) // 2 first, the rest after;
    # stride 1 is 'same', symmetric for odd kernels.
    pad = ((3 - 1) * rate) // 2
    conv = helpers.conv2d_reference(x.astype(np.float64), kernel, stride, rate, pad,
                            (3 - 1) * rate - pad)
    expected = np.maximum(helpers.bn_inference(conv, layer._batch_norm), 0)
    assert out.shape == expected.shape == (2, -(-size // stride),
                                           -(-size // stride), 4)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_strided_conv_keeps_corner_alignment_for_k_times_stride_plus_one():
    # A 1-hot at the bottom-right corner of a 9x9 input reaches the
    # bottom-right output of a 3x3 stride-2 conv through the kernel centre.
    x = np.zeros((1, 9, 9, 1), np.float32)
    x[0, 8, 8, 0] = 1.0
    layer = convolutions.Conv2DSame(1, 3, strides=2, use_bias=False, name="c")
    layer(x)
    kernel = np.zeros((3, 3, 1, 1), np.float32)
    kernel[1, 1] = 1.0
    layer._conv.kernel.assign(kernel)
    out = layer(x).numpy()[0, :, :, 0]
    assert out.shape == (5, 5) and out[4, 4] == 1.0 and out.sum() == 1.0


def test_separable_conv_matches_depthwise_then_pointwise():
    rng = np.random.RandomState(1)
    x = rng.normal(size=(1, 6, 6, 3)).astype(np.float32)
    layer = convolutions.SeparableConv2DSame(5, 5, use_bias=False, use_bn=True,
                                             activation="relu", name="s")
    layer(x)
    helpers.randomize_weights(layer)
    out = layer(x, training=False).numpy()
    depthwise = layer._depthwise._depthwise_conv.kernel.numpy()
    assert depthwise.shape == (5, 5, 3, 1)
    xd = x.astype(np.float64)
    channels = [helpers.conv2d_reference(xd[..., c:c + 1], depthwise[:, :, c:c + 1],
                                 1, 1, 2, 2) for c in range(3)]
    y = np.concatenate(channels, axis=-1)
    y = np.maximum(helpers.bn_inference(y, layer._depthwise._batch_norm), 0)
    pointwise = layer._pointwise._conv.kernel.numpy()[0, 0]
    y = np.maximum(helpers.bn_inference(
        y @ pointwise, layer._pointwise._batch_norm), 0)
    np.testing.assert_allclose(out, y, rtol=1e-4, atol=1e-4)


def test_conv1d_bn_is_matmul_then_batch_norm():
    rng = np.random.RandomState(2)
    x = rng.normal(size=(2, 7, 6)).astype(np.float32)
    layer = convolutions.Conv1DBN(4, use_bias=False, use_bn=True,
                                  activation="relu", name="m")
    layer(x)
    helpers.randomize_weights(layer)
    kernel = layer._conv.kernel.numpy()
    assert kernel.shape == (1, 6, 4)
    expected = np.maximum(helpers.bn_inference(
        x.astype(np.float64) @ kernel[0], layer._batch_norm), 0)
    np.testing.assert_allclose(layer(x, training=False).numpy(), expected,
                               rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="use_bias and use_bn"):
        convolutions.Conv1DBN(4, use_bias=True, use_bn=True)


def test_stacked_conv_attribute_names_follow_deeplab2():
    layer = convolutions.StackedConv2DSame(
        2, "depthwise_separable_conv", 8, 5, use_bias=False, use_bn=True,
        activation="relu", name="conv_block")
    assert isinstance(layer._conv1_bn_act, convolutions.SeparableConv2DSame)
    assert isinstance(layer._conv2_bn_act, convolutions.SeparableConv2DSame)
    plain = convolutions.StackedConv2DSame(1, "standard_conv", 8, 3,
                                           use_bias=True, name="p")
    assert isinstance(plain._conv1, convolutions.Conv2DSame)
    with pytest.raises(ValueError, match="conv_type"):
        convolutions.StackedConv2DSame(1, "dilated", 8, 3)
    x = np.ones((1, 5, 5, 3), np.float32)
    assert layer(x).shape == (1, 5, 5, 8)


@pytest.mark.parametrize("height,width,rate,use_bias", [
    (9, 9, 12, False),   # the ASPP at a 129x129 crop: rate past both sides
    (9, 9, 9, True),     # rate equal to the size: still only padding
    (5, 11, 6, True),    # past the height only: a 1x3 atrous convolution
    (9, 9, 6, False),    # within reach: the full kernel
])
def test_atrous_conv_past_the_feature_map_matches_the_full_kernel(
        height, width, rate, use_bias):
    # Truth: the brute-force numpy convolution with the whole 3x3 kernel
    # (its outer taps read zero padding), values and kernel gradients.
    import tensorflow as tf
    rng = np.random.RandomState(1)
    x = rng.normal(size=(2, height, width, 3)).astype(np.float32)
    layer = convolutions.Conv2DSame(4, 3, atrous_rate=rate,
                                    use_bias=use_bias, name="c")
    layer(x)
    helpers.randomize_weights(layer)
    kernel = layer._conv.kernel.numpy().astype(np.float64)
    pad = rate
    expected = helpers.conv2d_reference(x.astype(np.float64), kernel, 1,
                                        rate, pad, pad)
    if use_bias:
        expected = expected + layer._conv.bias.numpy()
    with tf.GradientTape() as tape:
        out = layer(x)
        loss = tf.reduce_sum(out * out)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    grad = tape.gradient(loss, layer._conv.kernel).numpy()
    # d loss / d kernel[i, j, c, o] = sum 2 out * x shifted by the tap.
    padded = np.pad(x.astype(np.float64),
                    [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    expected_grad = np.zeros_like(kernel)
    for i in range(3):
        for j in range(3):
            patch = padded[:, i * rate:i * rate + height,
                           j * rate:j * rate + width]
            expected_grad[i, j] = np.einsum("bhwc,bhwo->co", patch,
                                            2 * expected)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-4)
    # Which taps the layer computes with: only those that meet the input.
    reach = layer._taps_in_reach(tf.constant(x))
    assert reach == (1 if rate >= height else 3, 1 if rate >= width else 3)
    if rate < height:
        assert np.abs(expected_grad[0]).max() > 0

"""Tests for max_deeplab_tf.layers.convolutions against brute-force numpy."""

import os

import numpy as np
import pytest

from max_deeplab_tf.layers import convolutions
from tests.layers import helpers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


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


def _output_and_gradients(layer, kernel, x, jit_compile):
    """The layer's output on x and the gradients of sum(output^2) with
    respect to kernel and x, from a tf.function (XLA if jit_compile)."""
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile)
    def forward_backward(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = layer(inputs)
            loss = tf.reduce_sum(out * out)
        return (out,) + tuple(tape.gradient(loss, [kernel, inputs]))

    return forward_backward(tf.constant(x))


@pytest.mark.parametrize("height,width,rate,use_bias,jit_compile,native", [
    (9, 9, 12, False, False, None),  # the ASPP at a 129 crop: past both sides
    (9, 9, 9, True, False, None),    # rate equal to the size: only padding
    (5, 11, 6, True, False, None),   # past the height only: 1x3 atrous
    (5, 11, 6, True, False, False),  # ... as one matmul (no dilated Conv2D)
    (5, 11, 6, True, True, None),
    (9, 9, 6, False, False, None),   # within reach: the full kernel
    (9, 9, 6, False, False, False),  # ... as one matmul
    (9, 9, 6, True, True, None),
    (13, 13, 2, True, False, False),  # tiles of 7: space-to-batch
])
def test_atrous_conv_past_the_feature_map_matches_the_full_kernel(
        height, width, rate, use_bias, jit_compile, native, monkeypatch):
    # Truth: the brute-force numpy convolution with the whole 3x3 kernel
    # (its outer taps read zero padding), values, kernel and input
    # gradients, in a tf.function with and without XLA. native=False
    # takes the path of a TensorFlow without oneDNN whatever this machine
    # has (None: as the machine decides).
    import tensorflow as tf
    if native is not None:
        monkeypatch.setattr(convolutions, "native_dilation_differentiable",
                            lambda dtype: native)
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

    out, grad, input_grad = _output_and_gradients(
        layer, layer._conv.kernel, x, jit_compile)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    # d loss / d kernel[i, j, c, o] = sum 2 out * x shifted by the tap;
    # d loss / d x scatters 2 out through each tap back onto the input.
    padded = np.pad(x.astype(np.float64),
                    [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    expected_grad = np.zeros_like(kernel)
    expected_input_grad = np.zeros_like(padded)
    for i in range(3):
        for j in range(3):
            window = (slice(None), slice(i * rate, i * rate + height),
                      slice(j * rate, j * rate + width))
            expected_grad[i, j] = np.einsum("bhwc,bhwo->co", padded[window],
                                            2 * expected)
            expected_input_grad[window] += np.einsum(
                "bhwo,co->bhwc", 2 * expected, kernel[i, j])
    expected_input_grad = expected_input_grad[:, pad:pad + height,
                                              pad:pad + width]
    np.testing.assert_allclose(grad.numpy(), expected_grad, rtol=1e-4,
                               atol=1e-4)
    np.testing.assert_allclose(input_grad.numpy(), expected_input_grad,
                               rtol=1e-4, atol=1e-4)
    # Which taps the layer computes with: only those that meet the input.
    reach = layer._taps_in_reach(tf.constant(x))
    assert reach == (1 if rate >= height else 3, 1 if rate >= width else 3)
    if rate < height:
        assert np.abs(expected_grad[0]).max() > 0


def _dilated_conv_graph_ops(jit_compile):
    """Op types of a traced forward and backward pass of an atrous layer
    whose rate is within the feature map's reach."""
    import tensorflow as tf
    layer = convolutions.Conv2DSame(4, 3, atrous_rate=2, use_bias=False,
                                    name="c")
    x = tf.zeros([1, 7, 7, 3])
    layer(x)

    @tf.function(jit_compile=jit_compile)
    def forward_backward(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            loss = tf.reduce_sum(layer(inputs))
        return tape.gradient(loss, [layer._conv.kernel, inputs])

    graph = forward_backward.get_concrete_function(x).graph
    ops = [op for op in graph.get_operations()]
    for function in graph._functions.values():  # the gradient's graph
        ops += list(function.graph.get_operations())
    return ops


@pytest.mark.parametrize("jit_compile", [False, True])
def test_dilated_conv_is_one_conv2d_op_where_differentiable(jit_compile):
    # Under XLA, and without it where oneDNN is on: one Conv2D op with
    # dilations (and its two gradient ops), no space-to-batch rewrite.
    # TensorFlow turns oneDNN on by default only on CPUs with AVX-512 VNNI
    # or BF16, AVX-VNNI or AMX; test_dilated_conv_paths_with_and_without_
    # onednn runs both settings on any machine.
    from tensorflow.python.util import _pywrap_util_port
    if not jit_compile and not _pywrap_util_port.IsMklEnabled():
        pytest.skip("oneDNN is off in this process")
    ops = _dilated_conv_graph_ops(jit_compile)
    types = [op.type for op in ops]
    assert "SpaceToBatchND" not in types and "BatchToSpaceND" not in types
    convs = [op for op in ops if op.type == "Conv2D"]
    assert len(convs) == 1
    assert list(convs[0].get_attr("dilations")) == [1, 2, 2, 1]
    assert "Conv2DBackpropInput" in types
    assert "Conv2DBackpropFilter" in types


def _taps_reference(x, kernel, dilations):
    """Brute force of a stride-1 'same' dilated convolution in float64:
    the output, and the gradients of sum(output^2) with respect to the
    kernel and the input, tap by tap."""
    kernel_height, kernel_width = kernel.shape[:2]
    rate_h, rate_w = dilations
    pad_h, pad_w = (kernel_height - 1) * rate_h, (kernel_width - 1) * rate_w
    _, height, width, _ = x.shape
    padded = np.pad(x.astype(np.float64),
                    [(0, 0), (pad_h // 2, pad_h - pad_h // 2),
                     (pad_w // 2, pad_w - pad_w // 2), (0, 0)])
    windows = {(i, j): (slice(None), slice(i * rate_h, i * rate_h + height),
                        slice(j * rate_w, j * rate_w + width))
               for i in range(kernel_height) for j in range(kernel_width)}
    out = sum(np.einsum("bhwc,co->bhwo", padded[w], kernel[tap])
              for tap, w in windows.items())
    kernel_grad = np.zeros(kernel.shape)
    padded_grad = np.zeros_like(padded)
    for (i, j), w in windows.items():
        kernel_grad[i, j] = np.einsum("bhwc,bhwo->co", padded[w], 2 * out)
        padded_grad[w] += np.einsum("bhwo,co->bhwc", 2 * out, kernel[i, j])
    input_grad = padded_grad[:, pad_h // 2:pad_h // 2 + height,
                             pad_w // 2:pad_w // 2 + width]
    return out, kernel_grad, input_grad


@pytest.mark.parametrize("shape,kernel_hw,dilations", [
    ((2, 9, 9, 5), (3, 3), (6, 6)),    # the ASPP's rate 6 at a 129 crop
    ((1, 7, 11, 3), (3, 3), (2, 3)),   # different rates per axis
    ((2, 5, 11, 4), (1, 3), (1, 6)),   # one row of taps (rate past height)
    ((1, 6, 8, 2), (5, 3), (2, 1)),    # even sizes, a taller kernel
])
def test_dilated_conv_as_matmul_matches_brute_force(shape, kernel_hw,
                                                    dilations):
    import tensorflow as tf
    rng = np.random.RandomState(3)
    x = rng.normal(size=shape).astype(np.float32)
    kernel = rng.normal(size=kernel_hw + (shape[3], 4)).astype(np.float32)
    expected = _taps_reference(x, kernel.astype(np.float64), dilations)
    kernel_var = tf.Variable(kernel)

    @tf.function
    def forward_backward(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = convolutions.dilated_conv2d_as_matmul(
                inputs, kernel_var, dilations)
            loss = tf.reduce_sum(out * out)
        return (out,) + tuple(tape.gradient(loss, [kernel_var, inputs]))

    for got, want in zip(forward_backward(tf.constant(x)), expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)
    # TensorFlow's own dilated convolution (its forward runs everywhere).
    np.testing.assert_allclose(
        convolutions.dilated_conv2d_as_matmul(x, kernel, dilations).numpy(),
        tf.nn.conv2d(x, kernel, 1, "SAME", dilations=dilations).numpy(),
        rtol=1e-5, atol=1e-5)
    # Unknown height and width (traced with a None shape) give the same.
    dynamic = tf.function(
        lambda inputs: convolutions.dilated_conv2d_as_matmul(
            inputs, kernel, dilations),
        input_signature=[tf.TensorSpec([None, None, None, shape[3]])])
    np.testing.assert_allclose(dynamic(x).numpy(), expected[0], rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("size,rate,expected", [
    (9, 6, True),     # tiles of 2: the 129 crop's ASPP rate 6
    (30, 6, True),    # tiles of 5
    (31, 6, False),   # tiles of 6
    (41, 12, True),   # the 641 crop's rate 12: tiles of 4
    (41, 6, False),   # the 641 crop's rate 6: tiles of 7
])
def test_space_to_batch_tile_size_picks_the_matmul(size, rate, expected):
    import tensorflow as tf
    x = tf.zeros([1, size, size, 1])
    assert convolutions.space_to_batch_tiles_are_small(
        x, (rate, rate)) is expected
    # An axis without dilation does not count.
    assert convolutions.space_to_batch_tiles_are_small(
        tf.zeros([1, 100, size, 1]), (1, rate)) is expected
    # A size unknown when traced cannot be checked: space-to-batch stays.
    assert not convolutions.space_to_batch_tiles_are_small(
        _unknown_size_input(), (rate, rate))


def _unknown_size_input():
    """A symbolic [1, None, None, 1] tensor (traced, unknown height)."""
    import tensorflow as tf
    holder = {}

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, 1])])
    def trace(t):
        holder["x"] = t
        return t

    trace.get_concrete_function()
    return holder["x"]


def test_dilated_conv_paths_with_and_without_onednn(tmp_path):
    # TensorFlow's own CPU kernels cannot differentiate a dilated Conv2D
    # (oneDNN is off by default on CPUs without AVX-512 VNNI or BF16,
    # AVX-VNNI or AMX, e.g. an AMD EPYC with AVX2): without oneDNN the
    # layer is one matmul where space-to-batch's tiles are small (7x7 at
    # rate 2: tiles of 4) and Keras' space-to-batch otherwise (13x13:
    # tiles of 7); with oneDNN it is one dilated Conv2D. The gradients
    # agree across all of them.
    import subprocess
    import sys
    script = tmp_path / "probe.py"
    script.write_text(
        "import sys, numpy as np, tensorflow as tf\n"
        "from max_deeplab_tf.layers import convolutions\n"
        "size = int(sys.argv[2])\n"
        "layer = convolutions.Conv2DSame(4, 3, atrous_rate=2, name='c')\n"
        "x = tf.constant(np.random.RandomState(0).normal(\n"
        "    size=(1, size, size, 3)).astype(np.float32))\n"
        "layer(x)\n"
        "layer._conv.kernel.assign(np.random.RandomState(1).normal(\n"
        "    size=(3, 3, 3, 4)).astype(np.float32))\n"
        "@tf.function\n"
        "def grads(inputs):\n"
        "    with tf.GradientTape() as tape:\n"
        "        tape.watch(inputs)\n"
        "        loss = tf.reduce_sum(layer(inputs) ** 2)\n"
        "    return tape.gradient(loss, [layer._conv.kernel, inputs])\n"
        "ops = grads.get_concrete_function(x).graph.get_operations()\n"
        "dilated = [op for op in ops if op.type == 'Conv2D'\n"
        "           and list(op.get_attr('dilations')) == [1, 2, 2, 1]]\n"
        "g = grads(x)\n"
        "np.savez(sys.argv[1], kernel=g[0].numpy(), inputs=g[1].numpy(),\n"
        "         space_to_batch=any(op.type == 'SpaceToBatchND'\n"
        "                            for op in ops),\n"
        "         matmul=any(op.type == 'MatMul' for op in ops),\n"
        "         dilated_conv=bool(dilated))\n")
    results = {}
    for size in (7, 13):
        for onednn in ("0", "1"):
            env = dict(os.environ, TF_ENABLE_ONEDNN_OPTS=onednn,
                       TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
            output = tmp_path / f"onednn{onednn}_{size}.npz"
            run = subprocess.run(
                [sys.executable, str(script), str(output), str(size)],
                env=env, capture_output=True, text=True, cwd=REPO_ROOT,
                timeout=300)
            assert run.returncode == 0, run.stderr[-2000:]
            results[onednn, size] = dict(np.load(output))
    for size in (7, 13):
        with_onednn = results["1", size]
        assert bool(with_onednn["dilated_conv"])
        assert not bool(with_onednn["space_to_batch"])
    small, large = results["0", 7], results["0", 13]
    assert bool(small["matmul"]) and not bool(small["space_to_batch"])
    assert not bool(small["dilated_conv"])
    assert bool(large["space_to_batch"]) and not bool(large["matmul"])
    for size in (7, 13):
        for key in ("kernel", "inputs"):
            np.testing.assert_allclose(results["0", size][key],
                                       results["1", size][key],
                                       rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kernel_size,rate,use_bias,jit_compile", [
    (5, 1, False, True),   # the heads' depthwise convolutions, under XLA
    (3, 2, True, True),    # dilated, with a bias
    (4, 1, False, True),   # even: one more zero after than before
    (2, 3, False, True),   # even and dilated: padding 1 before, 2 after
    (3, 4, False, True),   # taps past the map
    (5, 1, True, False),   # the graph path (Keras' DepthwiseConv2D)
])
def test_depthwise_conv_matches_brute_force_with_gradients(
        kernel_size, rate, use_bias, jit_compile):
    # Truth: a per-channel numpy loop over the taps of the zero-padded
    # input (padded as TensorFlow's 'same': the odd zero after); the kernel
    # and input gradients of sum(out^2) likewise.
    import tensorflow as tf
    rng = np.random.RandomState(3)
    height, width, channels = 7, 6, 4
    x = rng.normal(size=(2, height, width, channels)).astype(np.float32)
    layer = convolutions.DepthwiseConv2DSame(
        kernel_size, atrous_rate=rate, use_bias=use_bias, name="d")
    layer(x)
    helpers.randomize_weights(layer)
    kernel = layer._depthwise_conv.kernel.numpy().astype(np.float64)
    assert kernel.shape == (kernel_size, kernel_size, channels, 1)

    out, kernel_grad, input_grad = _output_and_gradients(
        layer, layer._depthwise_conv.kernel, x, jit_compile)
    total = (kernel_size - 1) * rate
    pad = total // 2
    padded = np.pad(x.astype(np.float64),
                    [(0, 0), (pad, total - pad), (pad, total - pad), (0, 0)])
    expected = np.zeros((2, height, width, channels))
    for i in range(kernel_size):
        for j in range(kernel_size):
            expected += padded[:, i * rate:i * rate + height,
                               j * rate:j * rate + width] * kernel[i, j, :, 0]
    if use_bias:
        expected += layer._depthwise_conv.bias.numpy()
    expected_kernel_grad = np.zeros_like(kernel)
    expected_input_grad = np.zeros_like(padded)
    for i in range(kernel_size):
        for j in range(kernel_size):
            window = (slice(None), slice(i * rate, i * rate + height),
                      slice(j * rate, j * rate + width))
            expected_kernel_grad[i, j, :, 0] = np.einsum(
                "bhwc,bhwc->c", padded[window], 2 * expected)
            expected_input_grad[window] += 2 * expected * kernel[i, j, :, 0]
    expected_input_grad = expected_input_grad[:, pad:pad + height,
                                              pad:pad + width]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(kernel_grad.numpy(), expected_kernel_grad,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(input_grad.numpy(), expected_input_grad,
                               rtol=1e-4, atol=1e-4)
    assert out.shape == (2, height, width, channels)


@pytest.mark.parametrize("dtype,tolerance", [
    ("float32", 1e-5), ("float16", 2e-2)])
def test_depthwise_shifted_sum_traced_with_unknown_sizes(dtype, tolerance,
                                                         monkeypatch):
    # Truth: TensorFlow's own depthwise convolution and its gradients, in
    # float64 outside XLA. Batch, height and width are unknown when the
    # XLA function is traced (as in an exported model); the kernel
    # gradient is one batched matmul, not a sum per tap.
    import tensorflow as tf
    helpers.fake_accelerator(monkeypatch, None)
    rng = np.random.RandomState(5)
    x = rng.normal(size=(3, 8, 5, 6))
    kernel = rng.normal(size=(5, 5, 6, 1))
    dy = rng.normal(size=x.shape)

    def output_and_gradients(conv, x, kernel, dy):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            out = conv(x, kernel)
        return (out,) + tuple(tape.gradient(out, [x, kernel],
                                            output_gradients=dy))

    expected = output_and_gradients(
        lambda x, k: tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME"),
        *map(tf.constant, (x, kernel, dy)))
    spec = tf.TensorSpec([None, None, None, 6], dtype)
    traced = tf.function(
        lambda x, k, dy: output_and_gradients(
            convolutions.depthwise_conv_as_shifted_sum, x, k, dy),
        jit_compile=True,
        input_signature=[spec, tf.TensorSpec([5, 5, 6, 1], dtype), spec])
    got = traced(*(tf.constant(v, dtype) for v in (x, kernel, dy)))
    for name, g, e in zip(["output", "input gradient", "kernel gradient"],
                          got, expected):
        assert g.dtype == dtype, name
        scale = np.abs(e.numpy()).max()
        np.testing.assert_allclose(g.numpy().astype(np.float64) / scale,
                                   e.numpy() / scale, atol=tolerance,
                                   err_msg=name)
    types = [op.type for op in traced.get_concrete_function().graph
             .get_operations()]
    assert "DepthwiseConv2dNative" not in types
    assert types.count("BatchMatMulV2") == 1
    assert types.count("Sum") == 1  # the diagonals' sums


@pytest.mark.parametrize("jit_compile,accelerator", [
    (False, None), (True, None), (True, "GPU"), (True, "TPU")])
def test_depthwise_conv_op_only_outside_xla_on_cpu(jit_compile, accelerator,
                                                   monkeypatch):
    # Under XLA for a CPU the depthwise convolution is a sum of shifted
    # copies (no DepthwiseConv2dNative op, whose XLA CPU code is slow);
    # outside XLA, or where a GPU or TPU is present (the devices the layer
    # sees are faked), it is Keras' DepthwiseConv2D, as in deeplab2.
    import tensorflow as tf
    helpers.fake_accelerator(monkeypatch, accelerator)
    layer = convolutions.DepthwiseConv2DSame(5, use_bias=False, name="d")
    x = tf.zeros([1, 9, 9, 3])
    layer(x)
    traced = tf.function(layer, jit_compile=jit_compile)
    graph = traced.get_concrete_function(x).graph
    types = {op.type for op in graph.get_operations()}
    shifted_sum = jit_compile and accelerator is None
    assert ("DepthwiseConv2dNative" in types) == (not shifted_sum)
    assert graph.outputs[0].shape.as_list() == [1, 9, 9, 3]


@pytest.mark.parametrize("strides,size", [(1, 7), (2, 9), (2, 8)])
@pytest.mark.parametrize("jit_compile,accelerator", [
    (False, None), (True, None), (True, "GPU")])
def test_pointwise_conv_is_a_matmul_under_xla_on_cpu(
        strides, size, jit_compile, accelerator, monkeypatch):
    # Under XLA for a CPU a 1x1 Conv2DSame is a MatMul (no Conv2D op, whose
    # input gradient made XLA transpose the kernel); elsewhere Keras'
    # Conv2D, as in deeplab2. Either way: the values and both gradients of
    # a brute-force 1x1 convolution reading pixels 0, s, 2s, ...
    import tensorflow as tf
    helpers.fake_accelerator(monkeypatch, accelerator)
    rng = np.random.RandomState(3)
    x = rng.normal(size=(2, size, size, 5)).astype(np.float32)
    layer = convolutions.Conv2DSame(4, 1, strides=strides, use_bias=True,
                                    name="p")
    layer(x)
    helpers.randomize_weights(layer)
    kernel = layer._conv.kernel.numpy()
    bias = layer._conv.bias.numpy()

    @tf.function(jit_compile=jit_compile)
    def forward_backward(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = layer(inputs)
            loss = tf.reduce_sum(tf.square(out))
        return (out,) + tuple(tape.gradient(
            loss, [inputs, layer._conv.kernel, layer._conv.bias]))

    x_tf = tf.constant(x)
    graph = forward_backward.get_concrete_function(x_tf).graph
    types = {op.type for op in graph.get_operations()}
    as_matmul = jit_compile and accelerator is None
    assert ("Conv2D" in types) == (not as_matmul)
    assert ("MatMul" in types) == as_matmul
    out, input_grad, kernel_grad, bias_grad = forward_backward(x_tf)

    sampled = x[:, ::strides, ::strides]
    expected = np.einsum("bhwi,io->bhwo", sampled, kernel[0, 0]) + bias
    expected_input_grad = np.zeros_like(x)
    expected_input_grad[:, ::strides, ::strides] = np.einsum(
        "bhwo,io->bhwi", 2 * expected, kernel[0, 0])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(input_grad.numpy(), expected_input_grad,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        kernel_grad.numpy()[0, 0],
        np.einsum("bhwi,bhwo->io", sampled, 2 * expected),
        rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(bias_grad.numpy(),
                               (2 * expected).sum(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-4)
    assert out.shape == (2, -(-size // strides), -(-size // strides), 4)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_conv1d_bn_kernel_one_is_a_matmul_under_xla_on_cpu(jit_compile):
    import tensorflow as tf
    rng = np.random.RandomState(4)
    x = rng.normal(size=(2, 6, 5)).astype(np.float32)
    layer = convolutions.Conv1DBN(3, use_bias=True, name="m")
    layer(x)
    helpers.randomize_weights(layer)
    traced = tf.function(lambda t: layer(t), jit_compile=jit_compile)
    x_tf = tf.constant(x)
    types = {op.type for op in
             traced.get_concrete_function(x_tf).graph.get_operations()}
    assert ("MatMul" in types) == jit_compile
    expected = (np.einsum("bli,io->blo", x, layer._conv.kernel.numpy()[0])
                + layer._conv.bias.numpy())
    np.testing.assert_allclose(traced(x_tf).numpy(), expected,
                               rtol=1e-5, atol=1e-5)

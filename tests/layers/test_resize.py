"""Tests for layers/resize.py."""

import numpy as np
import pytest

from max_deeplab_tf.layers import resize
from tests.layers import helpers


def test_interpolation_matrix_hand_computed():
    # 3 -> 5 with aligned corners reads positions 0, 0.5, 1, 1.5, 2.
    np.testing.assert_array_equal(resize.interpolation_matrix(3, 5), [
        [1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0.5, 0.5], [0, 0, 1]])
    # One input pixel: every output copies it; one output pixel: the first.
    np.testing.assert_array_equal(resize.interpolation_matrix(1, 4),
                                  np.ones((4, 1)))
    np.testing.assert_array_equal(resize.interpolation_matrix(5, 1),
                                  [[1, 0, 0, 0, 0]])
    # 17 -> 33 (stride 16 -> 8 at a 257 crop): every other row is exact.
    weights = resize.interpolation_matrix(17, 33)
    np.testing.assert_array_equal(weights[::2], np.eye(17))
    np.testing.assert_allclose(weights.sum(1), 1, rtol=1e-6)


def _output_and_gradient(resize_fn, x, jit_compile):
    import tensorflow as tf

    @tf.function(jit_compile=jit_compile)
    def forward_backward(x, dy):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = resize_fn(x)
        return y, tape.gradient(y, x, output_gradients=dy)

    return forward_backward


@pytest.mark.parametrize("function,shape,size", [
    ("resize_align_corners", (2, 5, 4, 3), (9, 7)),
    ("resize_align_corners", (1, 1, 1, 4), (5, 6)),   # pooled ASPP branch
    ("resize_bilinear", (2, 5, 5, 40), (9, 9)),       # > 32 channels
    ("resize_bilinear", (2, 5, 3, 8), (9, 5)),        # <= 32: two 1D passes
])
@pytest.mark.parametrize("accelerator", [None, "GPU"])
def test_resize_under_xla_matches_tensorflow_kernel(function, shape, size,
                                                     accelerator,
                                                     monkeypatch):
    # Truth: TensorFlow's ResizeBilinear kernel (align corners) and its
    # gradient, outside XLA. Under XLA for a CPU the resize is
    # two matmuls (no ResizeBilinear op, which XLA runs as a slow depthwise
    # convolution); with a GPU present (faked) the op stays.
    import tensorflow as tf
    helpers.fake_accelerator(monkeypatch, accelerator)
    rng = np.random.RandomState(0)
    x = rng.normal(size=shape).astype(np.float32)
    dy = rng.normal(size=(shape[0],) + size + (shape[3],)).astype(np.float32)
    expected_y, expected_dx = _output_and_gradient(
        lambda v: tf.compat.v1.image.resize_bilinear(v, size,
                                                     align_corners=True),
        x, False)(tf.constant(x), tf.constant(dy))
    traced = _output_and_gradient(
        lambda v: getattr(resize, function)(v, size), x, True)
    y, dx = traced(tf.constant(x), tf.constant(dy))
    np.testing.assert_allclose(y.numpy(), expected_y.numpy(), atol=1e-5)
    np.testing.assert_allclose(dx.numpy(), expected_dx.numpy(), atol=1e-4)
    types = {op.type for op in traced.get_concrete_function(
        tf.constant(x), tf.constant(dy)).graph.get_operations()}
    assert ("ResizeBilinear" in types) == (accelerator == "GPU")

"""Tests for max_deeplab_tf.layers.normalization against numpy batch norm."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.layers import normalization
from tests.layers import helpers

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def test_variables_have_deeplab2_multi_axis_shapes():
    layer = normalization.MultiAxisBatchNormalization(axis=[0, 2])
    layer.build((3, None, 8, 9, 9))
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        assert tuple(getattr(layer, name).shape) == (3, 1, 8, 1, 1)
    assert not layer.moving_mean.trainable
    assert layer.gamma.trainable
    single = normalization.MultiAxisBatchNormalization(axis=-1)
    single.build((None, 5, 7))
    assert tuple(single.gamma.shape) == (7,)


def test_inference_uses_moving_statistics_per_axis_entry():
    rng = np.random.RandomState(0)
    x = rng.normal(size=(3, 2, 4, 5, 5)).astype(np.float32)
    layer = normalization.MultiAxisBatchNormalization(axis=[0, 2], epsilon=1e-3)
    layer.build(x.shape)
    helpers.randomize_weights(layer)
    out = layer(x, training=False).numpy()
    expected = helpers.bn_inference(x.astype(np.float64), layer)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_training_normalizes_with_batch_moments_and_updates_moving_stats():
    rng = np.random.RandomState(1)
    x = rng.normal(2.0, 3.0, size=(2, 6, 4, 3)).astype(np.float32)
    layer = normalization.MultiAxisBatchNormalization(
        axis=[1, 3], momentum=0.9, epsilon=1e-3)
    layer.build(x.shape)
    helpers.randomize_weights(layer)
    old_mean = layer.moving_mean.numpy().copy()
    old_var = layer.moving_variance.numpy().copy()
    out = layer(x, training=True).numpy()
    xd = x.astype(np.float64)
    mean = xd.mean(axis=(0, 2), keepdims=True)
    var = xd.var(axis=(0, 2), keepdims=True)
    gamma = layer.gamma.numpy().astype(np.float64)
    beta = layer.beta.numpy().astype(np.float64)
    expected = (xd - mean) / np.sqrt(var + 1e-3) * gamma + beta
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy(),
                               0.9 * old_mean + 0.1 * mean, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               0.9 * old_var + 0.1 * var, rtol=1e-5,
                               atol=1e-6)


def test_half_precision_is_normalized_in_float32():
    rng = np.random.RandomState(2)
    # Values whose squares overflow float16 (max 65504).
    x = rng.normal(300.0, 1.0, size=(4, 2, 8)).astype(np.float32)
    layer = normalization.MultiAxisBatchNormalization(
        axis=[1, 2], dtype="mixed_float16")
    out = layer(tf.constant(x, tf.float16), training=True)
    assert out.dtype == tf.float16
    # Normalising in float16 would overflow x**2; in float32 the result is
    # that of the float16-rounded input, up to float16 output rounding.
    xr = x.astype(np.float16).astype(np.float64)
    reference = (xr - xr.mean(0)) / np.sqrt(xr.var(0) + 1e-3)
    np.testing.assert_allclose(out.numpy().astype(np.float64), reference,
                               atol=5e-3)


def test_batch_norm_factory_uses_keras_sync_batch_norm_for_one_axis():
    layer = normalization.batch_norm(axis=3, name="bn")
    assert isinstance(layer, normalization.BatchNormalization)
    assert isinstance(layer, keras.layers.BatchNormalization)
    assert layer.synchronized
    assert layer.momentum == pytest.approx(0.99)
    assert layer.epsilon == pytest.approx(1e-3)
    multi = normalization.batch_norm(
        axis=[0, 2], batch_norm_config={"synchronized": False,
                                        "momentum": 0.5})
    assert isinstance(multi, normalization.MultiAxisBatchNormalization)
    assert not multi.synchronized and multi.momentum == 0.5
    with pytest.raises(ValueError, match="unknown key"):
        normalization.batch_norm(axis=1, batch_norm_config={"eps": 1.0})


def test_get_config_round_trip():
    layer = normalization.MultiAxisBatchNormalization(
        axis=[0, 2, 4], momentum=0.8, epsilon=1e-2,
        gamma_initializer=keras.initializers.Constant(0.1), name="bn")
    x = np.random.RandomState(3).normal(size=(2, 3, 4, 5, 6)).astype("float32")
    layer.build(x.shape)
    helpers.randomize_weights(layer)
    clone = normalization.MultiAxisBatchNormalization.from_config(
        layer.get_config())
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(layer(x).numpy(), clone(x).numpy())
    fresh = normalization.MultiAxisBatchNormalization.from_config(
        layer.get_config())
    fresh.build(x.shape)
    np.testing.assert_allclose(fresh.gamma.numpy(), 0.1)


def test_invalid_axis_is_reported():
    layer = normalization.MultiAxisBatchNormalization(axis=[0, 5])
    with pytest.raises(ValueError, match="invalid"):
        layer.build((2, 3, 4))


def test_training_statistics_are_synchronized_across_replicas():
    # Two replicas each see half of the batch; with synchronised statistics
    # the result must equal normalising the global batch. Axes [1, 3] are
    # kept so that the reduction runs over the batch (split across
    # replicas) and axis 2.
    script = textwrap.dedent("""
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from max_deeplab_tf.layers import normalization
        rng = np.random.RandomState(0)
        x = np.concatenate([rng.normal(0.0, 1.0, (2, 3, 4, 5)),
                            rng.normal(5.0, 2.0, (2, 3, 4, 5))]
                           ).astype("float32")
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            layer = normalization.MultiAxisBatchNormalization(
                axis=[1, 3], momentum=0.0, epsilon=1e-3)
            layer.build((None, 3, 4, 5))
        dataset = tf.data.Dataset.from_tensor_slices(x).batch(4)
        batch = next(iter(strategy.experimental_distribute_dataset(dataset)))
        outputs = strategy.run(lambda t: layer(t, training=True),
                               args=(batch,))
        out = np.concatenate([v.numpy() for v in
                              strategy.experimental_local_results(outputs)])
        mean = x.mean(axis=(0, 2), keepdims=True)
        var = x.var(axis=(0, 2), keepdims=True)
        np.testing.assert_allclose(
            out, (x - mean) / np.sqrt(var + 1e-3), rtol=1e-4, atol=1e-4)
        # momentum 0: the moving statistics are the global batch's.
        np.testing.assert_allclose(layer.moving_mean.numpy(),
                                   mean.reshape(1, 3, 1, 5), rtol=1e-5,
                                   atol=1e-5)
        np.testing.assert_allclose(layer.moving_variance.numpy(),
                                   var.reshape(1, 3, 1, 5), rtol=1e-4,
                                   atol=1e-5)
        # Single-axis batch norm, synchronised: the global batch's
        # statistics over (batch, height, width); unsynchronised: each
        # replica's own half (the fused op).
        for synchronized in (True, False):
            with strategy.scope():
                single = normalization.BatchNormalization(
                    momentum=0.0, epsilon=1e-3, synchronized=synchronized)
                single.build((None, 3, 4, 5))
            outputs = strategy.run(lambda t: single(t, training=True),
                                   args=(batch,))
            out = np.concatenate([v.numpy() for v in
                                  strategy.experimental_local_results(
                                      outputs)])
            parts = [x] if synchronized else [x[:2], x[2:]]
            expected = np.concatenate([
                (p - p.mean(axis=(0, 1, 2))) / np.sqrt(
                    p.var(axis=(0, 1, 2)) + 1e-3) for p in parts])
            np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
        print("SYNC-OK")
    """)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], env=env,
                            capture_output=True, text=True, timeout=300)
    assert "SYNC-OK" in result.stdout, result.stdout + result.stderr


def _single_axis_layer(center=True, scale=True, dtype=None):
    layer = normalization.BatchNormalization(
        epsilon=1e-3, center=center, scale=scale, dtype=dtype)
    layer.build((2, 5, 6, 7))
    rng = np.random.RandomState(11)
    for variable in layer.weights:
        shift = 1.0 if "variance" in variable.path else 0.0
        variable.assign(rng.uniform(0.2, 2.0, variable.shape) + shift
                        if "variance" in variable.path
                        else rng.normal(0.0, 2.0, variable.shape))
    return layer


def _numpy_inference(layer, x):
    """(x - moving_mean) / sqrt(moving_variance + eps) * gamma + beta, in
    float64."""
    x = x.astype(np.float64)
    mean = layer.moving_mean.numpy().astype(np.float64)
    variance = layer.moving_variance.numpy().astype(np.float64)
    out = (x - mean) / np.sqrt(variance + layer.epsilon)
    if layer.scale:
        out = out * layer.gamma.numpy()
    if layer.center:
        out = out + layer.beta.numpy()
    return out


@pytest.mark.parametrize("center,scale", [(True, True), (False, True),
                                          (True, False)])
def test_single_axis_inference_matches_numpy(center, scale):
    layer = _single_axis_layer(center, scale)
    x = np.random.RandomState(5).normal(3.0, 4.0, (2, 5, 6, 7)).astype(
        "float32")
    reference = _numpy_inference(layer, x)
    np.testing.assert_allclose(layer(x, training=False).numpy(), reference,
                               rtol=1e-5, atol=1e-5)
    # The same in a tf.function, as Keras's scale and offset: not one
    # FusedBatchNormV3, which grappler would fold into a convolution
    # before it (oneDNN's fused convolution, 20x slower without AVX-512).
    traced = tf.function(lambda t: layer(t, training=False))
    np.testing.assert_allclose(traced(x).numpy(), reference, rtol=1e-5,
                               atol=1e-5)
    op_types = {op.type for op in traced.get_concrete_function(
        tf.TensorSpec(x.shape, tf.float32)).graph.get_operations()}
    assert "FusedBatchNormV3" not in op_types


def test_single_axis_inference_in_mixed_precision_matches_numpy():
    layer = _single_axis_layer(dtype="mixed_float16")
    x = np.random.RandomState(6).normal(1.0, 2.0, (2, 5, 6, 7)).astype(
        "float16")
    out = layer(x, training=False)
    assert out.dtype == tf.float16
    np.testing.assert_allclose(out.numpy().astype(np.float64),
                               _numpy_inference(layer, x), rtol=2e-3,
                               atol=2e-2)


def _numpy_training(layer, x):
    """Normalised x and the moving statistics after one training step, from
    the batch's mean and biased variance, in float64."""
    axes = tuple(range(x.ndim - 1))
    x = x.astype(np.float64)
    mean, variance = x.mean(axis=axes), x.var(axis=axes)
    out = ((x - mean) / np.sqrt(variance + layer.epsilon) * layer.gamma.numpy()
           + layer.beta.numpy())
    momentum = layer.momentum
    return (out,
            momentum * layer.moving_mean.numpy() + (1 - momentum) * mean,
            momentum * layer.moving_variance.numpy()
            + (1 - momentum) * variance)


@pytest.mark.parametrize("shape", [(2, 5, 6, 7), (3, 8, 7), (40, 7)])
def test_single_axis_training_matches_numpy(shape):
    # 4-D inputs go to the fused op directly, other ranks through a reshape.
    layer = normalization.BatchNormalization(epsilon=1e-3, momentum=0.9)
    layer.build(shape)
    helpers.randomize_weights(layer)
    x = np.random.RandomState(7).normal(3.0, 4.0, shape).astype("float32")
    out, moving_mean, moving_variance = _numpy_training(layer, x)
    traced = tf.function(lambda t: layer(t, training=True))
    np.testing.assert_allclose(traced(x).numpy(), out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy(), moving_mean,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               moving_variance, rtol=1e-5, atol=1e-5)
    op_types = {op.type for op in traced.get_concrete_function(
        tf.TensorSpec(shape, tf.float32)).graph.get_operations()}
    assert "FusedBatchNormV3" in op_types
    # Inference on the same shape uses the moving statistics.
    np.testing.assert_allclose(layer(x, training=False).numpy(),
                               _numpy_inference(layer, x), rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize("shape", [
    (2, 5, 6, 7), (1, 1, 1, 3), (0, 4, 4, 2), (40, 7),
    (2, 2049, 2049, 2),  # 8,396,802 values per channel
    (2 ** 24 + 1, 1)])   # a count float32 rounds (to 2**24)
def test_biased_variance_factor_is_the_graph_ops_float32(shape):
    # Known shapes give a numpy float32 instead of the graph ops: the same
    # bits as those ops on an unknown shape, and the float32 quotient of
    # the float32 operands (count rounded to float32 first, as the ops'
    # cast does; divide_no_nan's 0 for an empty input). Below 2**24 the
    # count is exact and the quotient is (count - 1) / count rounded once.
    static = normalization._biased_variance_factor(_symbolic(shape))
    assert isinstance(static, np.float32)

    @tf.function(input_signature=[tf.TensorSpec([None] * len(shape))])
    def dynamic(x):
        return normalization._biased_variance_factor(x)

    graph_value = dynamic(tf.zeros(shape)).numpy()
    assert graph_value.tobytes() == static.tobytes()
    count = int(np.prod(shape[:-1]))
    c32 = np.float32(count)
    expected = np.float32(0.0) if count == 0 else np.float32(
        (float(c32) - 1.0) / float(c32))
    assert static == expected
    if 1 < count < 2 ** 24:
        assert static == np.float32((count - 1) / count)


def _symbolic(shape):
    """A graph tensor of the given static shape (no values allocated)."""
    holder = {}

    @tf.function(input_signature=[tf.TensorSpec(shape)])
    def trace(x):
        holder["x"] = x
        return x

    trace.get_concrete_function()
    return holder["x"]


def test_training_with_known_shape_runs_no_count_ops():
    # The step without grappler (CPU training) runs every op it traces:
    # with a static shape the factor is a constant, not a floordiv, cast,
    # subtraction and divide_no_nan per batch norm.
    layer = normalization.BatchNormalization()
    layer.build((2, 5, 6, 7))
    graph = tf.function(lambda t: layer(t, training=True)).get_concrete_function(
        tf.TensorSpec((2, 5, 6, 7), tf.float32)).graph
    op_types = [op.type for op in graph.get_operations()]
    assert "FusedBatchNormV3" in op_types
    assert not {"FloorDiv", "DivNoNan", "Size"} & set(op_types)


def _formula_gradients(layer, x, upstream):
    """Gradients of sum(batch_norm(x) * upstream) with respect to x, gamma
    and beta: the written-out training formula (batch statistics over all
    but the last axis, the layer's epsilon) in float64, differentiated by
    TensorFlow."""
    gamma = tf.constant(layer.gamma.numpy(), tf.float64)
    beta = tf.constant(layer.beta.numpy(), tf.float64)
    x64 = tf.constant(x, tf.float64)
    with tf.GradientTape() as tape:
        tape.watch([x64, gamma, beta])
        mean, variance = tf.nn.moments(x64, axes=list(range(x.ndim - 1)))
        normalized = (x64 - mean) * tf.math.rsqrt(variance + layer.epsilon)
        reference = tf.reduce_sum((normalized * gamma + beta) * upstream)
    return tape.gradient(reference, [x64, gamma, beta])


def _randomized_layer_input_and_upstream(layer, shape, seed, mean):
    """The layer built for shape with random weights, an input x ~
    N(mean, 3) and an upstream gradient ~ N(0, 1), both float32."""
    layer.build(shape)
    helpers.randomize_weights(layer)
    rng = np.random.RandomState(seed)
    x = rng.normal(mean, 3.0, shape).astype("float32")
    upstream = rng.normal(size=shape).astype("float32")
    return layer, x, upstream


def test_single_axis_training_gradients_match_the_formula():
    # Gradients of the fused op (FusedBatchNormGradV3) against automatic
    # differentiation of the written-out formula in float64.
    layer, x, upstream = _randomized_layer_input_and_upstream(
        normalization.BatchNormalization(epsilon=1e-3), (2, 4, 5, 6),
        seed=8, mean=1.0)
    expected = _formula_gradients(layer, x, upstream)
    x32 = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x32)
        loss = tf.reduce_sum(layer(x32, training=True) * upstream)
    actual = tape.gradient(loss, [x32, layer.gamma, layer.beta])
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a.numpy(), e.numpy(), rtol=1e-4,
                                   atol=1e-4)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_single_axis_training_under_xla_matches_the_formula(jit_compile,
                                                         monkeypatch):
    # Under XLA for a CPU (the process is made to see no GPU or TPU) the
    # fused op sees the input flattened to [-1, 1, 1, channels] (XLA's CPU
    # reductions over batch, height and width were slow); outside XLA the
    # 4-D input itself. The same values, moving statistics and gradients
    # either way: against numpy, and the float64 formula differentiated by
    # TensorFlow.
    helpers.fake_accelerator(monkeypatch, None)
    shape = (2, 5, 6, 7)
    layer, x, upstream = _randomized_layer_input_and_upstream(
        normalization.BatchNormalization(epsilon=1e-3, momentum=0.9),
        shape, seed=9, mean=2.0)
    out, moving_mean, moving_variance = _numpy_training(layer, x)
    expected_grads = _formula_gradients(layer, x, upstream)

    @tf.function(jit_compile=jit_compile)
    def forward_backward(inputs):
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            outputs = layer(inputs, training=True)
            loss = tf.reduce_sum(outputs * upstream)
        return (outputs,) + tuple(
            tape.gradient(loss, [inputs, layer.gamma, layer.beta]))

    graph = forward_backward.get_concrete_function(
        tf.TensorSpec(shape, tf.float32)).graph
    fused = [op for op in graph.get_operations()
             if op.type == "FusedBatchNormV3"]
    assert len(fused) == 1
    expected_shape = [60, 1, 1, 7] if jit_compile else list(shape)
    assert fused[0].inputs[0].shape.as_list() == expected_shape

    outputs, *grads = forward_backward(tf.constant(x))
    np.testing.assert_allclose(outputs.numpy(), out, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(layer.moving_mean.numpy(), moving_mean,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(),
                               moving_variance, rtol=1e-5, atol=1e-5)
    for actual, expected in zip(grads, expected_grads):
        np.testing.assert_allclose(actual.numpy(), expected.numpy(),
                                   rtol=1e-4, atol=1e-4)
    assert outputs.shape == shape


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_one_replica_synchronized_moments_are_keras_bits(dtype):
    # The independent truth is Keras's own synchronised moments, all-reduce
    # included (the default strategy's replica context: one replica).
    x = tf.cast(np.random.RandomState(3).normal(3.0, 4.0, (2, 3, 5, 7)),
                dtype)
    axes = [0, 2, 3]

    def both(t):
        return (keras.ops.moments(t, axes, synchronized=True),
                normalization._synchronized_moments_of_one_replica(t, axes))

    for run in (both, tf.function(both)):
        expected, actual = run(x)
        for e, a in zip(expected, actual):
            assert a.dtype == e.dtype and a.shape == e.shape == (3,)
            assert a.numpy().tobytes() == e.numpy().tobytes()


def test_one_replica_sync_batch_norm_off_the_fused_path_is_keras_bits():
    # Axis 1 of a 4-D input is not the fused op's case: Keras's path, with
    # the same output, moving statistics and gradients as Keras's own layer
    # bit for bit, and no gradient left in TensorFlow's registry (each
    # entry would keep the traced graph alive).
    from max_deeplab_tf.training import gradient_registrations
    shape = (2, 3, 5, 7)
    ours = normalization.BatchNormalization(axis=1, momentum=0.9,
                                            synchronized=True)
    reference = keras.layers.BatchNormalization(axis=1, momentum=0.9,
                                                synchronized=True)
    for layer in (ours, reference):
        layer.build(shape)
        helpers.randomize_weights(layer, seed=5)
    rng = np.random.RandomState(6)
    x = tf.constant(rng.normal(1.0, 3.0, shape).astype("float32"))
    upstream = tf.constant(rng.normal(size=shape).astype("float32"))

    def forward_backward(layer):
        @tf.function
        def run(inputs):
            with tf.GradientTape() as tape:
                tape.watch(inputs)
                outputs = layer(inputs, training=True)
                loss = tf.reduce_sum(outputs * upstream)
            return [outputs] + tape.gradient(
                loss, [inputs, layer.gamma, layer.beta])
        return run

    registry = gradient_registrations._registry()  # pylint: disable=protected-access
    before = set(registry)
    actual = forward_backward(ours)(x)
    assert set(registry) == before
    expected = forward_backward(reference)(x)
    for a, e in zip(actual + [ours.moving_mean, ours.moving_variance],
                    expected + [reference.moving_mean,
                                reference.moving_variance]):
        assert a.numpy().tobytes() == e.numpy().tobytes()

"""The tiny MaX-DeepLab as a Keras model: config and .keras round trips,
XLA compilation, mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import max_deeplab_tf
from max_deeplab_tf.model import max_deeplab
from tests.layers import helpers as layer_helpers
from tests.model import helpers


@pytest.fixture(scope="module")
def model():
    built = max_deeplab_tf.build_model(helpers.tiny_config())
    built.build((None, 33, 33, 3))
    layer_helpers.randomize_weights(built, seed=2)
    return built


def images(seed=0):
    return tf.constant(np.random.RandomState(seed).uniform(
        0, 255, size=(2, 33, 33, 3)).astype(np.float32))


def assert_same_outputs(actual, expected, tolerance=0.0):
    assert set(actual) == set(expected)
    for key in expected:
        a, e = np.asarray(actual[key]), np.asarray(expected[key])
        np.testing.assert_allclose(
            a, e, rtol=0, atol=tolerance * max(1.0, np.abs(e).max()),
            err_msg=key)


def test_from_config_round_trip(model):
    config = model.get_config()
    clone = max_deeplab.MaXDeepLab.from_config(config)
    clone.build((None, 33, 33, 3))
    clone.set_weights(model.get_weights())
    assert clone.get_config() == config
    assert_same_outputs(clone(images(), training=False),
                        model(images(), training=False))


def test_keras_file_round_trip(model, tmp_path):
    path = str(tmp_path / "tiny.keras")
    expected = model(images(), training=False)
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert isinstance(reloaded, max_deeplab.MaXDeepLab)
    assert_same_outputs(reloaded(images(), training=False), expected)


def test_forward_compiles_with_xla(model):
    expected = model(images(), training=False)
    compiled = tf.function(lambda x: model(x, training=False),
                           jit_compile=True)
    assert_same_outputs(compiled(images()), expected, tolerance=1e-4)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_forward(policy):
    keras.mixed_precision.set_global_policy(policy)
    try:
        mixed = max_deeplab_tf.build_model(helpers.tiny_config())
        outputs = mixed(images(), training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert mixed.compute_dtype == policy.split("_")[1]
    assert all(v.dtype == "float32" for v in mixed.weights)
    for key, value in outputs.items():
        assert value.dtype == tf.float32, key
        assert np.all(np.isfinite(value.numpy())), key

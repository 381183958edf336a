"""Every layer: config round trip, use in a user's model saved as .keras,
XLA compilation and mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import layers
from tests.layers import helpers


def _rng_input(*shape, seed=0):
    return np.random.RandomState(seed).normal(size=shape).astype(np.float32)


# (factory, example inputs as a tuple of call arguments)
CASES = {
    "MultiAxisBatchNormalization": (
        lambda: layers.MultiAxisBatchNormalization(axis=[0, 2]),
        lambda: (_rng_input(3, 2, 4, 5, 5),)),
    "DropPath": (lambda: layers.DropPath(0.8),
                 lambda: (_rng_input(2, 3, 3, 4),)),
    "Conv2DSame": (
        lambda: layers.Conv2DSame(4, 3, strides=2, use_bias=False,
                                  use_bn=True, activation="relu"),
        lambda: (_rng_input(2, 9, 9, 3),)),
    "SeparableConv2DSame": (
        lambda: layers.SeparableConv2DSame(4, 5, use_bias=False, use_bn=True,
                                           activation="relu"),
        lambda: (_rng_input(2, 5, 5, 3),)),
    "StackedConv2DSame": (
        lambda: layers.StackedConv2DSame(2, "standard_conv", 4, 3,
                                         use_bias=False, use_bn=True,
                                         activation="relu"),
        lambda: (_rng_input(2, 5, 5, 3),)),
    "Conv1DBN": (
        lambda: layers.Conv1DBN(4, use_bias=False, use_bn=True,
                                activation="gelu"),
        lambda: (_rng_input(2, 6, 3),)),
    "AxialAttention": (
        lambda: layers.AxialAttention(4, 8, num_heads=2),
        lambda: (_rng_input(2, 7, 6),)),
    "AxialAttention2D": (
        lambda: layers.AxialAttention2D(filters=4, strides=2, num_heads=2),
        lambda: (_rng_input(2, 5, 5, 6),)),
    "AxialBlock": (
        lambda: layers.AxialBlock([8, 4, 12], attention_type="axial",
                                  axial_layer_config={"num_heads": 2},
                                  drop_path_keep_prob=0.9),
        lambda: (_rng_input(2, 5, 5, 6),)),
    "DualPathTransformerLayer": (
        lambda: layers.DualPathTransformerLayer(
            filters=4, num_heads=2, feed_forward_network_channels=8),
        lambda: ((_rng_input(2, 3, 3, 6), _rng_input(2, 4, 5, seed=1)),)),
    "BlockGroup": (
        lambda: layers.BlockGroup(
            filters=4, num_blocks=2, original_resnet_stride=2,
            original_resnet_input_stride=16, output_stride=16,
            use_transformer_beyond_stride=16, transformer_expansion=0.25,
            axial_layer_config={"num_heads": 2},
            dual_path_transformer_layer_config={
                "num_heads": 2, "feed_forward_network_channels": 8}),
        lambda: (_rng_input(2, 3, 3, 8), _rng_input(2, 4, 6, seed=1))),
    "InceptionStem": (lambda: layers.InceptionStem(0.125),
                      lambda: (_rng_input(2, 9, 9, 3),)),
    "ResizedFuse": (
        lambda: layers.ResizedFuse(4, ["project", "resize", "strided"]),
        lambda: ([_rng_input(2, 3, 3, 6), _rng_input(2, 5, 5, 4),
                  _rng_input(2, 9, 9, 2)],)),
}
EXTRA_KWARGS = {"ResizedFuse": {"target_size": (5, 5)}}


def _first(outputs):
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


@pytest.mark.parametrize("name", sorted(CASES))
def test_from_config_reproduces_outputs(name):
    factory, make_inputs = CASES[name]
    inputs = make_inputs()
    kwargs = EXTRA_KWARGS.get(name, {})
    layer = factory()
    layer(*inputs, **kwargs)
    helpers.randomize_weights(layer)
    config = layer.get_config()
    clone = type(layer).from_config(config)
    clone(*inputs, **kwargs)
    assert [v.shape for v in clone.weights] == [v.shape for v in layer.weights]
    clone.set_weights(layer.get_weights())
    expected = tf.nest.map_structure(
        np.asarray, layer(*inputs, training=False, **kwargs))
    actual = tf.nest.map_structure(
        np.asarray, clone(*inputs, training=False, **kwargs))
    tf.nest.map_structure(np.testing.assert_array_equal, actual, expected)
    assert clone.get_config() == config


@pytest.mark.parametrize("name", ["AxialBlock", "DualPathTransformerLayer",
                                  "BlockGroup", "ResizedFuse"])
def test_forward_compiles_with_xla(name):
    factory, make_inputs = CASES[name]
    inputs = make_inputs()
    kwargs = EXTRA_KWARGS.get(name, {})
    layer = factory()
    expected = tf.nest.map_structure(
        np.asarray, layer(*inputs, training=False, **kwargs))
    compiled = tf.function(
        lambda *args: layer(*args, training=False, **kwargs),
        jit_compile=True)
    actual = tf.nest.map_structure(np.asarray, compiled(*inputs))
    tf.nest.map_structure(
        lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-4),
        actual, expected)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["AxialAttention2D", "AxialBlock",
                                  "DualPathTransformerLayer", "BlockGroup",
                                  "MultiAxisBatchNormalization"])
def test_mixed_precision_forward(policy, name):
    factory, make_inputs = CASES[name]
    keras.mixed_precision.set_global_policy(policy)
    try:
        layer = factory()
        outputs = layer(*make_inputs(), training=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    compute = "float16" if policy == "mixed_float16" else "bfloat16"
    for output in tf.nest.flatten(outputs):
        assert output.dtype == compute
        assert np.all(np.isfinite(np.asarray(tf.cast(output, tf.float32))))
    assert all(v.dtype == "float32" for v in layer.weights)


def _user_model():
    """A user's own classifier built from max_deeplab_tf layers."""
    images = keras.Input((17, 17, 3))
    memory = keras.Input((4, 8))
    x = layers.InceptionStem(width_multiplier=0.125)(images)
    x = layers.AxialBlock([8, 4, 16], attention_type="axial",
                          axial_layer_config={"num_heads": 2})(x)
    x, memory_out = layers.DualPathTransformerLayer(
        filters=4, num_heads=2, feed_forward_network_channels=8)((x, memory))
    pooled = keras.layers.GlobalAveragePooling2D()(x)
    logits = keras.layers.Dense(3)(keras.layers.Concatenate()(
        [pooled, keras.layers.GlobalAveragePooling1D()(memory_out)]))
    return keras.Model([images, memory], logits)


def test_user_model_saves_and_reloads(tmp_path):
    model = _user_model()
    inputs = [_rng_input(2, 17, 17, 3), _rng_input(2, 4, 8, seed=1)]
    # Saved before any eager call: the symbolic construction built every
    # sub-layer's weights.
    assert len(model.weights) == len(_user_model().weights) > 60
    fresh_path = str(tmp_path / "fresh.keras")
    model.save(fresh_path)
    np.testing.assert_array_equal(
        keras.models.load_model(fresh_path)(inputs, training=False).numpy(),
        model(inputs, training=False).numpy())
    helpers.randomize_weights(model)
    expected = model(inputs, training=False).numpy()
    path = str(tmp_path / "user_model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    np.testing.assert_array_equal(reloaded(inputs, training=False).numpy(),
                                  expected)

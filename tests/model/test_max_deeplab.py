"""The tiny MaX-DeepLab end to end: outputs, void prior, slot permutation,
gradients and the backbone variable split."""

import math

import numpy as np
import pytest
import tensorflow as tf

import max_deeplab_tf
from max_deeplab_tf import common
from max_deeplab_tf.model import max_deeplab
from tests.layers import helpers as layer_helpers
from tests.model import helpers

OUTPUT_KEYS = (common.PRED_SEMANTIC_LOGITS_KEY,
               common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY,
               common.PRED_TRANSFORMER_CLASS_LOGITS_KEY,
               common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY)


@pytest.fixture(scope="module")
def model():
    tf.random.set_seed(0)
    built = max_deeplab_tf.build_model(helpers.tiny_config())
    built.build((None, 65, 65, 3))
    layer_helpers.randomize_weights(built, seed=1)
    return built


def images(size, batch=2, seed=0):
    return tf.constant(np.random.RandomState(seed).uniform(
        0, 255, size=(batch, size, size, 3)).astype(np.float32))


@pytest.mark.parametrize("size", [65, 33])
def test_outputs_at_two_input_sizes(model, size):
    out = model(images(size), training=False)
    side = (size - 1) // 4 + 1
    assert out[common.PRED_SEMANTIC_LOGITS_KEY].shape == (2, side, side, 134)
    assert out[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY].shape == (
        2, side, side, 16)
    assert out[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].shape == (2, 8, 134)
    assert out[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].shape == (
        2, side, side, 8)
    for value in out.values():
        assert value.dtype == tf.float32
        assert np.all(np.isfinite(value.numpy()))
    norms = np.linalg.norm(
        out[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY].numpy(), axis=-1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    np.testing.assert_allclose(
        out[common.PRED_SEMANTIC_PROBS_KEY].numpy().sum(-1), 1.0, rtol=1e-5)
    training_out = model(images(size), training=True)
    assert set(training_out) == set(OUTPUT_KEYS)


def test_images_are_normalized_to_minus_one_one(model):
    x = images(33, batch=1)
    endpoints = model.encoder(x / 127.5 - 1.0, training=False)
    out = model(x, training=False)
    ref = model.decoder(endpoints, training=False)
    np.testing.assert_allclose(
        out[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].numpy(),
        ref[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].numpy(), rtol=1e-5,
        atol=1e-5)


def test_void_prior_is_point_nine_at_zero_class_head(model):
    head = model.decoder._transformer_class_head._conv
    saved = [v.numpy() for v in head.weights]
    try:
        for variable in head.weights:
            variable.assign(tf.zeros_like(variable))
        logits = model(images(33, batch=1), training=False)[
            common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].numpy()
    finally:
        for variable, value in zip(head.weights, saved):
            variable.assign(value)
    np.testing.assert_allclose(logits[..., -1], math.log(133 * 0.9 / 0.1),
                               rtol=1e-6)
    np.testing.assert_allclose(logits[..., :-1], 0.0, atol=1e-6)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs[..., -1], 0.9, rtol=1e-5)


def test_permuting_memory_slots_permutes_class_and_mask_logits(model):
    x = images(33)
    memory = model.encoder.memory_feature
    original = memory.numpy()
    permutation = np.random.RandomState(5).permutation(original.shape[1])
    reference = model(x, training=False)
    try:
        memory.assign(original[:, permutation])
        permuted = model(x, training=False)
    finally:
        memory.assign(original)
    np.testing.assert_allclose(
        permuted[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].numpy(),
        reference[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].numpy()[
            :, permutation], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        permuted[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].numpy(),
        reference[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].numpy()[
            ..., permutation], rtol=1e-4, atol=1e-4)
    for key in (common.PRED_SEMANTIC_LOGITS_KEY,
                common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY):
        np.testing.assert_allclose(permuted[key].numpy(),
                                   reference[key].numpy(), rtol=1e-4,
                                   atol=1e-4)
    # Not vacuous: the slots differ from each other.
    logits = reference[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].numpy()
    assert np.abs(logits[:, 0] - logits[:, 1]).max() > 1e-3


def test_training_step_gives_every_trainable_variable_a_gradient(model):
    # Drop path drops a block's branch for each example with probability up
    # to 0.2: with 2 examples a whole branch (and its gradient) vanished now
    # and then (1 in 25 per block); with 8, 1 in 390,000.
    x = images(33, batch=8)
    with tf.GradientTape() as tape:
        out = model(x, training=True)
        loss = tf.add_n([tf.reduce_mean(tf.square(out[key]))
                         for key in OUTPUT_KEYS])
    variables = model.trainable_variables
    gradients = tape.gradient(loss, variables)
    missing = [v.path for v, g in zip(variables, gradients) if g is None]
    assert not missing
    # The positional-encoding tables get IndexedSlices (a gather).
    gradients = [tf.convert_to_tensor(g) for g in gradients]
    nonfinite = [v.path for v, g in zip(variables, gradients)
                 if not np.all(np.isfinite(g.numpy()))]
    assert not nonfinite
    zero = [v.path for v, g in zip(variables, gradients)
            if not np.any(g.numpy())]
    assert len(zero) < 0.1 * len(variables), zero


def test_backbone_variables_follow_deeplab2s_rule(model):
    backbone = model.backbone_variables
    encoder = model.checkpoint_items["encoder"].trainable_variables
    # deeplab2: encoder variables except transformer, 'extra' and memory.
    expected = [v for v in encoder
                if not any(word in v.path for word in
                           ("transformer", "extra", "memory_feature"))]
    assert {id(v) for v in backbone} == {id(v) for v in expected}
    assert backbone and len(backbone) < len(model.trainable_variables)
    assert model.is_backbone_variable(backbone[0])
    assert not model.is_backbone_variable(model.encoder.memory_feature)


def test_backbone_variant_has_no_transformer():
    config = helpers.tiny_config(
        'model_options { backbone { name: "max_deeplab_s_backbone" '
        'backbone_width_multiplier: 0.0625 stem_width_multiplier: 0.125 } }')
    backbone = max_deeplab_tf.build_model(config)
    assert isinstance(backbone, max_deeplab.MaXDeepLabBackbone)
    out = backbone(images(33, batch=1), training=False)
    assert out["backbone_output"].shape == (1, 3, 3, 128)
    assert out["res2"].shape == (1, 9, 9, 16)
    paths = [v.path for v in backbone.weights]
    assert not [p for p in paths if "transformer" in p or "extra" in p
                or "memory" in p]
    assert len(backbone.backbone_variables) == len(
        backbone.trainable_variables)

"""Tests for max_deeplab_tf.model.heads against numpy references."""

import math

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf.model import heads
from tests.layers import helpers


def test_void_prior_bias_and_its_softmax():
    assert heads.void_prior_bias(134) == pytest.approx(math.log(133 * 9.0))
    logits = heads.add_bias_towards_void(tf.zeros([1, 2, 134])).numpy()
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(probs[..., -1], 0.9, rtol=1e-6)
    np.testing.assert_array_equal(logits[..., :-1], 0.0)


def aspp_pool_reference(x, layer, pool):
    """Stride-1 'valid' average pooling, 1x1 conv-BN-relu, align-corners
    bilinear resize back to the input size."""
    _, h, w, _ = x.shape
    ph, pw = pool
    pooled = np.zeros((x.shape[0], h - ph + 1, w - pw + 1, x.shape[3]))
    for i in range(h - ph + 1):
        for j in range(w - pw + 1):
            pooled[:, i, j] = x[:, i:i + ph, j:j + pw].mean(axis=(1, 2))
    conv = layer._conv_bn_act
    y = pooled @ conv._conv.kernel.numpy()[0, 0]
    y = np.maximum(helpers.bn_inference(y, conv._batch_norm), 0)
    return helpers.bilinear_align_corners(y, h, w)


@pytest.mark.parametrize("pool_size,effective", [(None, (5, 5)), ((3, 3), (3, 3)),
                                                 ((9, 9), (5, 5))])
def test_aspp_pooling(pool_size, effective):
    x = np.random.RandomState(0).normal(size=(2, 5, 5, 3)).astype(np.float32)
    layer = heads.ASPPPool(4, pool_size=pool_size, name="aspp_pool")
    layer(x)
    helpers.randomize_weights(layer)
    out = layer(x, training=False).numpy()
    np.testing.assert_allclose(
        out, aspp_pool_reference(x.astype(np.float64), layer, effective),
        rtol=1e-4, atol=1e-4)


def make_head(decoder=False):
    decoder_config = None
    if decoder:
        decoder_config = {
            "high_level_feature_name": "feature_semantic",
            "low_level_feature_names": ["res3", "res2"],
            "low_level_channels_project": [4, 2],
            "aspp_output_channels": 4, "decoder_output_channels": 6,
            "atrous_rates": [1, 2, 3], "pool_size": [3, 3]}
    return heads.MaXDeepLabHead(
        num_classes=5, num_transformer_classes=6, pixel_space_head_channels=6,
        pixel_space_dim=4, semantic_head_channels=6,
        decoder_config=decoder_config, name="decoder")


def features(semantic_size):
    rng = np.random.RandomState(1)
    return {
        "feature_semantic": rng.normal(
            size=(2, semantic_size, semantic_size, 8)).astype(np.float32),
        "feature_panoptic": rng.normal(size=(2, 9, 9, 8)).astype(np.float32),
        "res3": rng.normal(size=(2, 5, 5, 4)).astype(np.float32),
        "res2": rng.normal(size=(2, 9, 9, 3)).astype(np.float32),
        "transformer_class_feature": rng.normal(size=(2, 3, 7)).astype(
            np.float32),
        "transformer_mask_feature": rng.normal(size=(2, 3, 7)).astype(
            np.float32),
    }


def test_mask_logits_are_batch_normalized_dot_products():
    head = make_head()
    inputs = features(9)
    head(inputs)
    helpers.randomize_weights(head)
    out = head(inputs, training=False)
    g = out[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY].numpy()
    np.testing.assert_allclose(np.linalg.norm(g, axis=-1), 1.0, rtol=1e-5)
    mask_head = head._transformer_mask_head
    kernel = inputs["transformer_mask_feature"].astype(np.float64) @ (
        mask_head._conv.kernel.numpy()[0])
    kernel = helpers.bn_inference(kernel, mask_head._batch_norm)
    dots = np.einsum("bhwd,bnd->bhwn", g.astype(np.float64), kernel)
    bn = head._pixel_space_mask_batch_norm
    assert tuple(bn.gamma.shape) == (1,)
    expected = helpers.bn_inference(dots, bn)
    np.testing.assert_allclose(
        out[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY].numpy(), expected,
        rtol=1e-4, atol=1e-4)
    class_head = head._transformer_class_head._conv
    logits = (inputs["transformer_class_feature"] @ class_head.kernel.numpy()[0]
              + class_head.bias.numpy())
    logits[..., -1] += math.log(5 * 0.9 / 0.1)
    np.testing.assert_allclose(
        out[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY].numpy(), logits,
        rtol=1e-4, atol=1e-4)


def test_semantic_decoder_only_at_a_different_resolution():
    head = make_head(decoder=True)
    low = head(features(3), training=False)
    assert low[common.PRED_SEMANTIC_LOGITS_KEY].shape == (2, 9, 9, 5)
    assert head._auxiliary_semantic_decoder.built
    head_same = make_head(decoder=True)
    same = head_same(features(9), training=False)
    assert same[common.PRED_SEMANTIC_LOGITS_KEY].shape == (2, 9, 9, 5)
    assert not head_same._auxiliary_semantic_decoder.weights


def test_semantic_decoder_rejects_misordered_low_level_features():
    decoder = heads.SemanticDecoder(
        "feature_semantic", ["res2", "res3"], [2, 4], 4, 6,
        atrous_rates=[1, 2, 3])
    with pytest.raises(ValueError, match="low to high"):
        decoder(features(3), training=False)

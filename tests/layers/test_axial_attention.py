"""Axial attention against a naive reference written with explicit loops."""

import numpy as np
import pytest

from max_deeplab_tf.layers import axial_attention
from tests.layers import helpers

MAX_SPAN = 255


def naive_axial_attention(x, layer):
    """Position-sensitive axial attention, one (batch, head, query) at a time.

    Uses the layer's weights and batch-norm moving statistics (inference).
    """
    x = x.astype(np.float64)
    batch, length, _ = x.shape
    heads = layer.num_heads
    dk = layer.total_key_depth // heads
    dv = layer.total_value_depth // heads
    kd = layer.total_key_depth
    qkv = helpers.bn_inference(x @ layer.qkv_kernel.numpy(),
                               layer._batch_norm_qkv)
    q, k, v = qkv[..., :kd], qkv[..., kd:2 * kd], qkv[..., 2 * kd:]
    tq = layer._query_rpe.embeddings.numpy()
    tk = layer._key_rpe.embeddings.numpy()
    tv = layer._value_rpe.embeddings.numpy()
    bn_sim = layer._batch_norm_similarity
    bn_out = layer._batch_norm_retrieved_output

    def sim_bn(value, term, head):
        def get(name):
            return getattr(bn_sim, name).numpy()[term, 0, head, 0, 0]
        return ((value - get("moving_mean"))
                / np.sqrt(get("moving_variance") + bn_sim.epsilon)
                * get("gamma") + get("beta"))

    def out_bn(value, term, head):
        def get(name):
            return getattr(bn_out, name).numpy()[term, 0, head, 0, :]
        return ((value - get("moving_mean"))
                / np.sqrt(get("moving_variance") + bn_out.epsilon)
                * get("gamma") + get("beta"))

    output = np.zeros((batch, length, heads * dv))
    for b in range(batch):
        for h in range(heads):
            qh = q[b, :, h * dk:(h + 1) * dk]
            kh = k[b, :, h * dk:(h + 1) * dk]
            vh = v[b, :, h * dv:(h + 1) * dv]
            for l in range(length):
                logits = np.zeros(length)
                for m in range(length):
                    index = m - l + MAX_SPAN - 1
                    content = np.dot(qh[l], kh[m])
                    query_pos = np.dot(qh[l], tq[index])
                    key_pos = np.dot(kh[m], tk[index])
                    logits[m] = (sim_bn(content, 0, h) + sim_bn(query_pos, 1, h)
                                 + sim_bn(key_pos, 2, h))
                weights = helpers.softmax(logits)
                content_out = np.zeros(dv)
                position_out = np.zeros(dv)
                for m in range(length):
                    content_out += weights[m] * vh[m]
                    position_out += weights[m] * tv[m - l + MAX_SPAN - 1]
                output[b, l, h * dv:(h + 1) * dv] = (
                    out_bn(content_out, 0, h) + out_bn(position_out, 1, h))
    return output


def make_layer(seed=0, length=5, channels=6):
    layer = axial_attention.AxialAttention(
        total_key_depth=4, total_value_depth=6, num_heads=2, name="height_axis")
    x = np.random.RandomState(seed).normal(
        size=(2, length, channels)).astype(np.float32)
    layer(x)
    helpers.randomize_weights(layer, seed)
    return layer, x


def test_variables_have_deeplab2_shapes():
    layer, _ = make_layer()
    shapes = {v.path.split("/", 1)[1]: tuple(v.shape) for v in layer.weights}
    assert shapes["qkv_kernel"] == (6, 14)
    assert shapes["batch_norm_similarity/gamma"] == (3, 1, 2, 1, 1)
    assert shapes["batch_norm_retrieved_output/moving_variance"] == (
        2, 1, 2, 1, 3)
    assert shapes["batch_norm_qkv/beta"] == (14,)
    assert shapes["query_rpe/embeddings"] == (509, 2)
    assert shapes["key_rpe/embeddings"] == (509, 2)
    assert shapes["value_rpe/embeddings"] == (509, 3)


def test_axial_attention_matches_naive_loops():
    layer, x = make_layer()
    out = layer(x, training=False).numpy()
    np.testing.assert_allclose(out, naive_axial_attention(x, layer),
                               rtol=1e-4, atol=1e-4)


def test_any_length_uses_the_same_tables():
    layer, _ = make_layer(length=5)
    x = np.random.RandomState(7).normal(size=(1, 9, 6)).astype(np.float32)
    np.testing.assert_allclose(layer(x, training=False).numpy(),
                               naive_axial_attention(x, layer), rtol=1e-4,
                               atol=1e-4)


def test_axial_attention_2d_is_height_then_width():
    rng = np.random.RandomState(3)
    x = rng.normal(size=(2, 5, 3, 6)).astype(np.float32)
    layer = axial_attention.AxialAttention2D(
        filters=4, strides=1, key_expansion=1, value_expansion=1.5,
        num_heads=2, name="attention")
    layer(x)
    helpers.randomize_weights(layer)
    out = layer(x, training=False).numpy()
    height, width = layer._height_axis, layer._width_axis
    y = np.zeros((2, 5, 3, 6))
    for column in range(3):
        y[:, :, column] = naive_axial_attention(x[:, :, column], height)
    z = np.zeros_like(y)
    for row in range(5):
        z[:, row] = naive_axial_attention(y[:, row].astype(np.float32), width)
    np.testing.assert_allclose(out, z, rtol=1e-4, atol=1e-4)
    strided = axial_attention.AxialAttention2D(
        filters=4, strides=2, key_expansion=1, value_expansion=1.5,
        num_heads=2, name="attention")
    strided(x)
    strided.set_weights(layer.get_weights())
    # Striding subsamples after each axis: rows before the width attention.
    y2 = y[:, ::2]
    z2 = np.zeros((2, 3, 3, 6))
    for row in range(3):
        z2[:, row] = naive_axial_attention(y2[:, row].astype(np.float32),
                                           width)
    np.testing.assert_allclose(strided(x, training=False).numpy(),
                               z2[:, :, ::2], rtol=1e-4, atol=1e-4)


def test_invalid_depths_are_rejected():
    with pytest.raises(ValueError, match="divisible"):
        axial_attention.AxialAttention(total_key_depth=6, total_value_depth=8,
                                       num_heads=4)
    with pytest.raises(ValueError, match="similarity"):
        axial_attention.AxialAttention(use_query_rpe_similarity=False,
                                       use_key_rpe_similarity=False,
                                       use_content_similarity=False)

"""The dual-path transformer layer against a naive numpy reference."""

import numpy as np
import pytest

from max_deeplab_tf.layers import dual_path_transformer as dpt
from tests.layers import helpers


def conv_bn(x, layer, relu):
    y = x @ layer._conv.kernel.numpy()[0]
    y = helpers.bn_inference(y, layer._batch_norm)
    return np.maximum(y, 0) if relu else y


def bn_per_head(value, bn, head):
    def get(name):
        return getattr(bn, name).numpy()[head]
    return ((value - get("moving_mean")) / np.sqrt(get("moving_variance")
                                                   + bn.epsilon)
            * get("gamma") + get("beta"))


def bn_per_head_channel(value, bn, head):
    def get(name):
        return getattr(bn, name).numpy()[0, head, 0, :]
    return ((value - get("moving_mean")) / np.sqrt(get("moving_variance")
                                                   + bn.epsilon)
            * get("gamma") + get("beta"))


def naive_dual_path(pixel_4d, memory, layer):
    """Memory and pixel updates with explicit loops over examples, heads and
    queries; memory-to-pixel and memory-to-memory logits are exponentiated
    and normalised by their joint sum (one softmax over both key sets)."""
    batch, height, width, channels = pixel_4d.shape
    pixel_in = pixel_4d.reshape(batch, height * width, channels).astype(
        np.float64)
    memory_in = memory.astype(np.float64)
    heads = layer.num_heads
    kd, vd = layer.total_key_depth, layer.total_value_depth
    dk, dv = kd // heads, vd // heads

    mem = conv_bn(memory_in, layer._memory_conv1_bn_act, relu=True)
    pix = conv_bn(np.maximum(pixel_in, 0), layer._pixel_conv1_bn_act,
                  relu=True)
    mem_qkv = conv_bn(mem, layer._memory_qkv_conv_bn, relu=False)
    pix_qkv = conv_bn(pix, layer._pixel_qkv_conv_bn, relu=False)
    mq, mk, mv = mem_qkv[..., :kd], mem_qkv[..., kd:2 * kd], mem_qkv[..., 2 * kd:]
    pq, pk, pv = pix_qkv[..., :kd], pix_qkv[..., kd:2 * kd], pix_qkv[..., 2 * kd:]

    def attend(queries, key_sets, value_sets, op):
        out = np.zeros((batch, queries.shape[1], vd))
        for b in range(batch):
            for h in range(heads):
                hs, vs = slice(h * dk, (h + 1) * dk), slice(h * dv, (h + 1) * dv)
                for i in range(queries.shape[1]):
                    logits = [bn_per_head(keys[b, :, hs] @ queries[b, i, hs],
                                          op._batch_norm_similarity, h)
                              for keys in key_sets]
                    total = sum(np.exp(lg).sum() for lg in logits)
                    retrieved = sum((np.exp(lg) / total) @ values[b, :, vs]
                                    for lg, values in zip(logits, value_sets))
                    out[b, i, vs] = np.maximum(bn_per_head_channel(
                        retrieved, op._batch_norm_retrieved_value, h), 0)
        return out

    mem = attend(mq, [pk, mk], [pv, mv], layer._memory_attention)
    mem = conv_bn(mem, layer._memory_conv3_bn, relu=False)
    memory_out = np.maximum(memory_in + mem, 0)
    ffn = conv_bn(memory_out, layer._memory_ffn_conv1_bn_act, relu=True)
    ffn = conv_bn(ffn, layer._memory_ffn_conv2_bn, relu=False)
    memory_out = np.maximum(memory_out + ffn, 0)
    pix = attend(pq, [mk], [mv], layer._pixel_attention)
    pix = conv_bn(pix, layer._pixel_conv3_bn, relu=False)
    pixel_out = (pixel_in + pix).reshape(batch, height, width, channels)
    return pixel_out, memory_out


def make_layer(seed=0):
    rng = np.random.RandomState(seed)
    pixel = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    memory = rng.normal(size=(2, 5, 7)).astype(np.float32)
    layer = dpt.DualPathTransformerLayer(
        filters=4, num_heads=2, bottleneck_expansion=2, key_expansion=1,
        value_expansion=1.5, feed_forward_network_channels=10,
        name="block1_transformer")
    layer((pixel, memory))
    helpers.randomize_weights(layer, seed)
    return layer, pixel, memory


def test_matches_naive_reference_with_joint_softmax():
    layer, pixel, memory = make_layer()
    pixel_out, memory_out = layer((pixel, memory), training=False)
    expected_pixel, expected_memory = naive_dual_path(pixel, memory, layer)
    assert pixel_out.shape == pixel.shape and memory_out.shape == memory.shape
    np.testing.assert_allclose(memory_out.numpy(), expected_memory,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pixel_out.numpy(), expected_pixel,
                               rtol=1e-4, atol=1e-4)


def test_joint_softmax_differs_from_separate_softmaxes():
    # The reference above is not trivially satisfied: normalising pixel and
    # memory keys separately (two softmaxes, summed) gives another result.
    rng = np.random.RandomState(1)
    pixel_logits, memory_logits = rng.normal(size=6), rng.normal(size=3)
    joint = helpers.softmax(np.concatenate([pixel_logits, memory_logits]))
    separate = np.concatenate([helpers.softmax(pixel_logits),
                               helpers.softmax(memory_logits)])
    assert np.abs(joint - separate).max() > 0.05


def test_attention_operation_matches_einsum_free_reference():
    rng = np.random.RandomState(2)
    query = rng.normal(size=(1, 2, 3, 4)).astype(np.float32)
    key = rng.normal(size=(1, 2, 5, 4)).astype(np.float32)
    value = rng.normal(size=(1, 5, 2, 3)).astype(np.float32)
    op = dpt.AttentionOperation(name="memory_attention")
    op((query, key, value))
    helpers.randomize_weights(op)
    assert tuple(op._batch_norm_similarity.gamma.shape) == (2,)
    assert tuple(op._batch_norm_retrieved_value.gamma.shape) == (1, 2, 1, 3)
    out = op((query, key, value), training=False).numpy()
    expected = np.zeros((1, 3, 6))
    for h in range(2):
        for i in range(3):
            logits = bn_per_head(key[0, h] @ query[0, h, i],
                                 op._batch_norm_similarity, h)
            retrieved = helpers.softmax(logits) @ value[0, :, h]
            expected[0, i, 3 * h:3 * h + 3] = np.maximum(bn_per_head_channel(
                retrieved, op._batch_norm_retrieved_value, h), 0)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)


def test_memory_slot_permutation_is_equivariant():
    layer, pixel, memory = make_layer(seed=3)
    permutation = np.random.RandomState(4).permutation(memory.shape[1])
    pixel_a, memory_a = layer((pixel, memory), training=False)
    pixel_b, memory_b = layer((pixel, memory[:, permutation]), training=False)
    np.testing.assert_allclose(memory_b.numpy(),
                               memory_a.numpy()[:, permutation], rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(pixel_b.numpy(), pixel_a.numpy(), rtol=1e-5,
                               atol=1e-5)


def test_variable_names_and_zero_initialised_residual_gammas():
    pixel = np.zeros((1, 2, 2, 6), np.float32)
    memory = np.zeros((1, 3, 7), np.float32)
    layer = dpt.DualPathTransformerLayer(filters=4, num_heads=2,
                                         feed_forward_network_channels=10)
    layer((pixel, memory))
    names = {v.path.split("/", 1)[1]: tuple(v.shape) for v in layer.weights}
    assert names["memory_qkv_conv_bn/conv/kernel"] == (1, 8, 16)
    assert names["pixel_qkv_conv_bn/conv/kernel"] == (1, 8, 16)
    assert names["pixel_conv3_bn/conv/kernel"] == (1, 8, 6)
    assert names["memory_ffn_conv1_bn_act/conv/kernel"] == (1, 7, 10)
    for branch in ("memory_conv3_bn", "memory_ffn_conv2_bn", "pixel_conv3_bn"):
        np.testing.assert_array_equal(
            getattr(layer, "_" + branch)._batch_norm.gamma.numpy(), 0.0)
    with pytest.raises(ValueError, match="divisible"):
        dpt.DualPathTransformerLayer(filters=4, num_heads=3)

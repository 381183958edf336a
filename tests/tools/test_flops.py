"""FLOP counting: hand-computed counts of small graphs."""

import numpy as np
import pytest

from max_deeplab_tf.tools import flops


@pytest.mark.parametrize("equation, shapes, expected", [
    ("ab,bc->ac", [(2, 3), (3, 4)], 2 * 2 * 3 * 4),
    # The axial attention's query-key product: batch, heads, rows, query
    # and key positions, channels.
    ("bnhqc,bnhkc->bnhqk", [(2, 8, 9, 9, 16), (2, 8, 9, 9, 16)],
     2 * 2 * 8 * 9 * 9 * 9 * 16),
    ("abc->ca", [(2, 3, 5)], 2 * 2 * 3 * 5),  # a sum over b
])
def test_einsum_flops_count_a_multiply_and_add_per_term(equation, shapes,
                                                        expected):
    assert flops.einsum_flops(equation, shapes) == expected
    # Brute force: the number of terms numpy's einsum sums, by counting
    # with all-ones operands (each output element sums its terms).
    ones = [np.ones(s) for s in shapes]
    terms = np.einsum(equation, *ones).sum() if len(shapes) > 1 else None
    if terms is not None:
        assert 2 * terms == expected


@pytest.mark.parametrize("equation, shapes, message", [
    ("...a,ab->...b", [(2, 3), (3, 4)], "explicit"),
    ("ab,bc", [(2, 3), (3, 4)], "explicit"),
    ("ab,bc->ac", [(2, 3)], "2 operands"),
    ("ab,bc->ac", [(2, 3), (4, 5)], "index 'b' is 3 and 4"),
    ("ab,bc->ac", [(2, None), (3, 4)], "has shape"),
])
def test_einsum_flops_refuses_what_it_cannot_count(equation, shapes, message):
    with pytest.raises(ValueError, match=message):
        flops.einsum_flops(equation, shapes)


def test_model_forward_flops_match_hand_counts():
    import keras

    images = keras.Input([9, 9, 4], batch_size=2)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(images)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.Dense(5, use_bias=False)(x)
    # Per-pixel squared norm as an einsum (an op the profiler skips).
    x = keras.layers.Lambda(
        lambda t: keras.ops.einsum("bhwc,bhwc->bhw", t, t))(x)
    model = keras.Model(images, x)
    pixels = 2 * 9 * 9
    conv = 2 * pixels * 3 * 3 * 4 * 8
    depthwise = 2 * pixels * 3 * 3 * 8
    dense = 2 * pixels * 8 * 5
    einsum = 2 * pixels * 5
    counted = flops.model_forward_flops(model, [2, 9, 9, 4])
    assert counted == {"profiler": conv + depthwise + dense,
                       "einsum": einsum,
                       "total": conv + depthwise + dense + einsum}

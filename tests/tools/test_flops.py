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


def _small_model():
    import keras

    images = keras.Input([9, 9, 4], batch_size=2)
    x = keras.layers.Conv2D(8, 3, padding="same", use_bias=False)(images)
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(x)
    x = keras.layers.Dense(5, use_bias=False)(x)
    # Per-pixel squared norm as an einsum (an op the profiler skips).
    x = keras.layers.Lambda(
        lambda t: keras.ops.einsum("bhwc,bhwc->bhw", t, t))(x)
    return keras.Model(images, x)


def _hand_counts():
    """(profiler's ops, einsum) FLOPs of `_small_model` on [2, 9, 9, 4]."""
    pixels = 2 * 9 * 9
    conv = 2 * pixels * 3 * 3 * 4 * 8
    depthwise = 2 * pixels * 3 * 3 * 8
    dense = 2 * pixels * 8 * 5
    einsum = 2 * pixels * 5
    return conv + depthwise + dense, einsum


def test_model_forward_flops_match_hand_counts():
    from tensorflow.python.framework import ops as framework_ops

    others, einsum = _hand_counts()
    counted = flops.model_forward_flops(_small_model(), [2, 9, 9, 4])
    assert counted["total"] == others + einsum
    # Whether the profiler counts the einsum depends on what this process
    # imported (tf-models-official registers a statistic for it).
    registry = framework_ops._stats_registry  # pylint: disable=W0212
    try:
        registry.lookup("Einsum,flops")
        registered = True
    except LookupError:
        registered = False
    assert counted == ({"profiler": others + einsum, "einsum": 0,
                        "total": others + einsum} if registered else
                       {"profiler": others, "einsum": einsum,
                        "total": others + einsum})


def test_einsums_are_counted_once_when_tf_models_registers_them():
    # A fresh process, as the registration cannot be undone.
    import os
    import subprocess
    import sys

    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    code = ("import official.core.train_utils\n"
            "from tests.tools import test_flops\n"
            "from max_deeplab_tf.tools import flops\n"
            "print(flops.model_forward_flops(test_flops._small_model(), "
            "[2, 9, 9, 4]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=300, check=True,
                         cwd=repo_root)
    others, einsum = _hand_counts()
    assert out.stdout.strip().splitlines()[-1] == str(
        {"profiler": others + einsum, "einsum": 0, "total": others + einsum})


def _two_branches():
    """A traced graph with a fetched branch (a matmul) and a branch it does
    not need (a matmul and an einsum), and the hand counts of each."""
    import tensorflow as tf

    @tf.function
    def branches(x):
        fetched = tf.matmul(x, tf.ones([6, 7]))  # [4, 7]
        other = tf.matmul(x, tf.ones([6, 3]))  # [4, 3]
        other = tf.einsum("ab,ab->a", other, other)  # [4]
        return fetched, other

    concrete = branches.get_concrete_function(
        tf.TensorSpec([4, 6], tf.float32))
    fetched = 2 * 4 * 6 * 7
    other_matmul, other_einsum = 2 * 4 * 6 * 3, 2 * 4 * 3
    return concrete, fetched, other_matmul, other_einsum


def test_only_the_ops_the_outputs_need_are_counted():
    concrete, fetched, other_matmul, other_einsum = _two_branches()
    first, second = concrete.outputs
    counted = flops.graph_flops(concrete.graph, outputs=[first])
    assert counted["total"] == fetched
    assert counted["einsum"] == 0
    both = flops.graph_flops(concrete.graph, outputs=[first, second])
    assert both["total"] == fetched + other_matmul + other_einsum
    # Without `outputs`, the whole graph: the same as both outputs here.
    assert flops.graph_flops(concrete.graph)["total"] == both["total"]


def test_fetched_count_agrees_with_the_profiler_on_a_keras_model():
    import tensorflow as tf

    model = _small_model()
    concrete = tf.function(lambda x: model(x, training=False)
                           ).get_concrete_function(
                               tf.TensorSpec([2, 9, 9, 4], tf.float32))
    assert (flops.graph_flops(concrete.graph, outputs=concrete.outputs)
            == flops.graph_flops(concrete.graph))
    others, einsum = _hand_counts()
    assert flops.graph_flops(
        concrete.graph, outputs=concrete.outputs)["total"] == others + einsum

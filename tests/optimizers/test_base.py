"""What every max_deeplab_tf optimizer adds to a Keras 3 optimizer
(optimizers/base.py): here, sparse gradients.

Truths: Adam's and RAdam's update rules written out in numpy (the
references of test_fused_adam and test_radam), applied to the parameter's
gradient, i.e. the sum of a gather's repeated slices per row.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import optimizers
from tests.optimizers import test_fused_adam
from tests.optimizers import test_radam


def _adam_rule(weights, grads, lr):
    return test_fused_adam.numpy_adam(weights, grads, lr)


def _radam_rule(weights, grads, lr):
    return test_radam.radam_reference(weights, grads, lr)[0][-1]


@pytest.mark.parametrize("use_function", [False, True])
@pytest.mark.parametrize("make_optimizer, rule, steps", [
    (lambda: optimizers.Adam(learning_rate=0.01), _adam_rule, 4),
    # 7 steps: RAdam's first five are un-rectified, the last two rectified.
    (lambda: optimizers.RAdam(learning_rate=0.01), _radam_rule, 7)],
    ids=["adam", "radam"])
def test_sparse_gradients_follow_the_rule_on_the_summed_gradient(
        make_optimizer, rule, steps, use_function):
    # A gather's gradient (tf.IndexedSlices) repeats an index once per use
    # of the row; the parameter's gradient is the sum per row (rows never
    # gathered: zero). The rule on that sum is what deeplab2's optimizer
    # computes (tf-keras deduplicates sparse gradients first); Keras 3's
    # own updates square the repeated slices one by one into the second
    # moment, which this test catches (rows 0 and 2 repeat).
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(5, 3)).astype(np.float32)
    indices = np.array([0, 2, 2, 4, 0, 2], np.int32)
    slices = [rng.normal(size=(len(indices), 3)).astype(np.float32)
              for _ in range(steps)]
    variable = keras.Variable(weights)
    optimizer = make_optimizer()
    optimizer.build([variable])

    def step(values):
        optimizer.apply([tf.IndexedSlices(
            values, tf.constant(indices), tf.constant(weights.shape))],
            [variable])

    if use_function:
        step = tf.function(step)
    for values in slices:
        step(tf.constant(values))
    summed = []
    for values in slices:
        dense = np.zeros_like(weights)
        np.add.at(dense, indices, values)
        summed.append(dense)
    np.testing.assert_allclose(variable.numpy(), rule(weights, summed, 0.01),
                               rtol=2e-5, atol=1e-6)
    # Rows 1 and 3 have no gradient and did not move; the others did.
    np.testing.assert_array_equal(variable.numpy()[[1, 3]], weights[[1, 3]])
    assert np.abs(variable.numpy() - weights).max() > 1e-2

"""Tests for max_deeplab_tf.layers.drop_path."""

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.layers import drop_path


def test_schedules_match_hand_computed_values():
    assert drop_path.get_drop_path_keep_prob(0.8, "constant", 1, 4) == 0.8
    # linear: 1 - (1 - 0.8) * stage / 4.
    values = [drop_path.get_drop_path_keep_prob(0.8, "linear", s, 4)
              for s in range(5)]
    np.testing.assert_allclose(values, [1.0, 0.95, 0.9, 0.85, 0.8])
    with pytest.raises(ValueError, match="schedule"):
        drop_path.get_drop_path_keep_prob(0.8, "cosine", 1, 4)


def test_inference_is_identity():
    layer = drop_path.DropPath(0.5)
    x = tf.random.normal([4, 3, 3, 2])
    np.testing.assert_array_equal(layer(x, training=False).numpy(), x.numpy())
    np.testing.assert_array_equal(
        drop_path.DropPath(1.0)(x, training=True).numpy(), x.numpy())


def test_training_drops_whole_examples_and_keeps_expectation():
    tf.random.set_seed(0)
    keep = 0.7
    layer = drop_path.DropPath(keep)
    x = tf.ones([20000, 2, 3])
    out = layer(x, training=True).numpy()
    per_example = out.reshape(20000, -1)
    # Every example is all zeros or all 1 / keep.
    assert np.all(per_example.min(1) == per_example.max(1))
    np.testing.assert_allclose(np.unique(per_example), [0.0, 1.0 / keep],
                               rtol=1e-6)
    kept = np.mean(per_example[:, 0] > 0)
    # Binomial(20000, 0.7): 5 standard deviations is 0.016.
    assert abs(kept - keep) < 0.016
    assert abs(out.mean() - 1.0) < 0.03


def test_invalid_keep_prob_and_config():
    with pytest.raises(ValueError, match="keep_prob"):
        drop_path.DropPath(0.0)
    layer = drop_path.DropPath(0.9, name="dp")
    clone = drop_path.DropPath.from_config(layer.get_config())
    assert clone.keep_prob == 0.9 and clone.name == "dp"

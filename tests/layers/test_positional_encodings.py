"""Tests for max_deeplab_tf.layers.positional_encodings."""

import numpy as np
import pytest

from max_deeplab_tf.layers import positional_encodings as pe


def test_relative_distance_matrix_hand_computed():
    # Centred queries: key j - query i, shifted by max_span - 1 = 4.
    expected = np.array([[4, 5, 6],
                         [3, 4, 5],
                         [2, 3, 4]])
    np.testing.assert_array_equal(pe.relative_distance_matrix(3, 3, 5),
                                  expected)
    # Keys with a flange of 1 on each side of 2 queries.
    expected = np.array([[3, 4, 5, 6],
                         [2, 3, 4, 5]])
    np.testing.assert_array_equal(pe.relative_distance_matrix(2, 4, 5),
                                  expected)
    with pytest.raises(ValueError, match="even"):
        pe.relative_distance_matrix(2, 3)


def test_long_distances_share_the_last_embedding():
    matrix = pe.relative_distance_matrix(7, 7, max_span=3)
    assert matrix.min() == 0 and matrix.max() == 4
    assert matrix[0, 6] == 4 and matrix[6, 0] == 0


def test_embeddings_table_shape_and_gather():
    layer = pe.RelativePositionalEncoding(depth=4, name="query_rpe")
    indices = pe.relative_distance_matrix(5, 5)
    out = layer(indices).numpy()
    table = layer.embeddings.numpy()
    assert table.shape == (509, 4)
    assert out.shape == (5, 5, 4)
    for i in range(5):
        for j in range(5):
            np.testing.assert_array_equal(out[i, j], table[254 + j - i])
    clone = pe.RelativePositionalEncoding.from_config(layer.get_config())
    assert clone.depth == 4 and clone.max_span == 255

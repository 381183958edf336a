"""Relative positional encodings of Axial-DeepLab (Wang et al., ECCV 2020).

Position-sensitive axial attention adds learned embeddings indexed by the
relative distance between a query and a key (Shaw et al., NAACL 2018). One
table holds an embedding for every distance in [-(MAX_SPAN - 1),
MAX_SPAN - 1], i.e. 2 * MAX_SPAN - 1 rows, whatever the input length, so a
model works at any resolution and deeplab2's tables ([509, depth]) load
unchanged. Longer distances share the last embedding.
"""

import numpy as np

import keras
import tensorflow as tf

# deeplab2's constant: larger than any span used (65, 129, 193, ...).
MAX_SPAN = 255


def relative_distance_matrix(query_length: int, key_length: int,
                             max_span: int = MAX_SPAN) -> np.ndarray:
    """Indices into the embedding table for every (query, key) pair.

    Queries and keys are assumed centred: key_length = query_length + 2 *
    flange.

    Args:
      query_length: Number of queries.
      key_length: Number of keys.
      max_span: Half the table size plus one.

    Returns:
      An int32 [query_length, key_length] array, key_index - query_index +
      max_span - 1, clipped to [0, 2 * max_span - 2].

    Raises:
      ValueError: if key_length - query_length is odd.
    """
    if (key_length - query_length) % 2:
        raise ValueError(
            f"key_length ({key_length}) - query_length ({query_length}) must "
            "be even (keys are queries plus a flange on both sides)")
    key_index = np.arange(key_length)
    query_index = np.arange(query_length) + (key_length - query_length) // 2
    distance = key_index[None, :] - query_index[:, None] + max_span - 1
    return np.clip(distance, 0, 2 * max_span - 2).astype(np.int32)


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class RelativePositionalEncoding(keras.layers.Layer):
    """A learned table of relative positional embeddings.

    Args:
      depth: Channels of each embedding (per attention head; the table is
        shared by all heads).
      initialization_std: Standard deviation of the truncated-normal
        initialiser.
      max_span: The table has 2 * max_span - 1 rows.

    Call arguments:
      distance_indices: An int32 tensor of indices into the table, usually
        `relative_distance_matrix(query_length, key_length)`.

    Returns:
      A [*distance_indices.shape, depth] tensor of embeddings.
    """

    def __init__(self, depth: int, initialization_std: float = 1.0,
                 max_span: int = MAX_SPAN, **kwargs):
        super().__init__(**kwargs)
        self.depth = int(depth)
        self.initialization_std = float(initialization_std)
        self.max_span = int(max_span)

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            name="embeddings", shape=(2 * self.max_span - 1, self.depth),
            initializer=keras.initializers.TruncatedNormal(
                stddev=self.initialization_std),
            trainable=True)

    def call(self, distance_indices):
        return tf.gather(self.embeddings, distance_indices)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.depth,)

    def get_config(self):
        config = super().get_config()
        config.update({"depth": self.depth,
                       "initialization_std": self.initialization_std,
                       "max_span": self.max_span})
        return config

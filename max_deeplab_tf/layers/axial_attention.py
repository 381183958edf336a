"""Position-sensitive axial attention (Axial-DeepLab, Wang et al., ECCV 2020).

`AxialAttention` is global multi-head self-attention along the length axis of
a [batch, length, channels] sequence whose similarity is the sum of three
terms, each batch-normalised per (term, head):
  q . k           content similarity,
  q . r^q_{l,m}   query-to-position similarity,
  k . r^k_{l,m}   key-to-position similarity,
and whose output is the sum of two batch-normalised retrievals, per (term,
head, channel): sum_m w_lm v_m and sum_m w_lm r^v_{l,m}. The r are relative
positional encodings shared by all heads. `AxialAttention2D` applies one
along the height axis and then one along the width axis of a feature map.
The computation order and the variables (qkv_kernel, batch_norm_qkv,
batch_norm_similarity [3, 1, heads, 1, 1], batch_norm_retrieved_output
[2, 1, heads, 1, value_depth / heads], query/key/value_rpe embeddings) are
deeplab2's.
"""

from typing import Any, Dict, Optional

import keras
import tensorflow as tf

from max_deeplab_tf.layers import activations
from max_deeplab_tf.layers import base
from max_deeplab_tf.layers import normalization
from max_deeplab_tf.layers import positional_encodings


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class AxialAttention(base.ComposedLayer):
    """Global position-sensitive multi-head attention along one axis.

    Args:
      total_key_depth: Channels of the queries and keys (all heads).
      total_value_depth: Channels of the values and of the output.
      num_heads: Number of heads; must divide both depths.
      use_query_rpe_similarity: Add the query-to-position term.
      use_key_rpe_similarity: Add the key-to-position term.
      use_content_similarity: Add the query-to-key term.
      retrieve_value_rpe: Retrieve the value positional encodings.
      retrieve_value_content: Retrieve the values.
      initialization_std_for_query_key_rpe: Init std of the q/k encodings.
      initialization_std_for_value_rpe: Init std of the value encodings.
      self_attention_activation: 'softmax' or 'sigmoid'.
      max_span: Relative distances beyond max_span - 1 share one embedding.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, length, channels] tensor with a static length.
      training: Batch norm mode.

    Returns:
      A [batch, length, total_value_depth] tensor.
    """

    def __init__(self, total_key_depth: int = 512,
                 total_value_depth: int = 1024, num_heads: int = 8,
                 use_query_rpe_similarity: bool = True,
                 use_key_rpe_similarity: bool = True,
                 use_content_similarity: bool = True,
                 retrieve_value_rpe: bool = True,
                 retrieve_value_content: bool = True,
                 initialization_std_for_query_key_rpe: float = 1.0,
                 initialization_std_for_value_rpe: float = 1.0,
                 self_attention_activation: str = "softmax",
                 max_span: int = positional_encodings.MAX_SPAN,
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if not (use_content_similarity or use_key_rpe_similarity
                or use_query_rpe_similarity):
            raise ValueError(
                f"{self.name}: at least one similarity term must be used")
        if not (retrieve_value_content or retrieve_value_rpe):
            raise ValueError(
                f"{self.name}: retrieve at least one of value content and "
                "value positional encodings")
        if total_key_depth % num_heads or total_value_depth % num_heads:
            raise ValueError(
                f"{self.name}: total_key_depth {total_key_depth} and "
                f"total_value_depth {total_value_depth} must be divisible by "
                f"num_heads {num_heads}")
        self.total_key_depth = int(total_key_depth)
        self.total_value_depth = int(total_value_depth)
        self.num_heads = int(num_heads)
        self.use_query_rpe_similarity = use_query_rpe_similarity
        self.use_key_rpe_similarity = use_key_rpe_similarity
        self.use_content_similarity = use_content_similarity
        self.retrieve_value_rpe = retrieve_value_rpe
        self.retrieve_value_content = retrieve_value_content
        self.initialization_std_for_query_key_rpe = float(
            initialization_std_for_query_key_rpe)
        self.initialization_std_for_value_rpe = float(
            initialization_std_for_value_rpe)
        self.self_attention_activation = self_attention_activation
        self.max_span = int(max_span)
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        self._key_depth_per_head = self.total_key_depth // self.num_heads
        self._value_depth_per_head = self.total_value_depth // self.num_heads
        self._attention_activation_fn = activations.get_activation(
            self_attention_activation)

        self._batch_norm_qkv = normalization.batch_norm(
            axis=-1, name="batch_norm_qkv",
            batch_norm_config=self.batch_norm_config)
        # Stacked similarity terms [terms, batch, heads, length, length]: one
        # statistic per (term, head).
        self._batch_norm_similarity = normalization.batch_norm(
            axis=[0, 2], name="batch_norm_similarity",
            batch_norm_config=self.batch_norm_config)
        # Stacked retrievals [terms, batch, heads, length, depth]: one
        # statistic per (term, head, channel).
        self._batch_norm_retrieved_output = normalization.batch_norm(
            axis=[0, 2, 4], name="batch_norm_retrieved_output",
            batch_norm_config=self.batch_norm_config)
        if use_query_rpe_similarity:
            self._query_rpe = positional_encodings.RelativePositionalEncoding(
                self._key_depth_per_head,
                self.initialization_std_for_query_key_rpe,
                max_span=self.max_span, name="query_rpe")
        if use_key_rpe_similarity:
            self._key_rpe = positional_encodings.RelativePositionalEncoding(
                self._key_depth_per_head,
                self.initialization_std_for_query_key_rpe,
                max_span=self.max_span, name="key_rpe")
        if retrieve_value_rpe:
            self._value_rpe = positional_encodings.RelativePositionalEncoding(
                self._value_depth_per_head,
                self.initialization_std_for_value_rpe,
                max_span=self.max_span, name="value_rpe")

    def build(self, input_shape):
        channels = input_shape[-1]
        # Standard transformer initialisation (SASA, ViT); the batch norms
        # make the model insensitive to it.
        self.qkv_kernel = self.add_weight(
            name="qkv_kernel",
            shape=(channels, 2 * self.total_key_depth + self.total_value_depth),
            initializer=keras.initializers.TruncatedNormal(
                stddev=channels ** -0.5))

    def _project_qkv(self, inputs, length):
        """deeplab2's einsum('nlc,cd->nld'), written as one matmul.

        Args:
          inputs: A [batch, length, channels] tensor.
          length: The static length.

        Returns:
          A [batch, length, 2 * total_key_depth + total_value_depth] tensor.
        """
        # One [batch * length, channels] x [channels, depth] product: oneDNN
        # ran the einsum as `batch` products of `length` rows, 1.6 times
        # slower at the 41x41 maps of a 641 input (its backward too).
        channels = inputs.shape[-1]
        projected = tf.matmul(tf.reshape(inputs, [-1, channels]),
                              self.qkv_kernel)
        return tf.reshape(projected, [-1, length, self.qkv_kernel.shape[-1]])

    def call(self, inputs, training=None):
        length = inputs.shape[1]
        if length is None:
            raise ValueError(
                f"{self.name}: the attention axis must have a static length; "
                f"got input shape {inputs.shape}")
        heads = self.num_heads
        qkv = self._project_qkv(inputs, length)
        qkv = self._batch_norm_qkv(qkv, training=training)
        query, key, value = tf.split(
            qkv, [self.total_key_depth, self.total_key_depth,
                  self.total_value_depth], axis=-1)
        query = tf.transpose(
            tf.reshape(query, [-1, length, heads, self._key_depth_per_head]),
            [0, 2, 1, 3])
        key = tf.transpose(
            tf.reshape(key, [-1, length, heads, self._key_depth_per_head]),
            [0, 2, 1, 3])
        value = tf.reshape(
            value, [-1, length, heads, self._value_depth_per_head])
        distance = positional_encodings.relative_distance_matrix(
            length, length, self.max_span)

        similarities = []
        if self.use_content_similarity:
            similarities.append(tf.einsum("bhld,bhmd->bhlm", query, key))
        if self.use_query_rpe_similarity:
            query_rpe = self._query_rpe(distance)
            similarities.append(
                tf.einsum("bhld,lmd->bhlm", query, query_rpe))
        if self.use_key_rpe_similarity:
            key_rpe = self._key_rpe(distance)
            similarities.append(tf.einsum("bhmd,lmd->bhlm", key, key_rpe))
        similarity = self._batch_norm_similarity(
            tf.stack(similarities), training=training)
        similarity = tf.reduce_sum(similarity, axis=0)
        weights = self._attention_activation_fn(similarity)

        retrieved = []
        if self.retrieve_value_content:
            retrieved.append(tf.einsum("bhlm,bmhd->bhld", weights, value))
        if self.retrieve_value_rpe:
            value_rpe = self._value_rpe(distance)
            retrieved.append(tf.einsum("bhlm,lmd->bhld", weights, value_rpe))
        output = self._batch_norm_retrieved_output(
            tf.stack(retrieved), training=training)
        output = tf.reduce_sum(output, axis=0)
        output = tf.transpose(output, [0, 2, 1, 3])
        return tf.reshape(output, [-1, length, self.total_value_depth])

    def get_config(self):
        config = super().get_config()
        config.update({
            "total_key_depth": self.total_key_depth,
            "total_value_depth": self.total_value_depth,
            "num_heads": self.num_heads,
            "use_query_rpe_similarity": self.use_query_rpe_similarity,
            "use_key_rpe_similarity": self.use_key_rpe_similarity,
            "use_content_similarity": self.use_content_similarity,
            "retrieve_value_rpe": self.retrieve_value_rpe,
            "retrieve_value_content": self.retrieve_value_content,
            "initialization_std_for_query_key_rpe":
                self.initialization_std_for_query_key_rpe,
            "initialization_std_for_value_rpe":
                self.initialization_std_for_value_rpe,
            "self_attention_activation": self.self_attention_activation,
            "max_span": self.max_span,
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class AxialAttention2D(base.ComposedLayer):
    """Height-axis then width-axis axial attention on a feature map.

    Args:
      filters: Base channels; keys get round(filters * key_expansion) and
        values round(filters * value_expansion) channels.
      strides: Output stride (1 or 2), applied by subsampling after each axis.
      key_expansion: Key channel ratio.
      value_expansion: Value (and output) channel ratio.
      num_heads, use_*, retrieve_*, initialization_std_*,
        self_attention_activation, max_span: see AxialAttention.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, height, width, channels] tensor with static height,
        width and channels.
      training: Batch norm mode.

    Returns:
      A [batch, ceil(height / strides), ceil(width / strides),
      round(filters * value_expansion)] tensor.
    """

    def __init__(self, filters: int = 512, strides: int = 1,
                 key_expansion: float = 1, value_expansion: float = 2,
                 num_heads: int = 8, use_query_rpe_similarity: bool = True,
                 use_key_rpe_similarity: bool = True,
                 use_content_similarity: bool = True,
                 retrieve_value_rpe: bool = True,
                 retrieve_value_content: bool = True,
                 initialization_std_for_query_key_rpe: float = 1.0,
                 initialization_std_for_value_rpe: float = 1.0,
                 self_attention_activation: str = "softmax",
                 max_span: int = positional_encodings.MAX_SPAN,
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)
        self.key_expansion = key_expansion
        self.value_expansion = value_expansion
        self._attention_kwargs = dict(
            num_heads=num_heads,
            use_query_rpe_similarity=use_query_rpe_similarity,
            use_key_rpe_similarity=use_key_rpe_similarity,
            use_content_similarity=use_content_similarity,
            retrieve_value_rpe=retrieve_value_rpe,
            retrieve_value_content=retrieve_value_content,
            initialization_std_for_query_key_rpe=(
                initialization_std_for_query_key_rpe),
            initialization_std_for_value_rpe=initialization_std_for_value_rpe,
            self_attention_activation=self_attention_activation,
            max_span=max_span,
            batch_norm_config=normalization.default_batch_norm_config(
                batch_norm_config))
        self.total_key_depth = int(round(filters * key_expansion))
        self.total_value_depth = int(round(filters * value_expansion))
        self._height_axis = AxialAttention(
            self.total_key_depth, self.total_value_depth,
            name="height_axis", **self._attention_kwargs)
        self._width_axis = AxialAttention(
            self.total_key_depth, self.total_value_depth,
            name="width_axis", **self._attention_kwargs)

    def call(self, inputs, training=None):
        _, height, width, channels = inputs.shape
        depth = self.total_value_depth
        # Columns become batch entries for the height axis.
        x = tf.transpose(inputs, [0, 2, 1, 3])
        x = tf.reshape(x, [-1, height, channels])
        x = self._height_axis(x, training=training)
        x = tf.reshape(x, [-1, width, height, depth])
        x = tf.transpose(x, [0, 2, 1, 3])
        if self.strides > 1:
            x = x[:, ::self.strides, :, :]
        strided_height = x.shape[1]
        x = tf.reshape(x, [-1, width, depth])
        x = self._width_axis(x, training=training)
        x = tf.reshape(x, [-1, strided_height, width, depth])
        if self.strides > 1:
            x = x[:, :, ::self.strides, :]
        return x

    def get_config(self):
        config = super().get_config()
        config.update({"filters": self.filters, "strides": self.strides,
                       "key_expansion": self.key_expansion,
                       "value_expansion": self.value_expansion})
        config.update(self._attention_kwargs)
        config["batch_norm_config"] = dict(config["batch_norm_config"])
        return config

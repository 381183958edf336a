"""The dual-path transformer layer of MaX-DeepLab (Wang et al., CVPR 2021).

A pixel path (the CNN feature map, flattened to [batch, pixels, channels])
and a memory path (N slots, [batch, N, channels]) exchange information:
  * memory-to-pixel and memory-to-memory attention, computed as ONE
    attention of the memory queries over the concatenated keys
    [pixel keys; memory keys] (a single softmax over pixels and slots),
  * pixel-to-memory feedback attention (pixel queries over memory keys),
  * a feed-forward network on the memory.
Pixel-to-pixel attention is done by the axial blocks of the same stage.
Every branch is a bottleneck ending in a batch norm whose gamma starts at
zero, added back residually (with drop path), as deeplab2's
DualPathTransformerLayer; attribute and variable names follow deeplab2.
"""

from typing import Any, Dict, Optional

import keras
import tensorflow as tf

from max_deeplab_tf.layers import activations
from max_deeplab_tf.layers import base
from max_deeplab_tf.layers import convolutions
from max_deeplab_tf.layers import drop_path
from max_deeplab_tf.layers import normalization


def split_heads(x, num_heads: int):
    """[batch, length, heads * depth] -> [batch, heads, length, depth]."""
    length, channels = x.shape[1], x.shape[2]
    x = tf.reshape(x, [-1, length, num_heads, channels // num_heads])
    return tf.transpose(x, [0, 2, 1, 3])


def merge_heads(x):
    """[batch, heads, length, depth] -> [batch, length, heads * depth]."""
    _, heads, length, depth = x.shape
    x = tf.transpose(x, [0, 2, 1, 3])
    return tf.reshape(x, [-1, length, heads * depth])


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class AttentionOperation(base.ComposedLayer):
    """Multi-head attention with batch-normalised similarities and outputs.

    similarity = BN_heads(q . k) (one statistic per head), weights =
    softmax over keys, output = act(BN_(head, channel)(weights . v)).

    Args:
      activation: Activation applied to the retrieved values.
      transformer_activation: 'softmax' or 'sigmoid' over the keys.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: (query [batch, heads, queries, depth], key [batch, heads, keys,
        depth], value [batch, keys, heads, value_depth]).
      training: Batch norm mode.

    Returns:
      A [batch, queries, heads * value_depth] tensor.
    """

    def __init__(self, activation: str = "relu",
                 transformer_activation: str = "softmax",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.activation = activation
        self.transformer_activation = transformer_activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        self._batch_norm_similarity = normalization.batch_norm(
            axis=1, name="batch_norm_similarity",
            batch_norm_config=self.batch_norm_config)
        self._batch_norm_retrieved_value = normalization.batch_norm(
            axis=[1, 3], name="batch_norm_retrieved_value",
            batch_norm_config=self.batch_norm_config)
        self._activation_fn = activations.get_activation(activation)
        self._transformer_activation_fn = activations.get_activation(
            transformer_activation)

    def call(self, inputs, training=None):
        query, key, value = inputs
        similarity = tf.einsum("bhld,bhmd->bhlm", query, key)
        similarity = self._batch_norm_similarity(similarity, training=training)
        weights = self._transformer_activation_fn(similarity)
        retrieved = tf.einsum("bhlm,bmhd->bhld", weights, value)
        retrieved = self._batch_norm_retrieved_value(
            retrieved, training=training)
        return merge_heads(self._activation_fn(retrieved))

    def get_config(self):
        config = super().get_config()
        config.update({"activation": self.activation,
                       "transformer_activation": self.transformer_activation,
                       "batch_norm_config": dict(self.batch_norm_config)})
        return config


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class DualPathTransformerLayer(base.ComposedLayer):
    """Memory <-> pixel attention, memory self-attention and memory FFN.

    Args:
      filters: Base channels; the bottleneck has round(filters *
        bottleneck_expansion), keys round(filters * key_expansion) and values
        round(filters * value_expansion) channels.
      num_heads: Attention heads; must divide the key and value depths.
      bottleneck_expansion, key_expansion, value_expansion: Channel ratios.
      feed_forward_network_channels: Hidden channels of the memory FFN (0: no
        FFN).
      use_memory_self_attention: Whether memory queries also attend to memory
        keys (in the same softmax as the pixel keys).
      use_pixel2memory_feedback_attention: Whether pixels attend to the
        memory and are updated.
      transformer_activation: 'softmax' or 'sigmoid'.
      activation: Activation name.
      drop_path_keep_prob: Keep probability of each residual branch.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: (pixel [batch, height, width, pixel_channels], NOT activated;
        memory [batch, N, memory_channels]). Height and width must be
        static.
      training: Batch norm and drop path mode.

    Returns:
      (pixel output [batch, height, width, pixel_channels], NOT activated;
       memory output [batch, N, memory_channels], activated).
    """

    def __init__(self, filters: int = 128, num_heads: int = 8,
                 bottleneck_expansion: float = 2, key_expansion: float = 1,
                 value_expansion: float = 2,
                 feed_forward_network_channels: int = 2048,
                 use_memory_self_attention: bool = True,
                 use_pixel2memory_feedback_attention: bool = True,
                 transformer_activation: str = "softmax",
                 activation: str = "relu", drop_path_keep_prob: float = 1.0,
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.num_heads = int(num_heads)
        self.bottleneck_expansion = bottleneck_expansion
        self.key_expansion = key_expansion
        self.value_expansion = value_expansion
        self.feed_forward_network_channels = int(feed_forward_network_channels)
        self.use_memory_self_attention = use_memory_self_attention
        self.use_pixel2memory_feedback_attention = (
            use_pixel2memory_feedback_attention)
        self.transformer_activation = transformer_activation
        self.activation = activation
        self.drop_path_keep_prob = float(drop_path_keep_prob)
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        bn = self.batch_norm_config
        bottleneck = int(round(filters * bottleneck_expansion))
        self.total_key_depth = int(round(filters * key_expansion))
        self.total_value_depth = int(round(filters * value_expansion))
        if self.total_key_depth % num_heads or self.total_value_depth % num_heads:
            raise ValueError(
                f"{self.name}: key depth {self.total_key_depth} and value depth "
                f"{self.total_value_depth} must be divisible by num_heads "
                f"{num_heads}")
        self._activation_fn = activations.get_activation(activation)
        qkv_initializer = keras.initializers.TruncatedNormal(
            stddev=bottleneck ** -0.5)
        key_value = 2 * self.total_key_depth + self.total_value_depth

        self._memory_conv1_bn_act = convolutions.Conv1DBN(
            bottleneck, use_bias=False, use_bn=True, activation=activation,
            batch_norm_config=bn, name="memory_conv1_bn_act")
        self._pixel_conv1_bn_act = convolutions.Conv1DBN(
            bottleneck, use_bias=False, use_bn=True, activation=activation,
            batch_norm_config=bn, name="pixel_conv1_bn_act")
        if use_memory_self_attention or use_pixel2memory_feedback_attention:
            self._memory_qkv_conv_bn = convolutions.Conv1DBN(
                key_value, use_bias=False, use_bn=True, activation="none",
                kernel_initializer=qkv_initializer, batch_norm_config=bn,
                name="memory_qkv_conv_bn")
        else:
            self._memory_query_conv_bn = convolutions.Conv1DBN(
                self.total_key_depth, use_bias=False, use_bn=True,
                activation="none", kernel_initializer=qkv_initializer,
                batch_norm_config=bn, name="memory_query_conv_bn")
        if use_pixel2memory_feedback_attention:
            self._pixel_qkv_conv_bn = convolutions.Conv1DBN(
                key_value, use_bias=False, use_bn=True, activation="none",
                kernel_initializer=qkv_initializer, batch_norm_config=bn,
                name="pixel_qkv_conv_bn")
        else:
            self._pixel_kv_conv_bn = convolutions.Conv1DBN(
                self.total_key_depth + self.total_value_depth, use_bias=False,
                use_bn=True, activation="none",
                kernel_initializer=qkv_initializer, batch_norm_config=bn,
                name="pixel_kv_conv_bn")
        self._memory_attention = AttentionOperation(
            activation, transformer_activation, batch_norm_config=bn,
            name="memory_attention")
        if use_pixel2memory_feedback_attention:
            self._pixel_attention = AttentionOperation(
                activation, transformer_activation, batch_norm_config=bn,
                name="pixel_attention")
        self._memory_drop_path = drop_path.DropPath(
            self.drop_path_keep_prob, name="memory_drop_path")
        self._memory_ffn_drop_path = drop_path.DropPath(
            self.drop_path_keep_prob, name="memory_ffn_drop_path")
        self._pixel_drop_path = drop_path.DropPath(
            self.drop_path_keep_prob, name="pixel_drop_path")

    def build(self, input_shapes):
        pixel_shape, memory_shape = input_shapes
        bn = self.batch_norm_config
        self._memory_conv3_bn = convolutions.Conv1DBN(
            memory_shape[-1], use_bias=False, use_bn=True,
            bn_gamma_initializer="zeros", activation="none",
            batch_norm_config=bn, name="memory_conv3_bn")
        if self.feed_forward_network_channels > 0:
            self._memory_ffn_conv1_bn_act = convolutions.Conv1DBN(
                self.feed_forward_network_channels, use_bias=False,
                use_bn=True, activation=self.activation, batch_norm_config=bn,
                name="memory_ffn_conv1_bn_act")
            self._memory_ffn_conv2_bn = convolutions.Conv1DBN(
                memory_shape[-1], use_bias=False, use_bn=True,
                bn_gamma_initializer="zeros", activation="none",
                batch_norm_config=bn, name="memory_ffn_conv2_bn")
        if self.use_pixel2memory_feedback_attention:
            self._pixel_conv3_bn = convolutions.Conv1DBN(
                pixel_shape[-1], use_bias=False, use_bn=True,
                bn_gamma_initializer="zeros", activation="none",
                batch_norm_config=bn, name="pixel_conv3_bn")

    def call(self, inputs, training=None):
        pixel_input, memory_input = inputs
        _, height, width, pixel_channels = pixel_input.shape
        if height is None or width is None:
            raise ValueError(
                f"{self.name}: the pixel input needs a static height and width; "
                f"got shape {pixel_input.shape}")
        heads = self.num_heads
        key_depth, value_depth = self.total_key_depth, self.total_value_depth
        num_pixels = height * width
        num_memory = memory_input.shape[1]
        pixel_input = tf.reshape(pixel_input, [-1, num_pixels, pixel_channels])

        memory = self._memory_conv1_bn_act(memory_input, training=training)
        pixel = self._pixel_conv1_bn_act(
            self._activation_fn(pixel_input), training=training)

        if self.use_memory_self_attention or (
                self.use_pixel2memory_feedback_attention):
            memory_qkv = self._memory_qkv_conv_bn(memory, training=training)
            memory_query, memory_key, memory_value = tf.split(
                memory_qkv, [key_depth, key_depth, value_depth], axis=-1)
            memory_key = split_heads(memory_key, heads)
            memory_value = tf.reshape(
                memory_value, [-1, num_memory, heads, value_depth // heads])
        else:
            memory_query = self._memory_query_conv_bn(memory, training=training)
        memory_query = split_heads(memory_query, heads)

        if self.use_pixel2memory_feedback_attention:
            pixel_qkv = self._pixel_qkv_conv_bn(pixel, training=training)
            pixel_query, pixel_key, pixel_value = tf.split(
                pixel_qkv, [key_depth, key_depth, value_depth], axis=-1)
            pixel_query = split_heads(pixel_query, heads)
        else:
            pixel_kv = self._pixel_kv_conv_bn(pixel, training=training)
            pixel_key, pixel_value = tf.split(
                pixel_kv, [key_depth, value_depth], axis=-1)
        pixel_key = split_heads(pixel_key, heads)
        pixel_value = tf.reshape(
            pixel_value, [-1, num_pixels, heads, value_depth // heads])

        # Memory-to-pixel and memory-to-memory attention share one softmax
        # over the concatenated keys.
        if self.use_memory_self_attention:
            keys = tf.concat([pixel_key, memory_key], axis=2)
            values = tf.concat([pixel_value, memory_value], axis=1)
        else:
            keys, values = pixel_key, pixel_value
        memory = self._memory_attention(
            (memory_query, keys, values), training=training)
        memory = self._memory_conv3_bn(memory, training=training)
        memory = self._memory_drop_path(memory, training=training)
        memory_output = self._activation_fn(memory_input + memory)

        if self.feed_forward_network_channels > 0:
            memory = self._memory_ffn_conv1_bn_act(
                memory_output, training=training)
            memory = self._memory_ffn_conv2_bn(memory, training=training)
            memory = self._memory_ffn_drop_path(memory, training=training)
            memory_output = self._activation_fn(memory_output + memory)

        pixel_output = pixel_input
        if self.use_pixel2memory_feedback_attention:
            pixel = self._pixel_attention(
                (pixel_query, memory_key, memory_value), training=training)
            pixel = self._pixel_conv3_bn(pixel, training=training)
            pixel = self._pixel_drop_path(pixel, training=training)
            pixel_output = pixel_input + pixel
        pixel_output = tf.reshape(
            pixel_output, [-1, height, width, pixel_channels])
        return pixel_output, memory_output

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "num_heads": self.num_heads,
            "bottleneck_expansion": self.bottleneck_expansion,
            "key_expansion": self.key_expansion,
            "value_expansion": self.value_expansion,
            "feed_forward_network_channels":
                self.feed_forward_network_channels,
            "use_memory_self_attention": self.use_memory_self_attention,
            "use_pixel2memory_feedback_attention":
                self.use_pixel2memory_feedback_attention,
            "transformer_activation": self.transformer_activation,
            "activation": self.activation,
            "drop_path_keep_prob": self.drop_path_keep_prob,
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config

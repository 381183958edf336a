"""Residual blocks of Axial-ResNets: bottleneck, basic (wide) and axial.

One class covers the three block types of deeplab2's AxialBlock:
  * basic block (Wide-ResNet): 3x3 conv-BN-act, 3x3 conv-BN;
  * bottleneck block (ResNet): 1x1 conv-BN-act, 3x3 conv-BN-act, 1x1 conv-BN;
  * axial block (Axial-DeepLab): 1x1 conv-BN-act, height-axis then
    width-axis attention, activation, 1x1 conv-BN.
The last batch norm of the branch starts with gamma = 0, so that every block
starts as the identity (Goyal et al., 2017). The input is the NON-activated
output of the previous block; the block activates it first, and returns its
own non-activated output (branch + shortcut), as deeplab2's stacked decoder
needs the non-activated features.
"""

from typing import Any, Dict, Optional, Sequence

import keras

from max_deeplab_tf.layers import activations
from max_deeplab_tf.layers import axial_attention
from max_deeplab_tf.layers import base
from max_deeplab_tf.layers import convolutions
from max_deeplab_tf.layers import drop_path
from max_deeplab_tf.layers import normalization

ATTENTION_TYPES = (None, "none", "axial")


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class AxialBlock(base.ComposedLayer):
    """A residual block: basic, bottleneck or axial-attention bottleneck.

    Args:
      filters_list: Two filter counts (basic block: two 3x3 convs) or three
        (bottleneck: 1x1, 3x3 conv or attention, 1x1).
      kernel_size: Spatial kernel size of the 3x3 convolutions.
      strides: Stride, applied by the first spatial operation and the
        shortcut.
      atrous_rate: Dilation of the (first) spatial convolution.
      basic_block_second_conv_atrous_rate: Dilation of a basic block's second
        convolution (defaults to atrous_rate).
      attention_type: None/'none' for convolutions, 'axial' for axial
        attention in place of the 3x3 convolution of a bottleneck.
      axial_layer_config: Keyword arguments of AxialAttention2D
        (key_expansion, value_expansion, num_heads, ...).
      drop_path_keep_prob: Keep probability of the residual branch.
      activation: Activation name.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, height, width, channels] tensor, NOT activated.
      training: Batch norm and drop path mode.

    Returns:
      The non-activated [batch, height / strides, width / strides,
      filters_list[-1]] output.
    """

    def __init__(self, filters_list: Sequence[int], kernel_size: int = 3,
                 strides: int = 1, atrous_rate: int = 1,
                 basic_block_second_conv_atrous_rate: Optional[int] = None,
                 attention_type: Optional[str] = None,
                 axial_layer_config: Optional[Dict[str, Any]] = None,
                 drop_path_keep_prob: float = 1.0, activation: str = "relu",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.filters_list = [int(f) for f in filters_list]
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.atrous_rate = int(atrous_rate)
        if basic_block_second_conv_atrous_rate is None:
            basic_block_second_conv_atrous_rate = atrous_rate
        self.basic_block_second_conv_atrous_rate = int(
            basic_block_second_conv_atrous_rate)
        if attention_type not in ATTENTION_TYPES:
            raise ValueError(
                f"{self.name}: attention_type {attention_type!r} is not one of "
                f"{list(ATTENTION_TYPES)}")
        self.attention_type = None if attention_type == "none" else attention_type
        self.axial_layer_config = dict(axial_layer_config or {})
        self.axial_layer_config.pop("query_shape", None)
        self.axial_layer_config.pop("memory_flange", None)
        if self.axial_layer_config.pop("double_global_attention", False):
            raise ValueError(
                f"{self.name}: double_global_attention has no effect in axial "
                "attention")
        self.drop_path_keep_prob = float(drop_path_keep_prob)
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        self._activation_fn = activations.get_activation(activation)
        bn = self.batch_norm_config

        if len(self.filters_list) == 3:
            self._conv1_bn_act = convolutions.Conv2DSame(
                self.filters_list[0], 1, use_bias=False, use_bn=True,
                activation=activation, batch_norm_config=bn,
                name="conv1_bn_act")
            if self.attention_type is None:
                self._conv2_bn_act = convolutions.Conv2DSame(
                    self.filters_list[1], kernel_size, strides=strides,
                    atrous_rate=atrous_rate, use_bias=False, use_bn=True,
                    activation=activation, batch_norm_config=bn,
                    name="conv2_bn_act")
            else:
                self._attention = axial_attention.AxialAttention2D(
                    filters=self.filters_list[1], strides=strides,
                    batch_norm_config=bn, name="attention",
                    **self.axial_layer_config)
            self._conv3_bn = convolutions.Conv2DSame(
                self.filters_list[2], 1, use_bias=False, use_bn=True,
                bn_gamma_initializer="zeros", activation="none",
                batch_norm_config=bn, name="conv3_bn")
        elif len(self.filters_list) == 2:
            if self.attention_type is not None:
                raise ValueError(
                    f"{self.name}: attention needs a three-filter bottleneck")
            self._conv1_bn_act = convolutions.Conv2DSame(
                self.filters_list[0], kernel_size, strides=strides,
                atrous_rate=atrous_rate, use_bias=False, use_bn=True,
                activation=activation, batch_norm_config=bn,
                name="conv1_bn_act")
            self._conv2_bn = convolutions.Conv2DSame(
                self.filters_list[1], kernel_size,
                atrous_rate=self.basic_block_second_conv_atrous_rate,
                use_bias=False, use_bn=True, bn_gamma_initializer="zeros",
                activation="none", batch_norm_config=bn, name="conv2_bn")
        else:
            raise ValueError(
                f"{self.name}: filters_list must have 2 or 3 entries, got "
                f"{self.filters_list}")
        self._drop_path = drop_path.DropPath(
            self.drop_path_keep_prob, name="drop_path")

    def build(self, input_shape):
        self._shortcut = None
        if input_shape[-1] != self.filters_list[-1]:
            self._shortcut = convolutions.Conv2DSame(
                self.filters_list[-1], 1, strides=self.strides, use_bias=False,
                use_bn=True, activation="none",
                batch_norm_config=self.batch_norm_config, name="shortcut")

    def call(self, inputs, training=None):
        x_in = self._activation_fn(inputs)
        if self._shortcut is not None:
            shortcut = self._shortcut(x_in, training=training)
        elif self.strides != 1:
            shortcut = x_in[:, ::self.strides, ::self.strides, :]
        else:
            shortcut = x_in
        if len(self.filters_list) == 3:
            x = self._conv1_bn_act(x_in, training=training)
            if self.attention_type is None:
                x = self._conv2_bn_act(x, training=training)
            else:
                x = self._activation_fn(self._attention(x, training=training))
            x = self._conv3_bn(x, training=training)
        else:
            x = self._conv1_bn_act(x_in, training=training)
            x = self._conv2_bn(x, training=training)
        x = self._drop_path(x, training=training)
        return x + shortcut

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters_list": list(self.filters_list),
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "atrous_rate": self.atrous_rate,
            "basic_block_second_conv_atrous_rate":
                self.basic_block_second_conv_atrous_rate,
            "attention_type": self.attention_type,
            "axial_layer_config": dict(self.axial_layer_config),
            "drop_path_keep_prob": self.drop_path_keep_prob,
            "activation": self.activation,
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config

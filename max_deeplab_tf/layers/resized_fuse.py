"""Resize-and-sum fusion of features in MaX-DeepLab's stacked decoder."""

from typing import Any, Dict, Optional, Sequence

import keras
import tensorflow as tf

from max_deeplab_tf.layers import activations
from max_deeplab_tf.layers import base
from max_deeplab_tf.layers import convolutions
from max_deeplab_tf.layers import normalization
from max_deeplab_tf.layers import resize

# How each input reaches the output resolution and channels:
#   'resize':  channels already match; bilinear resize only.
#   'strided': act - 1x1 conv stride 2 - BN (the input has twice the size).
#   'project': act - 1x1 conv - BN, then bilinear resize.
INPUT_MODES = ("resize", "strided", "project")


def input_mode(feature_shape: Sequence[int], target_size: Sequence[int],
               num_channels: int) -> str:
    """deeplab2's choice of fusion path for one input.

    Args:
      feature_shape: [batch, height, width, channels] of the input.
      target_size: (height, width) of the output.
      num_channels: Channels of the output.

    Returns:
      One of INPUT_MODES.
    """
    _, height, width, channels = feature_shape
    if channels == num_channels:
        return "resize"
    if (height + 1) // 2 == target_size[0] and (width + 1) // 2 == target_size[1]:
        return "strided"
    return "project"


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class ResizedFuse(base.ComposedLayer):
    """Projects, resizes (align-corners bilinear) and sums features.

    The sum is NOT activated; inputs that need a projection are activated
    first (relu - conv - BN, the summation sitting before the activation as
    in a ResNet bottleneck).

    Args:
      num_channels: Channels of the output.
      input_modes: One entry of INPUT_MODES per input (see `input_mode`);
        input i that needs a convolution gets the attribute
        `_strided_conv_bn{i+1}` or `_resized_conv_bn{i+1}`, as deeplab2.
      activation: Activation name.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A list of [batch, height_i, width_i, channels_i] tensors with
        static shapes.
      target_size: (height, width) of the output.
      training: Batch norm mode.

    Returns:
      A [batch, target_size[0], target_size[1], num_channels] tensor.
    """

    def __init__(self, num_channels: int, input_modes: Sequence[str],
                 activation: str = "relu",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_channels = int(num_channels)
        self.input_modes = list(input_modes)
        unknown = [m for m in self.input_modes if m not in INPUT_MODES]
        if unknown:
            raise ValueError(
                f"{self.name}: input modes {unknown} are not in "
                f"{list(INPUT_MODES)}")
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        self._activation_fn = activations.get_activation(activation)
        for index, mode in enumerate(self.input_modes):
            if mode == "strided":
                attribute = f"_strided_conv_bn{index + 1}"
                strides = 2
            elif mode == "project":
                attribute = f"_resized_conv_bn{index + 1}"
                strides = 1
            else:
                continue
            setattr(self, attribute, convolutions.Conv2DSame(
                self.num_channels, 1, strides=strides, use_bias=False,
                use_bn=True, activation="none",
                batch_norm_config=self.batch_norm_config, name=attribute[1:]))

    def call(self, inputs, target_size=None, training=None):
        if len(inputs) != len(self.input_modes):
            raise ValueError(
                f"{self.name}: expected {len(self.input_modes)} inputs, got "
                f"{len(inputs)}")
        if target_size is None:
            raise ValueError(f"{self.name}: target_size is required")
        target_size = (int(target_size[0]), int(target_size[1]))
        self._built_target_size = target_size
        outputs = []
        for index, (feature, mode) in enumerate(zip(inputs, self.input_modes)):
            expected = input_mode(feature.shape, target_size, self.num_channels)
            if expected != mode:
                raise ValueError(
                    f"{self.name}: input {index} of shape {feature.shape} needs "
                    f"fusion mode {expected!r} for output size {target_size} "
                    f"with {self.num_channels} channels, but the layer was "
                    f"built for {mode!r}; is the image size k * "
                    "output_stride + 1?")
            if mode == "resize":
                outputs.append(resize.resize_bilinear(feature, target_size))
            elif mode == "strided":
                conv = getattr(self, f"_strided_conv_bn{index + 1}")
                outputs.append(conv(self._activation_fn(feature),
                                    training=training))
            else:
                conv = getattr(self, f"_resized_conv_bn{index + 1}")
                x = conv(self._activation_fn(feature), training=training)
                outputs.append(resize.resize_bilinear(x, target_size))
        return tf.add_n(outputs)

    def get_build_config(self):
        config = super().get_build_config()
        target_size = getattr(self, "_built_target_size", None)
        if config is not None and target_size is not None:
            config["target_size"] = list(target_size)
        return config

    def _symbolic_call_kwargs(self, build_config):
        return {"target_size": build_config.get("target_size")}

    def get_config(self):
        config = super().get_config()
        config.update({"num_channels": self.num_channels,
                       "input_modes": list(self.input_modes),
                       "activation": self.activation,
                       "batch_norm_config": dict(self.batch_norm_config)})
        return config

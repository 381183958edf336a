"""A stage of residual blocks, each optionally followed by a dual-path
transformer layer (MaX-DeepLab's pixel path + memory path)."""

import math
from typing import Any, Dict, Optional

import keras

from max_deeplab_tf.layers import axial_blocks
from max_deeplab_tf.layers import base
from max_deeplab_tf.layers import drop_path
from max_deeplab_tf.layers import dual_path_transformer
from max_deeplab_tf.layers import normalization

BACKBONE_TYPES = ("resnet", "resnet_beta", "wider_resnet")
# Variables whose path contains this word belong to the transformer, which is
# not part of an ImageNet-pretrained backbone (deeplab2's convention).
TRANSFORMER = "transformer"


def _is_power_of_two(value: int) -> bool:
    return value > 0 and not value & (value - 1)


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class BlockGroup(base.ComposedLayer):
    """Residual blocks at one resolution, with optional dual-path transformers.

    Strides, atrous rates, block types and drop-path probabilities follow
    deeplab2's BlockGroup: strides are taken by the first block when the
    stage's original ResNet input stride is below output_stride, otherwise
    atrous rates keep the resolution; blocks at an original stride of at
    least use_axial_beyond_stride are axial-attention bottlenecks; a
    transformer follows every block at an original stride of at least
    use_transformer_beyond_stride.

    Args:
      filters: Base channels of the blocks (outputs have 4 * filters).
      num_blocks: Number of residual blocks.
      original_resnet_stride: Stride of this stage in the original ResNet.
      original_resnet_input_stride: Input stride of this stage in the
        original ResNet (a power of 2).
      output_stride: The network's output stride (a power of 2).
      backbone_type: 'resnet', 'resnet_beta' or 'wider_resnet'.
      use_axial_beyond_stride: Axial blocks from this original stride on (0:
        never).
      use_transformer_beyond_stride: Transformers from this original stride
        on (0: never).
      transformer_expansion: The transformer has int(128 * expansion) base
        filters.
      drop_path_keep_prob: Keep probability at the last stage.
      drop_path_beyond_stride: Drop path from this original stride on.
      drop_path_schedule: 'constant' or 'linear'.
      activation: Activation name.
      attention_bottleneck_expansion: First 1x1 conv of an axial block has
        filters * this channels.
      axial_layer_config: Keyword arguments of AxialAttention2D.
      dual_path_transformer_layer_config: Keyword arguments of
        DualPathTransformerLayer.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      features: A [batch, height, width, channels] tensor, NOT activated.
      memory: A [batch, N, memory_channels] tensor, or None when the group
        has no transformer.
      training: Batch norm and drop path mode.

    Returns:
      (features [batch, height', width', 4 * filters], NOT activated;
       memory [batch, N, memory_channels] or None).
    """

    def __init__(self, filters: int, num_blocks: int,
                 original_resnet_stride: int,
                 original_resnet_input_stride: int, output_stride: int = 16,
                 backbone_type: str = "resnet_beta",
                 use_axial_beyond_stride: int = 16,
                 use_transformer_beyond_stride: int = 32,
                 transformer_expansion: float = 1.0,
                 drop_path_keep_prob: float = 0.8,
                 drop_path_beyond_stride: int = 16,
                 drop_path_schedule: str = "constant",
                 activation: str = "relu",
                 attention_bottleneck_expansion: int = 2,
                 axial_layer_config: Optional[Dict[str, Any]] = None,
                 dual_path_transformer_layer_config: Optional[
                     Dict[str, Any]] = None,
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if not _is_power_of_two(original_resnet_input_stride):
            raise ValueError(
                f"{self.name}: original_resnet_input_stride "
                f"{original_resnet_input_stride} is not a power of 2")
        if not _is_power_of_two(output_stride):
            raise ValueError(
                f"{self.name}: output_stride {output_stride} is not a power "
                "of 2")
        if backbone_type not in BACKBONE_TYPES:
            raise ValueError(
                f"{self.name}: backbone_type {backbone_type!r} is not one of "
                f"{list(BACKBONE_TYPES)}")
        self.filters = int(filters)
        self.num_blocks = int(num_blocks)
        self.original_resnet_stride = int(original_resnet_stride)
        self.original_resnet_input_stride = int(original_resnet_input_stride)
        self.output_stride = int(output_stride)
        self.backbone_type = backbone_type
        self.use_axial_beyond_stride = int(use_axial_beyond_stride)
        self.use_transformer_beyond_stride = int(use_transformer_beyond_stride)
        self.transformer_expansion = float(transformer_expansion)
        self.drop_path_keep_prob = float(drop_path_keep_prob)
        self.drop_path_beyond_stride = int(drop_path_beyond_stride)
        self.drop_path_schedule = drop_path_schedule
        self.activation = activation
        self.attention_bottleneck_expansion = attention_bottleneck_expansion
        self.axial_layer_config = dict(axial_layer_config or {})
        self.dual_path_transformer_layer_config = dict(
            dual_path_transformer_layer_config or {})
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)

        current_stride = original_resnet_input_stride
        self._block_names = []
        self._transformer_names = []
        for index in range(self.num_blocks):
            block_name = f"_block{index + 1}"
            transformer_name = f"_block{index + 1}_{TRANSFORMER}"
            strides = (original_resnet_stride if index == 0
                       and original_resnet_input_stride < output_stride else 1)
            atrous_rate = (current_stride // output_stride
                           if current_stride > output_stride else 1)
            full_stride = original_resnet_input_stride * original_resnet_stride
            if index == 0 and full_stride > output_stride:
                second_atrous_rate = full_stride // output_stride
            else:
                second_atrous_rate = atrous_rate
            stage = int(round(math.log2(current_stride) - 1))
            if current_stride >= drop_path_beyond_stride:
                keep_prob = drop_path.get_drop_path_keep_prob(
                    drop_path_keep_prob, drop_path_schedule,
                    current_stage=stage, num_stages=4)
            else:
                keep_prob = 1.0
            if current_stride >= use_axial_beyond_stride > 0:
                attention_type = "axial"
                filters_list = [filters * attention_bottleneck_expansion,
                                filters, filters * 4]
            elif backbone_type in ("resnet", "resnet_beta"):
                attention_type = None
                filters_list = [filters, filters, filters * 4]
            elif full_stride < 32:
                # Wide-ResNet: basic blocks except in the last stage.
                attention_type = None
                filters_list = [filters * 4, filters * 4]
            else:
                attention_type = None
                filters_list = [filters, filters * 2, filters * 4]
            setattr(self, block_name, axial_blocks.AxialBlock(
                filters_list, kernel_size=3, strides=strides,
                atrous_rate=atrous_rate,
                basic_block_second_conv_atrous_rate=second_atrous_rate,
                attention_type=attention_type,
                axial_layer_config=self.axial_layer_config,
                drop_path_keep_prob=keep_prob, activation=activation,
                batch_norm_config=self.batch_norm_config,
                name=block_name[1:]))
            self._block_names.append(block_name)
            if index == 0 and original_resnet_stride > 1:
                current_stride *= original_resnet_stride
            if current_stride >= use_transformer_beyond_stride > 0:
                setattr(self, transformer_name,
                        dual_path_transformer.DualPathTransformerLayer(
                            filters=int(128 * transformer_expansion),
                            activation=activation,
                            drop_path_keep_prob=keep_prob,
                            batch_norm_config=self.batch_norm_config,
                            name=transformer_name[1:],
                            **self.dual_path_transformer_layer_config))
                self._transformer_names.append(transformer_name)
            else:
                self._transformer_names.append(None)

    @property
    def has_transformer(self) -> bool:
        return any(name is not None for name in self._transformer_names)

    def build(self, features_shape, memory_shape=None):
        # Named shapes so that Keras records the memory's shape too.
        del features_shape, memory_shape

    def call(self, features, memory=None, training=None):
        if self.has_transformer and memory is None:
            raise ValueError(
                f"{self.name}: this block group has transformer layers and "
                "needs the memory input")
        for block_name, transformer_name in zip(self._block_names,
                                                self._transformer_names):
            features = getattr(self, block_name)(features, training=training)
            if transformer_name is not None:
                features, memory = getattr(self, transformer_name)(
                    (features, memory), training=training)
        return features, memory

    def get_config(self):
        config = super().get_config()
        config.update({
            "filters": self.filters,
            "num_blocks": self.num_blocks,
            "original_resnet_stride": self.original_resnet_stride,
            "original_resnet_input_stride": self.original_resnet_input_stride,
            "output_stride": self.output_stride,
            "backbone_type": self.backbone_type,
            "use_axial_beyond_stride": self.use_axial_beyond_stride,
            "use_transformer_beyond_stride":
                self.use_transformer_beyond_stride,
            "transformer_expansion": self.transformer_expansion,
            "drop_path_keep_prob": self.drop_path_keep_prob,
            "drop_path_beyond_stride": self.drop_path_beyond_stride,
            "drop_path_schedule": self.drop_path_schedule,
            "activation": self.activation,
            "attention_bottleneck_expansion":
                self.attention_bottleneck_expansion,
            "axial_layer_config": dict(self.axial_layer_config),
            "dual_path_transformer_layer_config":
                dict(self.dual_path_transformer_layer_config),
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config

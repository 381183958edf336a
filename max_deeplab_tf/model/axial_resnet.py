"""Axial-ResNet encoder with MaX-DeepLab's memory path and stacked decoder.

The encoder of deeplab2's MaX-DeepLab (model/encoder/axial_resnet.py):
  stem -> stages 2..5 (or 1..5 for Wide-ResNets) of residual / axial blocks
  with dual-path transformers beyond a stride -> optional stacked decoder
  (hour-glass: down to the output stride and up to stride 4, repeated) ->
  memory heads for class and mask features.
The pixel path carries NON-activated features between block groups; the
memory path starts from a learned [1, N, C] memory feature.

Layer attributes carry deeplab2's names (`_stem`, `_stage5`,
`_decoder_stage1_extra_resized_fuse`, `memory_feature`, ...), which is what
deeplab2 checkpoints are keyed by. Layers whose name contains 'extra' or
'transformer', and the memory feature, are not part of the ImageNet-
pretrainable backbone.
"""

import copy
from typing import Any, Dict, List, Optional, Sequence

import keras
import tensorflow as tf

from max_deeplab_tf.layers import activations
from max_deeplab_tf.layers import base
from max_deeplab_tf.layers import block_group
from max_deeplab_tf.layers import convolutions
from max_deeplab_tf.layers import normalization
from max_deeplab_tf.layers import resized_fuse
from max_deeplab_tf.layers import stems

EXTRA = "extra"
MEMORY_FEATURE = "memory_feature"
TRANSFORMER = block_group.TRANSFORMER


def scale_size(size: int, scale: float) -> int:
    """deeplab2's size of a k * stride + 1 input after scaling by `scale`."""
    return int((float(size) - 1.0) * scale + 1.0)


def _decoder_schedule(output_stride: int, high_resolution_output_stride: int,
                      backbone_decoder_num_stacks: int,
                      extra_decoder_num_stacks: int):
    """The stacked decoder's stages, as deeplab2 walks them.

    Yields (decoder_stage, stride, original_resnet_input_stride,
    is_backbone_block, ends_backbone, is_high_resolution): the stage number
    (from 1), its stride, the original ResNet input stride used to size it,
    whether its block group belongs to the backbone, whether the backbone
    ends at this stage, and whether it outputs a high-resolution feature.
    """
    total_stacks = backbone_decoder_num_stacks + extra_decoder_num_stacks
    current_stack = 0
    is_backbone = backbone_decoder_num_stacks != 0
    going_down = True
    stride = output_stride
    stage = 0
    while current_stack < total_stacks or stride > high_resolution_output_stride:
        stage += 1
        stride = stride // 2 if going_down else stride * 2
        if stride == output_stride:
            current_stack += 1
            going_down = True
            original_input_stride = 32
        else:
            original_input_stride = stride
        block_in_backbone = is_backbone
        ends_backbone = (stride == output_stride
                         and current_stack == backbone_decoder_num_stacks)
        if ends_backbone:
            is_backbone = False
        high_resolution = stride == high_resolution_output_stride
        if high_resolution:
            going_down = False
        yield (stage, stride, original_input_stride, block_in_backbone,
               ends_backbone, high_resolution)


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class AxialResNet(base.ComposedLayer):
    """MaX-DeepLab's encoder (Axial-ResNet / Wide-ResNet + transformers).

    Args (deeplab2's names and meanings):
      num_blocks: Blocks in the last four stages (before
        backbone_layer_multiplier); Wide-ResNets get 3 more in a first stage.
      backbone_layer_multiplier: Block-count multiplier.
      width_multiplier: Channel multiplier of the stages.
      stem_width_multiplier: Channel multiplier of the stem.
      output_stride: 16 or 32.
      classification_mode: Only build the backbone; call returns endpoints up
        to 'backbone_output'.
      backbone_type: 'resnet', 'resnet_beta' or 'wider_resnet'.
      use_axial_beyond_stride: Axial blocks from this original stride on.
      backbone_use_transformer_beyond_stride: Transformers in the backbone
        from this stride on (0: none).
      extra_decoder_use_transformer_beyond_stride: Same in the extra
        (non-backbone) decoder.
      backbone_decoder_num_stacks, extra_decoder_num_stacks: Stacked decoder
        hour-glasses in the backbone and after it.
      backbone_decoder_blocks_per_stage, extra_decoder_blocks_per_stage:
        Blocks per decoder stage.
      num_mask_slots: N, the memory length.
      memory_channels: Channels of the memory path.
      base_transformer_expansion: Transformer width at stride 16 (scaled
        with the stride elsewhere).
      global_feed_forward_network_channels: Channels of the class and mask
        feature heads on the memory.
      high_resolution_output_stride: Stride of the panoptic feature (4).
      activation: Activation name.
      block_group_config: Extra BlockGroup arguments
        (attention_bottleneck_expansion, drop_path_keep_prob,
        drop_path_beyond_stride, drop_path_schedule, axial_layer_config,
        dual_path_transformer_layer_config).
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, height, width, 3] image in [-1, 1] with static
        height and width.
      training: Batch norm and drop path mode.

    Returns:
      A dict of endpoints: 'stage1'..'stage5' (non-activated) and
      'res1'..'res5' (activated) backbone features; 'backbone_output'; and
      unless classification_mode: 'feature_panoptic' [batch, H/4, W/4, C],
      'feature_semantic', 'transformer_class_feature' and
      'transformer_mask_feature' [batch, N, global_ffn_channels].
    """

    def __init__(self, num_blocks: Sequence[int] = (3, 4, 6, 3),
                 backbone_layer_multiplier: float = 1.0,
                 width_multiplier: float = 1.0,
                 stem_width_multiplier: float = 1.0,
                 output_stride: int = 16, classification_mode: bool = False,
                 backbone_type: str = "resnet_beta",
                 use_axial_beyond_stride: int = 16,
                 backbone_use_transformer_beyond_stride: int = 32,
                 extra_decoder_use_transformer_beyond_stride: int = 32,
                 backbone_decoder_num_stacks: int = 0,
                 backbone_decoder_blocks_per_stage: int = 1,
                 extra_decoder_num_stacks: int = 0,
                 extra_decoder_blocks_per_stage: int = 1,
                 num_mask_slots: int = 128, memory_channels: int = 256,
                 base_transformer_expansion: float = 1.0,
                 global_feed_forward_network_channels: int = 256,
                 high_resolution_output_stride: int = 4,
                 activation: str = "relu",
                 block_group_config: Optional[Dict[str, Any]] = None,
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if extra_decoder_blocks_per_stage <= 0:
            raise ValueError(
                f"{self.name}: extra_decoder_blocks_per_stage must be > 0")
        if use_axial_beyond_stride == 1:
            raise ValueError(
                f"{self.name}: fully axial models (use_axial_beyond_stride=1) "
                "are not supported")
        if output_stride not in (8, 16, 32):
            raise ValueError(
                f"{self.name}: output_stride {output_stride} is not 8, 16 or 32")
        self.num_blocks = [int(n) for n in num_blocks]
        self.backbone_layer_multiplier = float(backbone_layer_multiplier)
        self.width_multiplier = float(width_multiplier)
        self.stem_width_multiplier = float(stem_width_multiplier)
        self.output_stride = int(output_stride)
        self.classification_mode = classification_mode
        self.backbone_type = backbone_type
        self.use_axial_beyond_stride = int(use_axial_beyond_stride)
        self.backbone_use_transformer_beyond_stride = int(
            backbone_use_transformer_beyond_stride)
        self.extra_decoder_use_transformer_beyond_stride = int(
            extra_decoder_use_transformer_beyond_stride)
        self.backbone_decoder_num_stacks = int(backbone_decoder_num_stacks)
        self.backbone_decoder_blocks_per_stage = int(
            backbone_decoder_blocks_per_stage)
        self.extra_decoder_num_stacks = int(extra_decoder_num_stacks)
        self.extra_decoder_blocks_per_stage = int(
            extra_decoder_blocks_per_stage)
        self.num_mask_slots = int(num_mask_slots)
        self.memory_channels = int(memory_channels)
        self.base_transformer_expansion = float(base_transformer_expansion)
        self.global_feed_forward_network_channels = int(
            global_feed_forward_network_channels)
        self.high_resolution_output_stride = int(high_resolution_output_stride)
        self.activation = activation
        self.block_group_config = copy.deepcopy(block_group_config or {})
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        self._activation_fn = activations.get_activation(activation)
        self._build_layers()

    # Construction, following deeplab2's AxialResNet.__init__ and .build.
    def _group(self, attribute: str, **kwargs) -> block_group.BlockGroup:
        group = block_group.BlockGroup(
            output_stride=self.output_stride, backbone_type=self.backbone_type,
            use_axial_beyond_stride=self.use_axial_beyond_stride,
            activation=self.activation,
            batch_norm_config=self.batch_norm_config, name=attribute[1:],
            **kwargs, **self.block_group_config)
        setattr(self, attribute, group)
        return group

    def _build_layers(self):
        bn = self.batch_norm_config
        total_strides = [1, 2, 4, 8, 16]
        num_blocks = [3] + [int(n * self.backbone_layer_multiplier)
                            for n in self.num_blocks]
        strides = [2] * 5
        expansions = [self.base_transformer_expansion * s / 16.0
                      for s in total_strides]
        filters = []
        for index, stride in enumerate(total_strides):
            multiplier = (self.stem_width_multiplier
                          if self.backbone_type == "wider_resnet" and index == 0
                          else self.width_multiplier)
            filters.append(int(round(stride * 32 * multiplier)))
        self._use_memory_feature = bool(
            self.backbone_use_transformer_beyond_stride
            or (self.extra_decoder_use_transformer_beyond_stride
                and not self.classification_mode))

        stem_channels = int(round(64 * self.stem_width_multiplier))
        if self.backbone_type == "wider_resnet":
            self._stem = convolutions.Conv2DSame(
                stem_channels, 3, strides=2, use_bias=False, use_bn=True,
                activation="none", batch_norm_config=bn, name="stem")
            first_block_index = 0
            strides[0] = 1
            total_strides[0] = 2
            stem_out = stem_channels
        elif self.backbone_type == "resnet_beta":
            self._stem = stems.InceptionStem(
                width_multiplier=self.stem_width_multiplier,
                activation=self.activation, batch_norm_config=bn, name="stem")
            first_block_index = 1
            stem_out = int(128 * self.stem_width_multiplier)
        elif self.backbone_type == "resnet":
            self._stem = convolutions.Conv2DSame(
                stem_channels, 7, strides=2, use_bias=False, use_bn=True,
                activation="none", batch_norm_config=bn, name="stem")
            first_block_index = 1
            stem_out = stem_channels
        else:
            raise ValueError(
                f"{self.name}: backbone_type {self.backbone_type!r} is not "
                f"one of {list(block_group.BACKBONE_TYPES)}")
        self._first_block_index = first_block_index

        # (channels, stride) of each endpoint, to choose the fusion paths.
        out_stride = self.output_stride
        feature_info = {"stage1": (stem_out, 2)}
        self._backbone_layer_names = ["_stem"]
        for index in range(first_block_index, 5):
            self._group(
                f"_stage{index + 1}", filters=filters[index],
                num_blocks=num_blocks[index],
                original_resnet_stride=strides[index],
                original_resnet_input_stride=total_strides[index],
                use_transformer_beyond_stride=(
                    self.backbone_use_transformer_beyond_stride),
                transformer_expansion=expansions[index])
            self._backbone_layer_names.append(f"_stage{index + 1}")
            feature_info[f"stage{index + 1}"] = (
                filters[index] * 4, min(2 ** (index + 1), out_stride))

        self._decoder_stages = []
        if self.backbone_decoder_num_stacks == 0 and self.classification_mode:
            return
        current = feature_info["stage5"]
        if self.backbone_decoder_num_stacks == 0:
            self._group(
                f"_stage5_{EXTRA}", filters=filters[-1],
                num_blocks=self.extra_decoder_blocks_per_stage,
                original_resnet_stride=1, original_resnet_input_stride=32,
                use_transformer_beyond_stride=(
                    self.extra_decoder_use_transformer_beyond_stride),
                transformer_expansion=self.base_transformer_expansion)
            current = (filters[-1] * 4, out_stride)
        stride_to_features = {
            min(2, out_stride): [feature_info["stage1"]],
            min(4, out_stride): [feature_info["stage2"]],
            min(8, out_stride): [feature_info["stage3"]],
            min(16, out_stride): [feature_info["stage4"]],
        }
        stride_to_features[min(32, out_stride)] = [current]

        for (stage, stride, original_input_stride, block_in_backbone,
             ends_backbone, high_resolution) in _decoder_schedule(
                 out_stride, self.high_resolution_output_stride,
                 self.backbone_decoder_num_stacks,
                 self.extra_decoder_num_stacks):
            decoder_channels = original_input_stride * 64 * self.width_multiplier
            fuse_channels = int(round(decoder_channels))
            group_filters = int(decoder_channels // 4)
            expansion = self.base_transformer_expansion * stride / 16.0
            inputs = [current] + stride_to_features[stride][-2:]
            modes = []
            for channels, feature_stride in inputs:
                if channels == fuse_channels:
                    modes.append("resize")
                elif feature_stride * 2 == stride:
                    modes.append("strided")
                else:
                    modes.append("project")
            fuse_name = (f"_decoder_stage{stage}_resized_fuse"
                         if block_in_backbone
                         else f"_decoder_stage{stage}_{EXTRA}_resized_fuse")
            fuse = resized_fuse.ResizedFuse(
                fuse_channels, modes, activation=self.activation,
                batch_norm_config=bn, name=fuse_name[1:])
            setattr(self, fuse_name, fuse)
            entry = {"stage": stage, "stride": stride, "fuse": fuse_name,
                     "backbone_group": None, "extra_group": None,
                     "ends_backbone": ends_backbone,
                     "high_resolution": high_resolution}
            if block_in_backbone:
                name = f"_decoder_stage{stage}"
                self._backbone_layer_names += [fuse_name, name]
                self._group(
                    name, filters=group_filters,
                    num_blocks=self.backbone_decoder_blocks_per_stage,
                    original_resnet_stride=1,
                    original_resnet_input_stride=original_input_stride,
                    use_transformer_beyond_stride=(
                        self.backbone_use_transformer_beyond_stride),
                    transformer_expansion=expansion)
                entry["backbone_group"] = name
            if ends_backbone and self.classification_mode:
                self._decoder_stages.append(entry)
                return
            if not block_in_backbone or ends_backbone:
                name = f"_decoder_stage{stage}_{EXTRA}"
                self._group(
                    name, filters=group_filters,
                    num_blocks=self.extra_decoder_blocks_per_stage,
                    original_resnet_stride=1,
                    original_resnet_input_stride=original_input_stride,
                    use_transformer_beyond_stride=(
                        self.extra_decoder_use_transformer_beyond_stride),
                    transformer_expansion=expansion)
                entry["extra_group"] = name
            self._decoder_stages.append(entry)
            current = (group_filters * 4, stride)
            stride_to_features[stride].append(current)

        if (self.backbone_use_transformer_beyond_stride
                or self.extra_decoder_use_transformer_beyond_stride):
            for attribute in (f"_class_feature_{EXTRA}",
                              f"_mask_feature_{EXTRA}"):
                setattr(self, attribute, convolutions.Conv1DBN(
                    self.global_feed_forward_network_channels, use_bias=False,
                    use_bn=True, activation=self.activation,
                    batch_norm_config=bn, name=attribute[1:]))

    def build(self, input_shape):
        if self._use_memory_feature:
            self.memory_feature = self.add_weight(
                name=MEMORY_FEATURE,
                shape=(1, self.num_mask_slots, self.memory_channels),
                initializer=keras.initializers.TruncatedNormal(stddev=1.0))

    @property
    def backbone_layers(self) -> List[keras.layers.Layer]:
        """Stem, stages and backbone decoder stages (transformers included;
        see `backbone_variables`)."""
        return [getattr(self, name) for name in self._backbone_layer_names]

    @property
    def backbone_variables(self) -> List[keras.Variable]:
        """Trainable variables of the ImageNet-pretrainable backbone.

        deeplab2's rule for MaX-DeepLab: the encoder's variables except the
        memory feature, the transformers and the 'extra' layers.
        """
        variables = []
        for layer in self.backbone_layers:
            if isinstance(layer, block_group.BlockGroup):
                for name in layer._block_names:
                    variables.extend(getattr(layer, name).trainable_variables)
            else:
                variables.extend(layer.trainable_variables)
        return variables

    def call(self, inputs, training=None):
        height, width = inputs.shape[1], inputs.shape[2]
        if height is None or width is None:
            raise ValueError(
                f"{self.name}: the image height and width must be static; got "
                f"input shape {inputs.shape}")
        act = self._activation_fn
        memory = None
        if self._use_memory_feature:
            memory = tf.tile(self.memory_feature,
                             [tf.shape(inputs)[0], 1, 1])

        endpoints = {}
        current = self._stem(inputs, training=training)
        endpoints["stage1"] = current
        endpoints["res1"] = act(current)
        for index in range(self._first_block_index, 5):
            group = getattr(self, f"_stage{index + 1}")
            current, memory = group(current, memory, training=training)
            endpoints[f"stage{index + 1}"] = current
            endpoints[f"res{index + 1}"] = act(current)

        if self.backbone_decoder_num_stacks == 0:
            backbone_output = act(current)
            if self.classification_mode:
                endpoints["backbone_output"] = backbone_output
                return endpoints
            current, memory = getattr(self, f"_stage5_{EXTRA}")(
                current, memory, training=training)

        out_stride = self.output_stride
        stride_to_features = {
            min(2, out_stride): [endpoints["stage1"]],
            min(4, out_stride): [endpoints["stage2"]],
            min(8, out_stride): [endpoints["stage3"]],
            min(16, out_stride): [endpoints["stage4"]],
        }
        stride_to_features[min(32, out_stride)] = [current]
        high_resolution_outputs = []
        for entry in self._decoder_stages:
            stride = entry["stride"]
            target = (scale_size(height, 1.0 / stride),
                      scale_size(width, 1.0 / stride))
            fuse_inputs = [current] + stride_to_features[stride][-2:]
            current = getattr(self, entry["fuse"])(
                fuse_inputs, target_size=target, training=training)
            if entry["backbone_group"] is not None:
                current, memory = getattr(self, entry["backbone_group"])(
                    current, memory, training=training)
            if entry["ends_backbone"]:
                backbone_output = act(current)
                if self.classification_mode:
                    endpoints["backbone_output"] = backbone_output
                    return endpoints
            if entry["extra_group"] is not None:
                current, memory = getattr(self, entry["extra_group"])(
                    current, memory, training=training)
            stride_to_features[stride].append(current)
            if entry["high_resolution"]:
                high_resolution_outputs.append(act(current))

        if memory is not None:
            endpoints["transformer_class_feature"] = getattr(
                self, f"_class_feature_{EXTRA}")(memory, training=training)
            endpoints["transformer_mask_feature"] = getattr(
                self, f"_mask_feature_{EXTRA}")(memory, training=training)
        endpoints["feature_panoptic"] = high_resolution_outputs[-1]
        if self.extra_decoder_num_stacks:
            endpoints["feature_semantic"] = high_resolution_outputs[
                self.backbone_decoder_num_stacks]
        else:
            endpoints["feature_semantic"] = backbone_output
        endpoints["backbone_output"] = backbone_output
        return endpoints

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_blocks": list(self.num_blocks),
            "backbone_layer_multiplier": self.backbone_layer_multiplier,
            "width_multiplier": self.width_multiplier,
            "stem_width_multiplier": self.stem_width_multiplier,
            "output_stride": self.output_stride,
            "classification_mode": self.classification_mode,
            "backbone_type": self.backbone_type,
            "use_axial_beyond_stride": self.use_axial_beyond_stride,
            "backbone_use_transformer_beyond_stride":
                self.backbone_use_transformer_beyond_stride,
            "extra_decoder_use_transformer_beyond_stride":
                self.extra_decoder_use_transformer_beyond_stride,
            "backbone_decoder_num_stacks": self.backbone_decoder_num_stacks,
            "backbone_decoder_blocks_per_stage":
                self.backbone_decoder_blocks_per_stage,
            "extra_decoder_num_stacks": self.extra_decoder_num_stacks,
            "extra_decoder_blocks_per_stage":
                self.extra_decoder_blocks_per_stage,
            "num_mask_slots": self.num_mask_slots,
            "memory_channels": self.memory_channels,
            "base_transformer_expansion": self.base_transformer_expansion,
            "global_feed_forward_network_channels":
                self.global_feed_forward_network_channels,
            "high_resolution_output_stride":
                self.high_resolution_output_stride,
            "activation": self.activation,
            "block_group_config": copy.deepcopy(self.block_group_config),
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config

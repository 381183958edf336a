"""MaX-DeepLab's prediction heads and auxiliary semantic decoder.

As deeplab2's model/decoder/{aspp, panoptic_deeplab, max_deeplab}.py:
  * ASPP + Panoptic-DeepLab single decoder: the auxiliary semantic decoder
    that brings a stride-16/32 semantic feature to stride 4 (only used when
    the encoder's semantic feature is not already at the panoptic feature's
    resolution, i.e. without stacked decoder);
  * Panoptic-DeepLab single heads (5x5 conv + 1x1 conv): the auxiliary
    semantic head and the pixel-space head producing the feature g;
  * the transformer heads on the memory: class logits (with a bias towards
    the void class) and mask embeddings; mask logits are the batch-normalised
    dot products of the L2-normalised pixel feature with the mask embeddings.
"""

import math
from typing import Any, Dict, Optional, Sequence

import keras
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf.layers import base
from max_deeplab_tf.layers import convolutions
from max_deeplab_tf.layers import normalization
from max_deeplab_tf.layers import resize

PIXEL_SPACE_FEATURE_KEY = "pixel_space_feature"
# deeplab2's dropout after the ASPP projection.
PROJECTION_DROPOUT_RATE = 0.1


def void_prior_bias(num_classes: int, void_prior_prob: float = 0.9) -> float:
    """Logit bias giving the void class probability void_prior_prob when all
    logits are otherwise equal: log((C - 1) * p / (1 - p))."""
    return math.log((num_classes - 1) * void_prior_prob / (1 - void_prior_prob))


def add_bias_towards_void(class_logits, void_prior_prob: float = 0.9):
    """Adds void_prior_bias to the last (void) class logit.

    Args:
      class_logits: A [batch, num_mask_slots, num_classes] tensor.
      void_prior_prob: Initial probability of the void class.

    Returns:
      A tensor of the same shape and dtype.
    """
    num_classes = class_logits.shape[-1]
    bias = [0.0] * num_classes
    bias[-1] = void_prior_bias(num_classes, void_prior_prob)
    return class_logits + tf.constant(bias, dtype=class_logits.dtype)


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class ASPPConv(base.ComposedLayer):
    """Atrous 3x3 conv - BN - act branch of the ASPP."""

    def __init__(self, output_channels: int, atrous_rate: int,
                 activation: str = "relu",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.output_channels = int(output_channels)
        self.atrous_rate = int(atrous_rate)
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        self._conv_bn_act = convolutions.Conv2DSame(
            output_channels, 3, atrous_rate=atrous_rate, use_bias=False,
            use_bn=True, activation=activation,
            batch_norm_config=self.batch_norm_config, name="conv_bn_act")

    def call(self, inputs, training=None):
        return self._conv_bn_act(inputs, training=training)

    def get_config(self):
        config = super().get_config()
        config.update({"output_channels": self.output_channels,
                       "atrous_rate": self.atrous_rate,
                       "activation": self.activation,
                       "batch_norm_config": dict(self.batch_norm_config)})
        return config


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class ASPPPool(base.ComposedLayer):
    """Image pooling branch of the ASPP: avg pool - 1x1 conv - BN - act -
    bilinear resize back.

    With a pool_size (deeplab2 uses the training crop's feature size) the
    pooling is a stride-1 'valid' average pooling, which equals global
    pooling at the training resolution; a pool size larger than the feature
    falls back to global pooling.

    Args:
      output_channels: Filters of the 1x1 convolution.
      pool_size: (height, width) of the pooling window, or None for global
        average pooling.
      activation: Activation name.
      batch_norm_config: See normalization.default_batch_norm_config.
    """

    def __init__(self, output_channels: int,
                 pool_size: Optional[Sequence[int]] = None,
                 activation: str = "relu",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.output_channels = int(output_channels)
        self.pool_size = None if pool_size is None else tuple(
            int(p) for p in pool_size)
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        self._conv_bn_act = convolutions.Conv2DSame(
            output_channels, 1, use_bias=False, use_bn=True,
            activation=activation, batch_norm_config=self.batch_norm_config,
            name="conv_bn_act")

    def call(self, inputs, training=None):
        height, width = inputs.shape[1], inputs.shape[2]
        if self.pool_size is None:
            pool = (height, width)
        else:
            pool = (min(self.pool_size[0], height),
                    min(self.pool_size[1], width))
        x = tf.nn.avg_pool2d(inputs, ksize=pool, strides=1, padding="VALID")
        x = self._conv_bn_act(x, training=training)
        return resize.resize_align_corners(x, [height, width])

    def get_config(self):
        config = super().get_config()
        config.update({"output_channels": self.output_channels,
                       "pool_size": (None if self.pool_size is None
                                     else list(self.pool_size)),
                       "activation": self.activation,
                       "batch_norm_config": dict(self.batch_norm_config)})
        return config


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class ASPP(base.ComposedLayer):
    """Atrous spatial pyramid pooling (Chen et al., 2017).

    Five branches (1x1 conv, three atrous 3x3 convs, image pooling)
    concatenated and projected by a 1x1 conv, then dropout 0.1; or a single
    1x1 projection when aspp_use_only_1x1_proj_conv.

    Args:
      output_channels: Channels of every branch and of the output.
      atrous_rates: The three atrous rates.
      aspp_use_only_1x1_proj_conv: Use only the projection.
      pool_size: See ASPPPool.
      activation: Activation name.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, height, width, channels] tensor.
      training: Batch norm and dropout mode.

    Returns:
      A [batch, height, width, output_channels] tensor.
    """

    def __init__(self, output_channels: int,
                 atrous_rates: Sequence[int] = (6, 12, 18),
                 aspp_use_only_1x1_proj_conv: bool = False,
                 pool_size: Optional[Sequence[int]] = None,
                 activation: str = "relu",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if not aspp_use_only_1x1_proj_conv and len(atrous_rates) != 3:
            raise ValueError(
                f"{self.name}: the ASPP needs exactly 3 atrous rates, got "
                f"{list(atrous_rates)}")
        self.output_channels = int(output_channels)
        self.atrous_rates = [int(r) for r in atrous_rates]
        self.aspp_use_only_1x1_proj_conv = aspp_use_only_1x1_proj_conv
        self.pool_size = None if pool_size is None else tuple(
            int(p) for p in pool_size)
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        bn = self.batch_norm_config
        self._proj_conv_bn_act = convolutions.Conv2DSame(
            output_channels, 1, use_bias=False, use_bn=True,
            activation=activation, batch_norm_config=bn,
            name="proj_conv_bn_act")
        if not aspp_use_only_1x1_proj_conv:
            self._conv_bn_act = convolutions.Conv2DSame(
                output_channels, 1, use_bias=False, use_bn=True,
                activation=activation, batch_norm_config=bn,
                name="conv_bn_act")
            for index, rate in enumerate(self.atrous_rates):
                setattr(self, f"_aspp_conv{index + 1}", ASPPConv(
                    output_channels, rate, activation=activation,
                    batch_norm_config=bn, name=f"aspp_conv{index + 1}"))
            self._aspp_pool = ASPPPool(
                output_channels, pool_size=self.pool_size,
                activation=activation, batch_norm_config=bn, name="aspp_pool")

    def call(self, inputs, training=None):
        if self.aspp_use_only_1x1_proj_conv:
            return self._proj_conv_bn_act(inputs, training=training)
        branches = [
            self._conv_bn_act(inputs, training=training),
            self._aspp_conv1(inputs, training=training),
            self._aspp_conv2(inputs, training=training),
            self._aspp_conv3(inputs, training=training),
            self._aspp_pool(inputs, training=training),
        ]
        x = self._proj_conv_bn_act(tf.concat(branches, 3), training=training)
        if training:
            # Stateless w.r.t. Keras: no seed-generator variable in the model.
            x = tf.nn.dropout(x, rate=PROJECTION_DROPOUT_RATE)
        return x

    def get_config(self):
        config = super().get_config()
        config.update({
            "output_channels": self.output_channels,
            "atrous_rates": list(self.atrous_rates),
            "aspp_use_only_1x1_proj_conv": self.aspp_use_only_1x1_proj_conv,
            "pool_size": (None if self.pool_size is None
                          else list(self.pool_size)),
            "activation": self.activation,
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class SemanticDecoder(base.ComposedLayer):
    """Panoptic-DeepLab's single decoder: ASPP on a high-level feature, then
    for each low-level feature (lowest resolution first): 1x1 projection,
    align-corners upsampling of the running feature, concatenation and a 5x5
    fusion convolution.

    Args:
      high_level_feature_name: Endpoint fed to the ASPP, e.g.
        'feature_semantic'.
      low_level_feature_names: Endpoints fused in order, e.g. ['res3',
        'res2'].
      low_level_channels_project: 1x1 projection channels of each.
      aspp_output_channels: ASPP channels.
      decoder_output_channels: Fusion conv channels.
      atrous_rates: The ASPP's three rates.
      aspp_use_only_1x1_proj_conv: See ASPP.
      decoder_conv_type: 'depthwise_separable_conv' or 'standard_conv'.
      pool_size: See ASPPPool.
      activation: Activation name.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      features: Dict of endpoints.
      training: Batch norm and dropout mode.

    Returns:
      A [batch, h, w, decoder_output_channels] tensor at the resolution of
      the last low-level feature.
    """

    def __init__(self, high_level_feature_name: str,
                 low_level_feature_names: Sequence[str],
                 low_level_channels_project: Sequence[int],
                 aspp_output_channels: int, decoder_output_channels: int,
                 atrous_rates: Sequence[int] = (6, 12, 18),
                 aspp_use_only_1x1_proj_conv: bool = False,
                 decoder_conv_type: str = "depthwise_separable_conv",
                 pool_size: Optional[Sequence[int]] = None,
                 activation: str = "relu",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if len(low_level_feature_names) != len(low_level_channels_project):
            raise ValueError(
                f"{self.name}: {len(low_level_feature_names)} low-level "
                f"features but {len(low_level_channels_project)} projection "
                "channel counts")
        self.high_level_feature_name = high_level_feature_name
        self.low_level_feature_names = list(low_level_feature_names)
        self.low_level_channels_project = [
            int(c) for c in low_level_channels_project]
        self.aspp_output_channels = int(aspp_output_channels)
        self.decoder_output_channels = int(decoder_output_channels)
        self.atrous_rates = [int(r) for r in atrous_rates]
        self.aspp_use_only_1x1_proj_conv = aspp_use_only_1x1_proj_conv
        self.decoder_conv_type = decoder_conv_type
        self.pool_size = None if pool_size is None else tuple(
            int(p) for p in pool_size)
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        bn = self.batch_norm_config
        self._aspp = ASPP(
            aspp_output_channels, self.atrous_rates,
            aspp_use_only_1x1_proj_conv=aspp_use_only_1x1_proj_conv,
            pool_size=self.pool_size, activation=activation,
            batch_norm_config=bn, name="aspp")
        for index, channels in enumerate(self.low_level_channels_project):
            setattr(self, f"_low_level_conv{index + 1}",
                    convolutions.Conv2DSame(
                        channels, 1, use_bias=False, use_bn=True,
                        activation=activation, batch_norm_config=bn,
                        name=f"low_level_conv{index + 1}"))
            setattr(self, f"_fusion_conv{index + 1}",
                    convolutions.StackedConv2DSame(
                        1, decoder_conv_type, decoder_output_channels, 5,
                        use_bias=False, use_bn=True, activation=activation,
                        batch_norm_config=bn, name=f"fusion_conv{index + 1}"))

    def call(self, features, training=None):
        x = self._aspp(features[self.high_level_feature_name],
                       training=training)
        for index, name in enumerate(self.low_level_feature_names):
            low = getattr(self, f"_low_level_conv{index + 1}")(
                features[name], training=training)
            if x.shape[1] - 1 >= low.shape[1] or x.shape[2] - 1 >= low.shape[2]:
                raise ValueError(
                    f"{self.name}: low-level feature {name!r} of shape "
                    f"{low.shape} is smaller than the decoded feature "
                    f"{x.shape}; list low-level features from low to high "
                    "resolution")
            x = resize.resize_align_corners(x, [low.shape[1], low.shape[2]])
            x = tf.concat([x, low], 3)
            x = getattr(self, f"_fusion_conv{index + 1}")(x, training=training)
        return x

    def get_config(self):
        config = super().get_config()
        config.update({
            "high_level_feature_name": self.high_level_feature_name,
            "low_level_feature_names": list(self.low_level_feature_names),
            "low_level_channels_project": list(
                self.low_level_channels_project),
            "aspp_output_channels": self.aspp_output_channels,
            "decoder_output_channels": self.decoder_output_channels,
            "atrous_rates": list(self.atrous_rates),
            "aspp_use_only_1x1_proj_conv": self.aspp_use_only_1x1_proj_conv,
            "decoder_conv_type": self.decoder_conv_type,
            "pool_size": (None if self.pool_size is None
                          else list(self.pool_size)),
            "activation": self.activation,
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class PredictionHead(base.ComposedLayer):
    """Panoptic-DeepLab's single head: 5x5 conv - BN - act, then a 1x1 conv
    with bias (initialised with stddev 0.01).

    Args:
      intermediate_channels: Channels of the 5x5 convolution.
      output_channels: Channels of the output.
      conv_type: 'depthwise_separable_conv' or 'standard_conv'.
      activation: Activation name.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, height, width, channels] tensor.
      training: Batch norm mode.

    Returns:
      A [batch, height, width, output_channels] tensor.
    """

    def __init__(self, intermediate_channels: int, output_channels: int,
                 conv_type: str = "depthwise_separable_conv",
                 activation: str = "relu",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.intermediate_channels = int(intermediate_channels)
        self.output_channels = int(output_channels)
        self.conv_type = conv_type
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        # Public names: deeplab2 checkpoints them separately as
        # semantic_head_without_last_layer / semantic_last_layer.
        self.conv_block = convolutions.StackedConv2DSame(
            1, conv_type, intermediate_channels, 5, use_bias=False,
            use_bn=True, activation=activation,
            batch_norm_config=self.batch_norm_config, name="conv_block")
        self.final_conv = keras.layers.Conv2D(
            output_channels, 1, name="final_conv",
            kernel_initializer=keras.initializers.TruncatedNormal(
                stddev=0.01))

    def call(self, inputs, training=None):
        return self.final_conv(self.conv_block(inputs, training=training))

    def get_config(self):
        config = super().get_config()
        config.update({"intermediate_channels": self.intermediate_channels,
                       "output_channels": self.output_channels,
                       "conv_type": self.conv_type,
                       "activation": self.activation,
                       "batch_norm_config": dict(self.batch_norm_config)})
        return config


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class MaXDeepLabHead(base.ComposedLayer):
    """MaX-DeepLab's output heads (deeplab2's decoder/max_deeplab.MaXDeepLab).

    Args:
      num_classes: Semantic classes of the auxiliary head (void included,
        e.g. 134 on COCO).
      num_transformer_classes: Outputs of the transformer class head, the
        last being void (num_classes, or num_classes + 1 when the ignore
        label is not a class index).
      pixel_space_head_channels, pixel_space_dim: The pixel-space head's 5x5
        conv channels and its output D.
      semantic_head_channels: The auxiliary semantic head's 5x5 channels.
      decoder_config: SemanticDecoder keyword arguments (without names), or
        None for no auxiliary semantic decoder.
      head_conv_type: Conv type of the pixel-space head.
      semantic_head_conv_type: Conv type of the semantic head.
      activation: Activation name.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      features: The encoder's endpoints (feature_semantic, feature_panoptic,
        transformer_class_feature, transformer_mask_feature, and the
        decoder's low-level features).
      training: Batch norm mode.

    Returns:
      A dict: semantic_logits [batch, H/4, W/4, num_classes],
      pixel_space_normalized_feature [batch, H/4, W/4, D],
      transformer_class_logits [batch, N, num_transformer_classes],
      pixel_space_mask_logits [batch, H/4, W/4, N].
    """

    def __init__(self, num_classes: int, num_transformer_classes: int,
                 pixel_space_head_channels: int, pixel_space_dim: int,
                 semantic_head_channels: int,
                 decoder_config: Optional[Dict[str, Any]] = None,
                 head_conv_type: str = "depthwise_separable_conv",
                 semantic_head_conv_type: str = "depthwise_separable_conv",
                 activation: str = "relu",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.num_transformer_classes = int(num_transformer_classes)
        self.pixel_space_head_channels = int(pixel_space_head_channels)
        self.pixel_space_dim = int(pixel_space_dim)
        self.semantic_head_channels = int(semantic_head_channels)
        self.decoder_config = (None if decoder_config is None
                               else dict(decoder_config))
        self.head_conv_type = head_conv_type
        self.semantic_head_conv_type = semantic_head_conv_type
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        bn = self.batch_norm_config
        if self.decoder_config is not None:
            self._auxiliary_semantic_decoder = SemanticDecoder(
                activation=activation, batch_norm_config=bn,
                name="auxiliary_semantic_decoder", **self.decoder_config)
        self._auxiliary_semantic_head = PredictionHead(
            semantic_head_channels, num_classes,
            conv_type=semantic_head_conv_type, activation=activation,
            batch_norm_config=bn, name="auxiliary_semantic_head")
        self._pixel_space_head = PredictionHead(
            pixel_space_head_channels, pixel_space_dim,
            conv_type=head_conv_type, activation=activation,
            batch_norm_config=bn, name="pixel_space_head")
        self._transformer_mask_head = convolutions.Conv1DBN(
            pixel_space_dim, use_bias=False, use_bn=True, activation=None,
            batch_norm_config=bn, name="transformer_mask_head")
        self._transformer_class_head = convolutions.Conv1DBN(
            num_transformer_classes, use_bias=True, use_bn=False,
            activation=None,
            kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
            batch_norm_config=bn, name="transformer_class_head")
        self._pixel_space_feature_batch_norm = normalization.batch_norm(
            axis=-1, name="pixel_space_feature_batch_norm",
            batch_norm_config=bn)
        # A low initial temperature for the mask logits.
        self._pixel_space_mask_batch_norm = normalization.batch_norm(
            axis=-1, name="pixel_space_mask_batch_norm",
            gamma_initializer=keras.initializers.Constant(0.1),
            batch_norm_config=bn)

    @property
    def uses_semantic_decoder(self) -> bool:
        return self.decoder_config is not None

    def call(self, features, training=None):
        semantic = features["feature_semantic"]
        panoptic = features["feature_panoptic"]
        results = {}
        if (self.uses_semantic_decoder
                and tuple(semantic.shape[1:3]) != tuple(panoptic.shape[1:3])):
            semantic = self._auxiliary_semantic_decoder(
                features, training=training)
        results[common.PRED_SEMANTIC_LOGITS_KEY] = (
            self._auxiliary_semantic_head(semantic, training=training))

        pixel_feature = self._pixel_space_head(panoptic, training=training)
        pixel_feature = self._pixel_space_feature_batch_norm(
            pixel_feature, training=training)
        # In float32: the norm of a float16 feature can underflow.
        normalized = tf.cast(
            tf.math.l2_normalize(tf.cast(pixel_feature, tf.float32), axis=-1),
            pixel_feature.dtype)
        results[common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY] = normalized

        class_logits = self._transformer_class_head(
            features["transformer_class_feature"], training=training)
        results[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY] = (
            add_bias_towards_void(class_logits))

        mask_kernel = self._transformer_mask_head(
            features["transformer_mask_feature"], training=training)
        mask_logits = tf.einsum("bhwd,bid->bhwi", normalized, mask_kernel)
        # One gamma/beta shared by all slots: batch norm on an extra axis.
        mask_logits = self._pixel_space_mask_batch_norm(
            mask_logits[..., None], training=training)
        results[common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY] = mask_logits[..., 0]
        return results

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_classes": self.num_classes,
            "num_transformer_classes": self.num_transformer_classes,
            "pixel_space_head_channels": self.pixel_space_head_channels,
            "pixel_space_dim": self.pixel_space_dim,
            "semantic_head_channels": self.semantic_head_channels,
            "decoder_config": (None if self.decoder_config is None
                               else dict(self.decoder_config)),
            "head_conv_type": self.head_conv_type,
            "semantic_head_conv_type": self.semantic_head_conv_type,
            "activation": self.activation,
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config

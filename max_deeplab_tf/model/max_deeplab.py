"""The MaX-DeepLab model (Wang et al., CVPR 2021) as a Keras 3 Model.

    model = max_deeplab_tf.build_model(experiment_options)
    outputs = model(images, training=False)   # images: [B, H, W, 3] in 0..255

`MaXDeepLab` normalises the images to [-1, 1] (x / 127.5 - 1), runs the
encoder (`model.encoder`, an AxialResNet) and the heads (`model.decoder`, a
MaXDeepLabHead), and returns deeplab2's output dict in float32 (common.py
keys): transformer_class_logits [B, N, C] (last class = void),
pixel_space_mask_logits [B, H/4, W/4, N], pixel_space_normalized_feature
[B, H/4, W/4, D], semantic_logits [B, H/4, W/4, num_classes], and at
inference semantic_probs. H and W must be static; sizes k * output_stride + 1
keep all resizing aligned.

`model.backbone_variables` lists the trainable variables of the
ImageNet-pretrainable backbone (deeplab2's rule: the encoder minus memory,
transformers and 'extra' layers) for the backbone learning-rate multiplier;
`model.is_backbone_variable(v)` is the same as a predicate.
`model.checkpoint_items` names sub-layers as deeplab2's checkpoints do.
"""

from typing import Any, Dict, List

import keras
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf.layers import base
from max_deeplab_tf.model import axial_resnet
from max_deeplab_tf.model import heads


def _to_float32(outputs: Dict[str, Any]) -> Dict[str, Any]:
    return {key: tf.cast(value, tf.float32) for key, value in outputs.items()}


class _ImageModel(keras.Model):
    """Shared input handling of the MaX-DeepLab models."""

    def _normalize(self, images):
        if len(images.shape) != 4 or images.shape[-1] != 3:
            raise ValueError(
                f"{self.name}: expected images of shape [batch, height, width, "
                f"3], got {images.shape}")
        if images.shape[1] is None or images.shape[2] is None:
            raise ValueError(
                f"{self.name}: the image height and width must be static, got "
                f"{images.shape}")
        images = tf.cast(images, self.compute_dtype)
        return images / 127.5 - 1.0

    def build(self, input_shape):
        # A symbolic pass builds every sub-layer (several are shaped by their
        # inputs), so model.build((None, H, W, 3)) gives all the weights.
        images = keras.KerasTensor(tuple(input_shape), dtype=self.compute_dtype)
        self._build_symbolically(images)

    def _build_symbolically(self, images):
        base.symbolic_build(self, images, training=False)

    @property
    def encoder(self) -> axial_resnet.AxialResNet:
        return self._encoder

    @property
    def backbone_variables(self) -> List[keras.Variable]:
        """Trainable variables of the pretrainable backbone (see module doc)."""
        return self._encoder.backbone_variables

    def is_backbone_variable(self, variable) -> bool:
        """Whether `variable` is one of `backbone_variables`."""
        return any(variable is v for v in self.backbone_variables)


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class MaXDeepLab(_ImageModel):
    """MaX-DeepLab: encoder + mask-transformer heads.

    Args:
      encoder_config: AxialResNet keyword arguments (see
        model.backbones.encoder_config).
      head_config: MaXDeepLabHead keyword arguments.
      name: Model name.

    Call arguments:
      images: A float [batch, height, width, 3] tensor of RGB values in
        [0, 255], static height and width.
      training: Batch norm, drop path and dropout mode.

    Returns:
      The output dict described in the module docstring (float32).
    """

    def __init__(self, encoder_config: Dict[str, Any],
                 head_config: Dict[str, Any], name: str = "max_deeplab",
                 **kwargs):
        super().__init__(name=name, **kwargs)
        if encoder_config.get("classification_mode"):
            raise ValueError(
                f"{name}: the encoder is a classification backbone; use "
                "MaXDeepLabBackbone")
        self.encoder_config = dict(encoder_config)
        self.head_config = dict(head_config)
        self._encoder = axial_resnet.AxialResNet(
            name="encoder", **self.encoder_config)
        self._decoder = heads.MaXDeepLabHead(name="decoder", **self.head_config)

    @property
    def decoder(self) -> heads.MaXDeepLabHead:
        return self._decoder

    @property
    def checkpoint_items(self) -> Dict[str, Any]:
        """Sub-layers under deeplab2's checkpoint keys."""
        decoder = self._decoder
        items = {
            "encoder": self._encoder,
            "pixel_space_head": decoder._pixel_space_head,
            "transformer_mask_head": decoder._transformer_mask_head,
            "transformer_class_head": decoder._transformer_class_head,
            "pixel_space_feature_batch_norm":
                decoder._pixel_space_feature_batch_norm,
            "pixel_space_mask_batch_norm":
                decoder._pixel_space_mask_batch_norm,
            "semantic_head_without_last_layer":
                decoder._auxiliary_semantic_head.conv_block,
            "semantic_last_layer": decoder._auxiliary_semantic_head.final_conv,
        }
        if decoder.uses_semantic_decoder:
            items["semantic_decoder"] = decoder._auxiliary_semantic_decoder
        return items

    def call(self, images, training=None):
        x = self._normalize(images)
        endpoints = self._encoder(x, training=training)
        outputs = _to_float32(self._decoder(endpoints, training=training))
        if not training:
            outputs[common.PRED_SEMANTIC_PROBS_KEY] = tf.nn.softmax(
                outputs[common.PRED_SEMANTIC_LOGITS_KEY])
        return outputs

    def get_config(self):
        return {"encoder_config": dict(self.encoder_config),
                "head_config": dict(self.head_config), "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class MaXDeepLabBackbone(_ImageModel):
    """A MaX-DeepLab backbone without transformer, for pretraining.

    Args:
      encoder_config: AxialResNet keyword arguments with
        classification_mode=True.
      num_classes: If > 0, a global-average-pooling + dense classifier adds
        'classification_logits' [batch, num_classes] to the outputs.
      name: Model name.

    Call arguments:
      images: A float [batch, height, width, 3] tensor in [0, 255].
      training: Batch norm and drop path mode.

    Returns:
      The encoder's endpoints ('stage1'.., 'res1'.., 'backbone_output') in
      float32, plus 'classification_logits' when num_classes > 0.
    """

    def __init__(self, encoder_config: Dict[str, Any], num_classes: int = 0,
                 name: str = "max_deeplab_backbone", **kwargs):
        super().__init__(name=name, **kwargs)
        if not encoder_config.get("classification_mode"):
            raise ValueError(
                f"{name}: the encoder config must have classification_mode")
        self.encoder_config = dict(encoder_config)
        self.num_classes = int(num_classes)
        self._encoder = axial_resnet.AxialResNet(
            name="encoder", **self.encoder_config)
        if self.num_classes > 0:
            self._classifier = keras.layers.Dense(
                self.num_classes, name="classifier")

    @property
    def checkpoint_items(self) -> Dict[str, Any]:
        return {"encoder": self._encoder}

    def call(self, images, training=None):
        endpoints = self._encoder(self._normalize(images), training=training)
        outputs = _to_float32(endpoints)
        if self.num_classes > 0:
            pooled = tf.reduce_mean(endpoints["backbone_output"], axis=[1, 2])
            outputs["classification_logits"] = tf.cast(
                self._classifier(pooled), tf.float32)
        return outputs

    def get_config(self):
        return {"encoder_config": dict(self.encoder_config),
                "num_classes": self.num_classes, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

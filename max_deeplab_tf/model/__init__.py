"""MaX-DeepLab models.

  build_model(experiment_options) -> MaXDeepLab (or MaXDeepLabBackbone for
      the *_backbone names).
  build_for_input_size(model, height, width)   its weights, without a forward.
  MaXDeepLab, MaXDeepLabBackbone   Keras models (max_deeplab).
  AxialResNet                      the encoder (axial_resnet).
  MaXDeepLabHead, SemanticDecoder, ASPP, PredictionHead   heads (heads).
  backbones.encoder_config(name)   encoder configurations by backbone name.
"""

from max_deeplab_tf.model import backbones
from max_deeplab_tf.model.axial_resnet import AxialResNet
from max_deeplab_tf.model.builder import build_for_input_size
from max_deeplab_tf.model.builder import build_model
from max_deeplab_tf.model.heads import ASPP
from max_deeplab_tf.model.heads import MaXDeepLabHead
from max_deeplab_tf.model.heads import PredictionHead
from max_deeplab_tf.model.heads import SemanticDecoder
from max_deeplab_tf.model.max_deeplab import MaXDeepLab
from max_deeplab_tf.model.max_deeplab import MaXDeepLabBackbone

__all__ = [
    "ASPP", "AxialResNet", "MaXDeepLab", "MaXDeepLabBackbone",
    "MaXDeepLabHead", "PredictionHead", "SemanticDecoder", "backbones",
    "build_for_input_size", "build_model",
]

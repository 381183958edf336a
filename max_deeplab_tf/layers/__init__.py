"""Keras 3 layers of MaX-DeepLab, reusable in any Keras model.

Every layer is registered as serialisable (package "max_deeplab_tf") and has
get_config. Layer and variable attribute names follow google-research/
deeplab2 so that its checkpoints map onto ours name by name.

  BatchNormalization, MultiAxisBatchNormalization,
  batch_norm                                (normalization)
  DropPath, get_drop_path_keep_prob         (drop_path)
  Conv2DSame, DepthwiseConv2DSame, SeparableConv2DSame, StackedConv2DSame,
  Conv1DBN                                  (convolutions)
  RelativePositionalEncoding                (positional_encodings)
  AxialAttention, AxialAttention2D          (axial_attention)
  AxialBlock                                (axial_blocks)
  AttentionOperation, DualPathTransformerLayer (dual_path_transformer)
  BlockGroup                                (block_group)
  InceptionStem                             (stems)
  ResizedFuse                               (resized_fuse)

Example, a user's own classifier with an axial-attention block (saves and
reloads as a .keras file like any Keras model):

    import keras
    from max_deeplab_tf import layers

    images = keras.Input((65, 65, 3))
    x = layers.InceptionStem(width_multiplier=0.5)(images)
    x = layers.AxialBlock([64, 32, 128], attention_type="axial")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(images, keras.layers.Dense(10)(x))
    model.save("classifier.keras")
    model = keras.models.load_model("classifier.keras")
"""

from max_deeplab_tf.layers.activations import get_activation
from max_deeplab_tf.layers.axial_attention import AxialAttention
from max_deeplab_tf.layers.axial_attention import AxialAttention2D
from max_deeplab_tf.layers.axial_blocks import AxialBlock
from max_deeplab_tf.layers.block_group import BlockGroup
from max_deeplab_tf.layers.convolutions import Conv1DBN
from max_deeplab_tf.layers.convolutions import Conv2DSame
from max_deeplab_tf.layers.convolutions import DepthwiseConv2DSame
from max_deeplab_tf.layers.convolutions import SeparableConv2DSame
from max_deeplab_tf.layers.convolutions import StackedConv2DSame
from max_deeplab_tf.layers.drop_path import DropPath
from max_deeplab_tf.layers.drop_path import get_drop_path_keep_prob
from max_deeplab_tf.layers.dual_path_transformer import AttentionOperation
from max_deeplab_tf.layers.dual_path_transformer import DualPathTransformerLayer
from max_deeplab_tf.layers.normalization import BatchNormalization
from max_deeplab_tf.layers.normalization import MultiAxisBatchNormalization
from max_deeplab_tf.layers.normalization import batch_norm
from max_deeplab_tf.layers.positional_encodings import RelativePositionalEncoding
from max_deeplab_tf.layers.resized_fuse import ResizedFuse
from max_deeplab_tf.layers.stems import InceptionStem

__all__ = [
    "AttentionOperation", "AxialAttention", "AxialAttention2D", "AxialBlock",
    "BatchNormalization", "BlockGroup", "Conv1DBN", "Conv2DSame",
    "DepthwiseConv2DSame",
    "DropPath", "DualPathTransformerLayer", "InceptionStem",
    "MultiAxisBatchNormalization", "RelativePositionalEncoding",
    "ResizedFuse", "SeparableConv2DSame", "StackedConv2DSame", "batch_norm",
    "get_activation", "get_drop_path_keep_prob",
]

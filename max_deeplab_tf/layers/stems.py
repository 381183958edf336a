"""The Inception-style stem of ResNet-beta (Szegedy et al., AAAI 2017)."""

from typing import Any, Dict, Optional

import keras

from max_deeplab_tf.layers import base
from max_deeplab_tf.layers import convolutions
from max_deeplab_tf.layers import normalization


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class InceptionStem(base.ComposedLayer):
    """Three 3x3 convolutions replacing ResNet's 7x7 stem (stride 2 overall).

    conv 3x3 stride 2 (64 * w) - BN - act, conv 3x3 (64 * w) - BN - act,
    conv 3x3 (128 * w) - BN. There is no max pooling: the next stage strides.

    Args:
      width_multiplier: Channel multiplier (channels are int(64 * w) and
        int(128 * w)).
      activation: Activation name.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, height, width, 3] image tensor.
      training: Batch norm mode.

    Returns:
      The NON-activated [batch, ceil(height / 2), ceil(width / 2),
      int(128 * w)] output.
    """

    def __init__(self, width_multiplier: float = 1.0, activation: str = "relu",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        kwargs.setdefault("name", "stem")
        super().__init__(**kwargs)
        self.width_multiplier = float(width_multiplier)
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        bn = self.batch_norm_config
        narrow = int(64 * width_multiplier)
        wide = int(128 * width_multiplier)
        self._conv1_bn_act = convolutions.Conv2DSame(
            narrow, 3, strides=2, use_bias=False, use_bn=True,
            activation=activation, batch_norm_config=bn, name="conv1_bn_act")
        self._conv2_bn_act = convolutions.Conv2DSame(
            narrow, 3, use_bias=False, use_bn=True, activation=activation,
            batch_norm_config=bn, name="conv2_bn_act")
        self._conv3_bn = convolutions.Conv2DSame(
            wide, 3, use_bias=False, use_bn=True, activation="none",
            batch_norm_config=bn, name="conv3_bn")

    def call(self, inputs, training=None):
        x = self._conv1_bn_act(inputs, training=training)
        x = self._conv2_bn_act(x, training=training)
        return self._conv3_bn(x, training=training)

    def get_config(self):
        config = super().get_config()
        config.update({"width_multiplier": self.width_multiplier,
                       "activation": self.activation,
                       "batch_norm_config": dict(self.batch_norm_config)})
        return config

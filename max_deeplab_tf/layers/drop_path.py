"""Drop path (stochastic depth, Huang et al., ECCV 2016) and its schedules."""

import keras
import tensorflow as tf

SCHEDULES = ("constant", "linear")


def get_drop_path_keep_prob(keep_prob_for_last_stage: float, schedule: str,
                            current_stage: int, num_stages: int) -> float:
    """Keep probability of a stage under a drop-path schedule.

    Args:
      keep_prob_for_last_stage: The keep probability of the last stage.
      schedule: 'constant' (every stage uses keep_prob_for_last_stage) or
        'linear' (1.0 at stage 0, the stem, decreasing linearly to
        keep_prob_for_last_stage at stage num_stages).
      current_stage: The stage index.
      num_stages: The number of stages.

    Returns:
      The keep probability.

    Raises:
      ValueError: if the schedule is unknown.
    """
    if schedule == "constant":
        return keep_prob_for_last_stage
    if schedule == "linear":
        return 1.0 - (1.0 - keep_prob_for_last_stage) * current_stage / num_stages
    raise ValueError(
        f"unknown drop path schedule {schedule!r}: expected one of "
        f"{list(SCHEDULES)}")


def drop_path_mask(inputs, keep_prob: float):
    """A per-example keep mask, scaled by 1 / keep_prob.

    Args:
      inputs: A [batch, ...] tensor; only its batch size, rank and dtype are
        used.
      keep_prob: The probability of keeping an example's path.

    Returns:
      A [batch, 1, ..., 1] tensor (input rank) of 0 and 1 / keep_prob, so that
      the masked path keeps its expectation.
    """
    rank = len(inputs.shape)
    shape = tf.concat([tf.shape(inputs)[:1], tf.ones([rank - 1], tf.int32)], 0)
    random = keep_prob + tf.random.uniform(shape, dtype=inputs.dtype)
    return tf.math.divide(tf.floor(random), tf.cast(keep_prob, inputs.dtype))


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class DropPath(keras.layers.Layer):
    """Drops a residual path for whole examples during training.

    Args:
      keep_prob: Probability of keeping each example's path, in (0, 1].

    Call arguments:
      inputs: A [batch, ...] tensor, the residual branch.
      training: Whether to drop (training) or pass through (inference).

    Returns:
      A tensor of the input's shape: inputs * mask in training, else inputs.
    """

    def __init__(self, keep_prob: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < keep_prob <= 1.0:
            raise ValueError(
                f"DropPath {self.name}: keep_prob {keep_prob} is outside (0, 1]")
        self.keep_prob = float(keep_prob)

    def call(self, inputs, training=None):
        if not training or self.keep_prob == 1.0:
            return inputs
        return inputs * drop_path_mask(inputs, self.keep_prob)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config["keep_prob"] = self.keep_prob
        return config

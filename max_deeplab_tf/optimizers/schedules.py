"""Learning-rate schedules: poly or cosine decay after a linear warmup.

deeplab2's schedule: the decay runs over all `training_number_of_steps` from
step 0 (it is not shifted by the warmup); during the first `warmup_steps` the
decayed value is replaced by a linear ramp from 0 to the base learning rate.
"""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp from 0 to `warmup_target`, then another schedule.

    lr(step) = warmup_target * step / warmup_steps   for step < warmup_steps,
               after_warmup(step)                    otherwise.

    Args:
      after_warmup: The schedule used from `warmup_steps` on.
      warmup_steps: Length of the ramp; 0 disables it.
      warmup_target: The value the ramp heads to (the base learning rate).
    """

    def __init__(self, after_warmup, warmup_steps, warmup_target, name=None):
        super().__init__()
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if isinstance(after_warmup, dict):
            after_warmup = keras.saving.deserialize_keras_object(after_warmup)
        self.after_warmup = after_warmup
        self.warmup_steps = int(warmup_steps)
        self.warmup_target = float(warmup_target)
        self.name = name or "linear_warmup"

    def __call__(self, step):
        with tf.name_scope(self.name):
            step = tf.cast(step, tf.float32)
            decayed = tf.cast(self.after_warmup(step), tf.float32)
            if self.warmup_steps == 0:
                return decayed
            ramp = self.warmup_target * step / float(self.warmup_steps)
            return tf.where(step < float(self.warmup_steps), ramp, decayed)

    def get_config(self):
        return {
            "after_warmup": keras.saving.serialize_keras_object(
                self.after_warmup),
            "warmup_steps": self.warmup_steps,
            "warmup_target": self.warmup_target,
            "name": self.name,
        }


def build_learning_rate_schedule(solver_options, multiplier=1.0):
    """The learning-rate schedule a SolverOptions asks for.

    Args:
      solver_options: A trainer_pb2.SolverOptions.
      multiplier: Scales the whole schedule (e.g. the backbone multiplier).

    Returns:
      A keras LearningRateSchedule evaluated at the optimizer's iteration.

    Raises:
      ValueError: naming the field when the policy is unknown or the number
        of steps is not positive.
    """
    base = float(solver_options.base_learning_rate) * float(multiplier)
    end = float(solver_options.poly_end_learning_rate) * float(multiplier)
    steps = int(solver_options.training_number_of_steps)
    if steps <= 0:
        raise ValueError(
            "solver_options.training_number_of_steps must be positive, got "
            f"{steps}")
    policy = solver_options.learning_policy
    if policy == "poly":
        decay = keras.optimizers.schedules.PolynomialDecay(
            initial_learning_rate=base, decay_steps=steps,
            end_learning_rate=end,
            power=float(solver_options.poly_learning_power), cycle=False)
    elif policy == "cosine":
        decay = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=base, decay_steps=steps, alpha=0.0)
    else:
        raise ValueError(
            f"solver_options.learning_policy {policy!r} is not supported: "
            "expected 'poly' or 'cosine'")
    return LinearWarmup(decay, int(solver_options.warmup_steps), base)

"""Rectified Adam (Liu et al., "On the Variance of the Adaptive Learning Rate
and Beyond", ICLR 2020, arXiv 1908.03265), as a Keras 3 optimizer.

With t the 1-based step, m and v Adam's moment estimates and
rho_inf = 2 / (1 - beta_2) - 1, rho_t = rho_inf - 2 t beta_2^t / (1 - beta_2^t):

  if rho_t >= rectification_threshold (the variance of the adaptive rate is
  tractable):
    r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
    w <- w - lr * r_t * m_hat * sqrt(1 - beta_2^t) / (sqrt(v) + epsilon)
  else (an un-adapted momentum SGD step):
    w <- w - lr * m_hat
  with m_hat = m / (1 - beta_1^t).

The paper states the condition as rho_t > 4; the authors' released code (and
TensorFlow Addons' RectifiedAdam, which MaX-DeepLab's implementation used)
switch at rho_t >= 5, our default. epsilon is added to the un-corrected
sqrt(v) as in keras.optimizers.Adam. Weight decay is decoupled (Keras'
`weight_decay`: w <- w - lr * weight_decay * w before the step).
"""

import keras
from keras import ops

from max_deeplab_tf.optimizers import base


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class RAdam(base.OptimizerHooksMixin, keras.optimizers.Optimizer):
    """Rectified Adam.

    Args:
      learning_rate: A float or a LearningRateSchedule.
      beta_1, beta_2, epsilon: As in Adam.
      rectification_threshold: The rectified adaptive step is used once
        rho_t reaches this value (5.0 as the reference implementation; the
        paper's condition is rho_t > 4).
      **kwargs: keras.optimizers.Optimizer arguments (weight_decay, ...) and
        the OptimizerHooksMixin ones.
    """

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.999,
                 epsilon=1e-7, rectification_threshold=5.0, name="radam",
                 **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.rectification_threshold = rectification_threshold

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._momentums = [
            self.add_variable_from_reference(v, name="momentum")
            for v in var_list]
        self._velocities = [
            self.add_variable_from_reference(v, name="velocity")
            for v in var_list]

    def _coefficients(self, dtype, learning_rate):
        """Per-step scalars: (lr * rectified step size, lr / (1 - beta_1^t),
        whether the rectified branch applies)."""
        lr = ops.cast(learning_rate, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        beta_1_power = ops.power(beta_1, step)
        beta_2_power = ops.power(beta_2, step)
        rho_inf = 2.0 / (1.0 - beta_2) - 1.0
        rho_t = rho_inf - 2.0 * step * beta_2_power / (1.0 - beta_2_power)
        # Clamped so the unused branch never takes a root of a negative.
        rectifier = ops.sqrt(
            ops.maximum(rho_t - 4.0, 0.0) * ops.maximum(rho_t - 2.0, 0.0)
            * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0)
                         * ops.maximum(rho_t, 1e-12)))
        momentum_step = lr / (1.0 - beta_1_power)
        rectified_step = (momentum_step * rectifier
                          * ops.sqrt(1.0 - beta_2_power))
        use_rectified = ops.greater_equal(
            rho_t, ops.cast(self.rectification_threshold, dtype))
        return rectified_step, momentum_step, use_rectified

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        rectified_step, momentum_step, use_rectified = self.step_constants(
            variable, lambda: self._coefficients(dtype, learning_rate))
        gradient = ops.cast(gradient, dtype)
        beta_1 = ops.cast(self.beta_1, dtype)
        beta_2 = ops.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        m = self._momentums[index]
        v = self._velocities[index]
        self.assign_add(m, (gradient - m) * (1.0 - beta_1))
        self.assign_add(v, (ops.square(gradient) - v) * (1.0 - beta_2))
        # With m_hat = m / (1 - beta_1^t): lr * r_t * m_hat * sqrt(1 -
        # beta_2^t) / (sqrt(v) + eps) or lr * m_hat.
        update = ops.where(
            use_rectified, rectified_step * m / (ops.sqrt(v) + self.epsilon),
            momentum_step * m)
        self.assign_sub(variable, update)

    def get_config(self):
        config = super().get_config()
        config.update({
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "epsilon": self.epsilon,
            "rectification_threshold": self.rectification_threshold,
        })
        return config

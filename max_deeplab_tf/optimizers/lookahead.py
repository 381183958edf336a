"""Lookahead (Zhang et al., "Lookahead Optimizer: k steps forward, 1 step
back", NeurIPS 2019, arXiv 1907.08610) as a Keras 3 optimizer wrapper.

The inner optimizer updates the fast weights theta every step. Slow weights
phi start equal to theta; after every k-th inner step

  phi <- phi + alpha * (theta - phi),   theta <- phi.

The slow weights are captured from the model at the first `apply`, not at
`build`, so weights loaded after the optimizer was built (an initial
checkpoint) are what Lookahead starts from.
"""

import keras
import tensorflow as tf

from max_deeplab_tf.optimizers import base


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class Lookahead(keras.optimizers.Optimizer):
    """Wraps an optimizer with Lookahead.

    Args:
      inner_optimizer: The fast optimizer (e.g. RAdam).
      sync_period: k, inner steps between synchronisations (>= 1).
      slow_step_size: alpha in (0, 1].
    """

    def __init__(self, inner_optimizer, sync_period=6, slow_step_size=0.5,
                 name="lookahead", **kwargs):
        if isinstance(inner_optimizer, dict):
            inner_optimizer = keras.saving.deserialize_keras_object(
                inner_optimizer)
        if int(sync_period) < 1:
            raise ValueError(
                f"Lookahead sync_period must be >= 1, got {sync_period}")
        if not 0.0 < float(slow_step_size) <= 1.0:
            raise ValueError(
                "Lookahead slow_step_size must be in (0, 1], got "
                f"{slow_step_size}")
        super().__init__(learning_rate=0.0, name=name, **kwargs)
        self.inner_optimizer = inner_optimizer
        self.sync_period = int(sync_period)
        self.slow_step_size = float(slow_step_size)
        self._phase = None

    def build(self, var_list):
        if self.built:
            return
        self.inner_optimizer.build(var_list)
        super().build(var_list)
        self._slow_weights = [
            self.add_variable_from_reference(v, name="slow") for v in var_list]

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        # The base constructor sets a placeholder rate before the inner
        # optimizer exists.
        if "inner_optimizer" in self.__dict__:
            self.inner_optimizer.learning_rate = learning_rate
        else:
            keras.optimizers.Optimizer.learning_rate.fset(self, learning_rate)

    @property
    def gradients_aggregated(self):
        return getattr(self.inner_optimizer, "gradients_aggregated", False)

    @gradients_aggregated.setter
    def gradients_aggregated(self, value):
        self.inner_optimizer.gradients_aggregated = value

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        grads = list(grads)
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        pairs = list(zip(grads, trainable_variables))
        self._step_constants_cache = {}
        # Capture phi_0 = theta_0 before the first fast step.
        self._phase = "capture"
        base.per_variable_update(self, pairs, 0.0)
        self.inner_optimizer.apply(grads, trainable_variables)
        self._phase = "sync"
        base.per_variable_update(self, pairs, 0.0)
        self._phase = None
        self._iterations.assign_add(1)

    def update_step(self, gradient, variable, learning_rate):
        del gradient, learning_rate  # Lookahead only moves weights.
        slow = self._slow_weights[self._get_variable_index(variable)]
        if self._phase == "capture":
            first = self._step_constant(
                variable, "first", lambda: tf.equal(self._iterations, 0))
            self.assign(slow, tf.where(first, variable, slow))
        elif self._phase == "sync":
            sync = self._step_constant(variable, "sync", lambda: tf.equal(
                (self._iterations + 1) % self.sync_period, 0))
            moved = slow + self.slow_step_size * (variable - slow)
            self.assign(slow, tf.where(sync, moved, slow))
            self.assign(variable, tf.where(sync, moved, variable))
        else:
            raise RuntimeError("Lookahead.update_step runs only from apply()")

    def _step_constant(self, variable, name, compute):
        # Once per step and device rather than per variable (see
        # base.OptimizerHooksMixin.step_constants).
        if not tf.inside_function():
            return compute()
        cache = self.__dict__.setdefault("_step_constants_cache", {})
        key = (name, id(tf.compat.v1.get_default_graph()), variable.device)
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(
                self.inner_optimizer),
            "sync_period": self.sync_period,
            "slow_step_size": self.slow_step_size,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["inner_optimizer"] = keras.saving.deserialize_keras_object(
            config["inner_optimizer"], custom_objects=custom_objects)
        return cls(**config)

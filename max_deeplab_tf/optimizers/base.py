"""What every max_deeplab_tf optimizer adds to a Keras 3 optimizer.

Two hooks the trainer needs:

* `gradients_aggregated`: under tf.distribute a Keras 3 optimizer sums the
  gradients across replicas inside `apply`. Our train step sums them itself,
  first, so that global-norm clipping and the non-finite check see the
  gradient of the whole global batch and every replica takes the same
  decision; the optimizer must then not sum a second time.
* `weight_decay_pattern`: decoupled weight decay only on variables whose name
  matches a regular expression (deeplab2 decays convolution and dense kernels
  only, not biases, batch-norm parameters or embeddings).
"""

import re

import keras
import tensorflow as tf


def variable_name(variable):
    """A variable's path-like name without the ':0' suffix."""
    name = getattr(variable, "path", None) or variable.name
    return name.split(":")[0]


def _summed_per_row(grads):
    """`grads` with each tf.IndexedSlices made dense.

    A gather's gradient repeats a row's index once per use of the row; the
    parameter's gradient is their sum. Keras 3's updates square the repeated
    slices one by one (`ops.square` keeps them sparse), so Adam's and RAdam's
    second moment took the sum of squares instead of the square of the sum;
    tf-keras, deeplab2's optimizer, sums the repeated rows first. The dense
    sum is the same gradient, and it lets Adam's update be the fused kernel:
    Keras's sparse update took about 40 graph nodes per variable, 2,100 of
    the 23,200 of the MaX-DeepLab-S train step (54 positional embeddings).
    """
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g
            for g in grads]


class OptimizerHooksMixin:
    """Mixed in before a keras.optimizers.Optimizer subclass.

    Args:
      gradients_aggregated: Gradients passed to `apply` are already summed
        across replicas; do not all-reduce them again.
      weight_decay_pattern: If set, weight decay applies only to variables
        whose name (`path` for Keras variables) matches this regular
        expression (re.search); variables excluded with
        `exclude_from_weight_decay` stay excluded.
    """

    def __init__(self, *args, gradients_aggregated=False,
                 weight_decay_pattern=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.gradients_aggregated = bool(gradients_aggregated)
        self.weight_decay_pattern = weight_decay_pattern
        self._weight_decay_regex = (
            re.compile(weight_decay_pattern) if weight_decay_pattern else None)

    def apply(self, grads, trainable_variables=None):
        self._step_constants_cache = {}
        return super().apply(_summed_per_row(grads), trainable_variables)

    def step_constants(self, variable, compute):
        """`compute()` once per apply, device and graph (not per variable).

        Tracing a step of a model with hundreds of variables spends most of
        its time creating per-variable ops; quantities that depend only on
        the step (bias corrections, rectification terms) are made once.
        """
        if not tf.inside_function():
            return compute()
        cache = self.__dict__.setdefault("_step_constants_cache", {})
        key = (id(tf.compat.v1.get_default_graph()), variable.device,
               variable.dtype)
        if key not in cache:
            cache[key] = compute()
        return cache[key]

    def _all_reduce_sum_gradients(self, grads_and_vars):
        if self.gradients_aggregated:
            return list(grads_and_vars)
        return super()._all_reduce_sum_gradients(grads_and_vars)

    def _use_weight_decay(self, variable):
        if not super()._use_weight_decay(variable):
            return False
        if self._weight_decay_regex is None:
            return True
        return self._weight_decay_regex.search(variable_name(variable)) is not None

    def get_config(self):
        config = super().get_config()
        config["gradients_aggregated"] = self.gradients_aggregated
        config["weight_decay_pattern"] = self.weight_decay_pattern
        return config


def _handle(variable):
    """The resource handle of a Keras 3 or tf.Variable (inside a
    tf.distribute update call: of the copy being updated)."""
    if isinstance(variable, keras.Variable):
        variable = variable.value
    return variable.handle


class FusedAdamMixin:
    """Adam's update as TensorFlow's fused ResourceApplyAdam kernel.

    Keras 3 writes Adam's update as about a dozen element-wise ops per
    variable, each a pass over memory and an op to trace; tf-keras (and so
    deeplab2) uses the one fused kernel per variable. The kernel computes
    the same formula in the same order as keras.optimizers.Adam:
    m += (g - m)(1 - beta_1); v += (g^2 - v)(1 - beta_2);
    w -= m alpha / (sqrt(v) + epsilon) with
    alpha = lr sqrt(1 - beta_2^t) / (1 - beta_1^t). AMSGrad keeps Keras'
    own update.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad:
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)

        def constants():
            step = tf.cast(self.iterations + 1, dtype)
            beta_1 = tf.cast(self.beta_1, dtype)
            beta_2 = tf.cast(self.beta_2, dtype)
            return (tf.pow(beta_1, step), tf.pow(beta_2, step), beta_1,
                    beta_2, tf.cast(self.epsilon, dtype),
                    tf.cast(learning_rate, dtype))

        beta_1_power, beta_2_power, beta_1, beta_2, epsilon, lr = (
            self.step_constants(variable, constants))
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]),
            v=_handle(self._velocities[index]), beta1_power=beta_1_power,
            beta2_power=beta_2_power, lr=lr, beta1=beta_1, beta2=beta_2,
            epsilon=epsilon, grad=tf.cast(gradient, dtype))


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class Adam(OptimizerHooksMixin, FusedAdamMixin, keras.optimizers.Adam):
    """keras.optimizers.Adam with the trainer hooks and the fused update
    (deeplab2's default)."""


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class AdamW(OptimizerHooksMixin, FusedAdamMixin, keras.optimizers.AdamW):
    """keras.optimizers.AdamW (decoupled weight decay) with the trainer hooks
    and the fused update."""


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class SGD(OptimizerHooksMixin, keras.optimizers.SGD):
    """keras.optimizers.SGD with the trainer hooks."""


def per_variable_update(optimizer, grads_and_vars, learning_rate):
    """Runs `optimizer.update_step` on each pair, replica-safely.

    Under tf.distribute the update has to run once per variable copy in an
    update context (what Keras' TF backend does for its own updates); this
    reuses that machinery without summing the gradients across replicas.
    """
    pairs = [(g, v.value if isinstance(v, keras.Variable) else v)
             for g, v in grads_and_vars if g is not None]
    if not pairs:
        return

    def merged(distribution, pairs, learning_rate):
        for grad, var in pairs:
            distribution.extended.update(
                var, lambda v, g, lr: optimizer.update_step(g, v, lr),
                args=(grad, learning_rate), group=False)

    tf.__internal__.distribute.interim.maybe_merge_call(
        merged, tf.distribute.get_strategy(), pairs, learning_rate)

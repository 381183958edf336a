"""Batch normalisation over one or several axes, synchronised across replicas.

deeplab2 normalises attention similarities and retrieved values over several
axes at once (tf.keras's BatchNormalization accepted a list of axes): for
example the three stacked similarity terms of an 8-head axial attention,
[3, batch, 8, length, length], are normalised with one gamma/beta/statistic
per (term, head), i.e. variables of shape [3, 1, 8, 1, 1]. Keras 3's
BatchNormalization takes a single axis, so `MultiAxisBatchNormalization`
provides the multi-axis case with the same four variables and shapes.

`batch_norm(...)` is the factory every layer of this package uses:
`BatchNormalization` (Keras's, synchronized=True by default as deeplab2's
SyncBatchNormalization, training computed by one fused op) for one axis,
MultiAxisBatchNormalization otherwise.
Its options travel as a plain dict, `batch_norm_config`, so that every layer
stays serialisable.
"""

from typing import Any, Dict, Optional, Sequence, Union

import keras
import numpy as np
import tensorflow as tf

from max_deeplab_tf.layers.xla_context import xla_compiling_for_cpu

# deeplab2's defaults (trainer_options.solver_options).
DEFAULT_MOMENTUM = 0.99
DEFAULT_EPSILON = 1e-3


def default_batch_norm_config(config: Optional[Dict[str, Any]] = None
                              ) -> Dict[str, Any]:
    """Completes a batch-norm option dict with deeplab2's defaults.

    Args:
      config: None or a dict with any of 'momentum', 'epsilon',
        'synchronized'.

    Returns:
      A new dict with all three keys.

    Raises:
      ValueError: on an unknown key.
    """
    result = {"momentum": DEFAULT_MOMENTUM, "epsilon": DEFAULT_EPSILON,
              "synchronized": True}
    if config:
        unknown = sorted(set(config) - set(result))
        if unknown:
            raise ValueError(
                f"batch_norm_config has unknown key(s) {unknown}; expected "
                f"{sorted(result)}")
        result.update(config)
    return result


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class MultiAxisBatchNormalization(keras.layers.Layer):
    """Batch normalisation with one set of statistics per entry of `axis`.

    The statistics are reduced over every axis not in `axis`. With a single
    axis the variables have shape [channels] (as keras.layers.
    BatchNormalization); with several they keep the input's rank with 1 on the
    reduced axes, e.g. axis=[0, 2] on a [3, batch, 8, length, length] input
    gives gamma, beta, moving_mean and moving_variance of shape
    [3, 1, 8, 1, 1].

    In training with `synchronized=True` inside a tf.distribute replica
    context of more than one replica, the per-replica sums of x and x^2 and
    the element counts are all-reduced, so every replica normalises with the
    statistics of the global batch (the moving statistics then agree across
    replicas too). Float16/bfloat16 inputs are normalised in float32.

    Args:
      axis: An int or a list of ints, the axes that keep their own statistics.
      momentum: Momentum of the moving statistics.
      epsilon: Added to the variance.
      center: Whether to learn an offset beta.
      scale: Whether to learn a scale gamma.
      beta_initializer, gamma_initializer, moving_mean_initializer,
        moving_variance_initializer: Keras initialisers.
      synchronized: Whether training statistics are all-reduced across
        replicas.

    Call arguments:
      inputs: A tensor of any rank greater than every entry of `axis`.
      training: Whether to normalise with the batch statistics (and update
        the moving statistics) or with the moving statistics.

    Returns:
      A tensor of the input's shape, in the layer's compute dtype.
    """

    def __init__(self, axis: Union[int, Sequence[int]] = -1,
                 momentum: float = DEFAULT_MOMENTUM,
                 epsilon: float = DEFAULT_EPSILON, center: bool = True,
                 scale: bool = True, beta_initializer="zeros",
                 gamma_initializer="ones", moving_mean_initializer="zeros",
                 moving_variance_initializer="ones",
                 synchronized: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.axis = [int(axis)] if isinstance(axis, int) else [
            int(a) for a in axis]
        if not self.axis:
            raise ValueError("MultiAxisBatchNormalization: axis is empty")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = center
        self.scale = scale
        self.beta_initializer = keras.initializers.get(beta_initializer)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.moving_mean_initializer = keras.initializers.get(
            moving_mean_initializer)
        self.moving_variance_initializer = keras.initializers.get(
            moving_variance_initializer)
        self.synchronized = synchronized
        self.supports_masking = True

    def build(self, input_shape):
        rank = len(input_shape)
        axes = sorted({a % rank for a in self.axis})
        if len(axes) != len(self.axis) or any(
                not -rank <= a < rank for a in self.axis):
            raise ValueError(
                f"{self.name}: axis {self.axis} is invalid for an input of "
                f"shape {tuple(input_shape)}")
        for a in axes:
            if input_shape[a] is None:
                raise ValueError(
                    f"{self.name}: axis {a} of input shape "
                    f"{tuple(input_shape)} must be known to build the layer")
        self._axes = axes
        self._reduction_axes = [a for a in range(rank) if a not in axes]
        self._broadcast_shape = [
            input_shape[a] if a in axes else 1 for a in range(rank)]
        if len(axes) == 1:
            shape = (input_shape[axes[0]],)
        else:
            shape = tuple(self._broadcast_shape)
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape, name="gamma", initializer=self.gamma_initializer,
                trainable=True, autocast=False)
        if self.center:
            self.beta = self.add_weight(
                shape=shape, name="beta", initializer=self.beta_initializer,
                trainable=True, autocast=False)
        # MEAN aggregation lets replicas assign the moving statistics under
        # a MirroredStrategy; synchronised statistics are equal anyway.
        self.moving_mean = self.add_weight(
            shape=shape, name="moving_mean",
            initializer=self.moving_mean_initializer, trainable=False,
            autocast=False, aggregation="mean")
        self.moving_variance = self.add_weight(
            shape=shape, name="moving_variance",
            initializer=self.moving_variance_initializer, trainable=False,
            autocast=False, aggregation="mean")

    def _moments(self, x):
        replica_context = tf.distribute.get_replica_context()
        if (self.synchronized and replica_context is not None
                and replica_context.num_replicas_in_sync > 1):
            axes = self._reduction_axes
            local_sum = tf.reduce_sum(x, axis=axes, keepdims=True)
            local_squared_sum = tf.reduce_sum(
                tf.square(x), axis=axes, keepdims=True)
            shape = tf.shape(x)
            local_count = tf.cast(
                tf.reduce_prod(tf.gather(shape, axes)), x.dtype)
            total_sum, total_squared_sum, count = replica_context.all_reduce(
                tf.distribute.ReduceOp.SUM,
                [local_sum, local_squared_sum, local_count])
            mean = tf.math.divide_no_nan(total_sum, count)
            variance = tf.maximum(
                tf.math.divide_no_nan(total_squared_sum, count)
                - tf.square(mean), 0.0)
            return mean, variance
        return tf.nn.moments(x, axes=self._reduction_axes, keepdims=True)

    def call(self, inputs, training=None):
        input_dtype = keras.backend.standardize_dtype(inputs.dtype)
        compute_dtype = ("float32" if input_dtype in ("float16", "bfloat16")
                         else input_dtype)
        x = tf.cast(inputs, compute_dtype)
        shape = self._broadcast_shape
        gamma = (tf.reshape(tf.cast(self.gamma, compute_dtype), shape)
                 if self.scale else None)
        beta = (tf.reshape(tf.cast(self.beta, compute_dtype), shape)
                if self.center else None)
        if training and self.trainable:
            mean, variance = self._moments(x)
            param_shape = self.moving_mean.shape
            momentum = self.momentum
            self.moving_mean.assign(
                self.moving_mean * momentum
                + tf.reshape(tf.cast(mean, self.moving_mean.dtype),
                             param_shape) * (1.0 - momentum))
            self.moving_variance.assign(
                self.moving_variance * momentum
                + tf.reshape(tf.cast(variance, self.moving_variance.dtype),
                             param_shape) * (1.0 - momentum))
        else:
            mean = tf.reshape(tf.cast(self.moving_mean, compute_dtype), shape)
            variance = tf.reshape(
                tf.cast(self.moving_variance, compute_dtype), shape)
        outputs = tf.nn.batch_normalization(
            x, mean, variance, offset=beta, scale=gamma,
            variance_epsilon=self.epsilon)
        return tf.cast(outputs, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({
            "axis": list(self.axis),
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": keras.initializers.serialize(
                self.beta_initializer),
            "gamma_initializer": keras.initializers.serialize(
                self.gamma_initializer),
            "moving_mean_initializer": keras.initializers.serialize(
                self.moving_mean_initializer),
            "moving_variance_initializer": keras.initializers.serialize(
                self.moving_variance_initializer),
            "synchronized": self.synchronized,
        })
        return config


def _one_replica() -> bool:
    """Whether this runs in the replica context of a single replica (the
    default strategy's, or any strategy's with one device)."""
    replica_context = tf.distribute.get_replica_context()
    return (replica_context is not None
            and replica_context.num_replicas_in_sync == 1)


def _synchronized_moments_of_one_replica(x: tf.Tensor, axes: Sequence[int]):
    """Keras's synchronised batch moments (`keras.ops.moments(x, axes,
    synchronized=True)` with the TensorFlow backend) on a single replica,
    where its all-reduces of the sums and the count are the identity: the
    same ops, the same bits, without tf.distribute's differentiable
    all-reduce. In a graph, that one registers a gradient function per call
    in TensorFlow's process-wide gradient registry, never removed; the
    function holds tensors of the traced graph, so every graph that trained
    the layer stayed alive, and with it the variables it captured (a train
    step: the model's variables and the optimizer's slots, 871 MiB for
    MaX-DeepLab-S). This package's train step releases such registrations
    itself (training.gradient_registrations); a user's own training loop
    or Keras's `fit` does not.

    Args:
      x: The input, of any float dtype.
      axes: The axes to reduce.

    Returns:
      (mean, variance), `axes` removed, in x's dtype.
    """
    dtype = x.dtype
    low_precision = dtype in (tf.float16, tf.bfloat16)
    if low_precision:
        x = tf.cast(x, tf.float32)
    count = tf.reduce_sum(tf.ones_like(x, name="count"), axis=axes,
                          keepdims=True)
    total = tf.reduce_sum(x, axis=axes, keepdims=True)
    squared_total = tf.reduce_sum(tf.square(x), axis=axes, keepdims=True)
    mean = tf.math.divide_no_nan(total, count)
    variance = tf.maximum(
        tf.math.divide_no_nan(squared_total, count) - tf.square(mean), 0.0)
    mean = tf.squeeze(mean, axes)
    variance = tf.squeeze(variance, axes)
    if low_precision:
        # As Keras: clipped to float16's range, whatever the dtype.
        mean = tf.cast(tf.clip_by_value(mean, tf.float16.min, tf.float16.max),
                       dtype)
        variance = tf.cast(
            tf.clip_by_value(variance, tf.float16.min, tf.float16.max), dtype)
    return mean, variance


def _biased_variance_factor(x: tf.Tensor):
    """(count - 1) / count in float32, 0 for an empty input, where count is
    the number of values per channel of `x` [..., channels].

    A numpy float32 when the shape of `x` is known: the same float32
    arithmetic as the graph ops of an unknown shape, which a train step
    without grappler (on a CPU) would otherwise trace and run at every batch
    norm of every step: six graph nodes each, 768 of the MaX-DeepLab-S
    step's.
    """
    channels = x.shape[-1]
    count = x.shape.num_elements()
    if count is not None and channels:
        count = np.float32(count // channels)
        if count == 0:
            return np.float32(0.0)
        return (count - np.float32(1.0)) / count
    count = tf.cast(tf.size(x) // tf.shape(x)[-1], "float32")
    return tf.math.divide_no_nan(count - 1.0, count)


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class BatchNormalization(keras.layers.BatchNormalization):
    """keras.layers.BatchNormalization whose training is one fused op.

    On a channels-last input, training (unless the statistics must be
    synchronised across several replicas) runs as one FusedBatchNormV3,
    with FusedBatchNormGradV3 as its gradient, instead of Keras's dozen
    element-wise ops and reductions, which the graph had to trace, optimise,
    run and keep for the backward pass one by one. Same formula, same
    variables and moving-average update as Keras's layer; synchronised
    training across replicas, masks and renorm take Keras's own path.

    Inference takes Keras's own path (a scale and an offset per channel, as
    deeplab2's layer): as one FusedBatchNormV3, grappler's remapper folds
    it and a following ReLU into the convolution before it, and oneDNN runs
    that fused convolution about 20 times slower on CPUs without AVX-512
    (an AMD EPYC with AVX2 and oneDNN on: a MaX-DeepLab-S forward at 641x641
    took 17 s against 2.2 s; benchmarks/README.md). oneDNN is on by default
    on CPUs with AVX-VNNI, some without AVX-512, and wherever the user sets
    TF_ENABLE_ONEDNN_OPTS=1.
    """

    def call(self, inputs, training=None, mask=None):
        rank = len(inputs.shape)
        training = bool(training and self.trainable)
        replica_context = tf.distribute.get_replica_context()
        if (not training or mask is not None or self.renorm or rank < 2
                or self.axis not in (-1, rank - 1)
                or (self.synchronized and replica_context is not None
                    and replica_context.num_replicas_in_sync > 1)):
            return super().call(inputs, training=training, mask=mask)
        return self._fused_training_call(inputs)

    def _moments(self, inputs, mask):
        # Keras's synchronised moments all-reduce through tf.distribute even
        # on one replica, where the sum over replicas is the value itself;
        # each such all-reduce traced registers a gradient function in
        # TensorFlow's process-wide registry, never removed, that keeps the
        # traced graph and the variables it captured alive.
        if mask is None and self.synchronized and _one_replica():
            return _synchronized_moments_of_one_replica(
                inputs, self._reduction_axes)
        return super()._moments(inputs, mask)

    def _fused_training_call(self, inputs):
        """Normalises with the batch's statistics by FusedBatchNormV3 and
        updates the moving ones.

        Args:
          inputs: A [..., channels] tensor of rank >= 2.

        Returns:
          The normalised tensor, in the layer's compute dtype.
        """
        # As Keras: float16/bfloat16 inputs are normalised in float32.
        x = tf.cast(inputs, "float32")
        channels = x.shape[-1]
        # The op wants [batch, height, width, channels]; any other
        # channels-last shape is the same reduction as [-1, 1, 1, C]. Under
        # XLA for a CPU a 4-D input is flattened too: XLA's CPU code for the
        # op's reductions over batch, height and width first copied the
        # input channel-major with the batch innermost (in the MaX-DeepLab-S
        # XLA step at 129x129: 76 ms of such copies per step), and over one
        # axis it does not. Forward and gradients in one jit-compiled
        # function, minimum of 15, two runs: [2, 65, 65, 128] 10.7 / 10.8 ->
        # 8.5 / 7.9 ms, [2, 33, 33, 256] 4.4 / 4.1 -> 2.4 / 2.4 ms,
        # [2, 9, 9, 2048] 2.4 / 2.5 -> 1.8 / 1.8 ms; the step's HLO time
        # 1073 -> 898 ms, though its wall time moved within the noise of 4
        # alternating pairs (median 1.55 -> 1.50 s).
        flat = len(x.shape) != 4 or xla_compiling_for_cpu()
        if flat:
            x = tf.reshape(x, [-1, 1, 1, channels])
        moving_mean = tf.cast(self.moving_mean, "float32")
        moving_variance = tf.cast(self.moving_variance, "float32")
        scale = (tf.cast(self.gamma, "float32") if self.scale
                 else tf.ones_like(moving_mean))
        offset = (tf.cast(self.beta, "float32") if self.center
                  else tf.zeros_like(moving_mean))
        outputs, mean, unbiased_variance = tf.compat.v1.nn.fused_batch_norm(
            x, scale, offset, epsilon=self.epsilon, data_format="NHWC",
            is_training=True)
        # The op normalises with the biased variance but returns the
        # unbiased one; Keras's moving average takes the biased one.
        variance = unbiased_variance * _biased_variance_factor(x)
        self.moving_mean.assign(
            moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(
            moving_variance * self.momentum
            + variance * (1.0 - self.momentum))
        if flat:
            outputs = tf.reshape(outputs, tf.shape(inputs))
        return tf.cast(outputs, self.compute_dtype)


def batch_norm(axis: Union[int, Sequence[int]] = -1, name: Optional[str] = None,
               gamma_initializer="ones",
               batch_norm_config: Optional[Dict[str, Any]] = None
               ) -> keras.layers.Layer:
    """Creates the batch-norm layer deeplab2 would use here.

    Args:
      axis: The axis (int) or axes (list) that keep their own statistics.
      name: Layer name.
      gamma_initializer: Initialiser of gamma, e.g. 'zeros' for the last norm
        of a residual branch.
      batch_norm_config: Dict with 'momentum', 'epsilon', 'synchronized'
        (see `default_batch_norm_config`).

    Returns:
      BatchNormalization (Keras's, training by one fused op) for a single
      axis, synchronised across replicas unless batch_norm_config says
      otherwise; else a MultiAxisBatchNormalization.
    """
    config = default_batch_norm_config(batch_norm_config)
    if not isinstance(axis, int) and len(axis) == 1:
        axis = int(axis[0])
    if isinstance(axis, int):
        return BatchNormalization(
            axis=axis, momentum=config["momentum"], epsilon=config["epsilon"],
            gamma_initializer=gamma_initializer,
            synchronized=config["synchronized"], name=name)
    return MultiAxisBatchNormalization(
        axis=list(axis), momentum=config["momentum"],
        epsilon=config["epsilon"], gamma_initializer=gamma_initializer,
        synchronized=config["synchronized"], name=name)

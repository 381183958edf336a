"""One distributed training step: loss, gradients, guard, clipping, update.

Run `TrainStep.replica_step(inputs)` inside `strategy.run`. What it does on
each replica:

1. Forward and backward pass. Each loss term is summed over the replica's
   examples and divided by the GLOBAL batch size, so that the sum over
   replicas is the mean over the global batch. With 'mixed_float16' the loss
   is multiplied by a dynamic loss scale first and the gradients divided by
   it afterwards.
2. Gradients and loss terms are summed across replicas here (not in the
   optimizer), so every replica sees the gradient of the global batch: the
   non-finite check and global-norm clipping then agree on all replicas.
3. Non-finite guard, before the update: if the total loss, a gradient, a
   batch-norm statistic or a learning rate is not finite, the update is
   skipped (weights, optimizer slots and optimizer step stay as they were,
   and the model's non-trainable state that the forward pass updated, e.g.
   batch-norm moving statistics, is put back). The gradients are checked
   through their global norm (computed for clipping anyway): the sum of
   squares is finite only when every gradient is (an overflow of huge finite
   gradients also skips, as it should).
4. The update: clipping by global norm, then the optimizer(s).

With finite gradients and learning rates (and a positive Adam epsilon,
which the optimizer builder requires) an update can only go non-finite by
overflowing, so no copy of the weights is kept for a roll-back (that copy
of weights and Adam slots cost about 0.9 GB, half the first step's tracing
and 8% of every step for MaX-DeepLab-S; benchmarks/README.md). What is left,
an update that overflows finite values (e.g. a learning rate of 1e38), is
caught by the next step (its loss is then non-finite, so it is skipped and
counted) and by the checkpoint manager, which refuses to write a
non-finite value (training.checkpoints.CheckpointManager): the last
checkpoint stays the last good one.

A skipped step counts towards `consecutive_nonfinite`,
except an overflow of float16 gradients at a finite loss, which only halves
the loss scale. When `consecutive_nonfinite` reaches the configured limit the
step raises (or, where asserts cannot run, e.g. on TPU, the caller's
host-side check does) with a message saying what happened; every
checkpoint written holds the weights of a good step.

With `jit_compile` the forward and backward pass (the bulk of the work) is
compiled with XLA; the cross-replica sums and the update run outside it
because tf.distribute's cross-replica calls cannot run inside a nested
compiled function. On a TPU the strategy compiles the whole step anyway.
"""

from typing import Callable, Dict, Optional, Sequence

import keras
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf.training import gradient_registrations
from max_deeplab_tf.training import graph_optimizer
from max_deeplab_tf.training import op_stack_traces

NONFINITE_ERROR = "non-finite loss"
# Dynamic loss scaling for float16, as Keras' LossScaleOptimizer.
INITIAL_LOSS_SCALE = 2.0 ** 15
LOSS_SCALE_GROWTH_STEPS = 2000


def _all_finite(values: Sequence[tf.Tensor]) -> tf.Tensor:
    """True when no floating tensor of `values` holds a NaN or an infinity
    (integer counters are always finite).

    One check per dtype, over the tensors flattened and concatenated: a check
    per tensor took three ops each, and a step checks every batch-norm
    statistic (360 for MaX-DeepLab-S), so about 1,100 of the step's ops and
    their tracing (benchmarks/README.md). Values are never cast, so a huge
    finite float64 stays finite.
    """
    by_dtype = {}
    flat_shape = None
    for value in values:
        if not value.dtype.is_floating:
            continue
        if value.shape.rank != 1:
            if flat_shape is None:
                # One shape constant for all: a constant per reshape (with
                # an `All` over a single check) was 94 more ops in the
                # MaX-DeepLab-S step.
                flat_shape = tf.constant([-1])
            value = tf.reshape(value, flat_shape)
        by_dtype.setdefault(value.dtype, []).append(value)
    checks = [tf.reduce_all(tf.math.is_finite(tf.concat(group, axis=0)))
              for group in by_dtype.values()]
    if not checks:
        return tf.constant(True)
    return checks[0] if len(checks) == 1 else tf.reduce_all(checks)


def _state_variable(name, value, dtype):
    return tf.Variable(
        value, dtype=dtype, trainable=False, name=name,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


class TrainStep:
    """The per-replica training step.

    Args:
      model: keras.Model mapping images [batch, height, width, 3] to the
        output dictionary.
      loss_fn: Callable (inputs, outputs) -> dict of per-example [batch] loss
        terms including common.TOTAL_LOSS.
      model_optimizer: max_deeplab_tf.optimizers.ModelOptimizer built on
        `model.trainable_variables` with gradients_aggregated=True.
      global_batch_size: Examples per step over all replicas.
      mixed_precision_policy: 'float32', 'mixed_float16' or 'mixed_bfloat16'.
      max_consecutive_nonfinite_steps: Stop after this many skipped steps in
        a row (0 or less: never).
      jit_compile: Compile the forward and backward pass with XLA.
      use_asserts: Raise inside the step when the limit is hit (switched off
        where asserts do not run, e.g. on TPU).
      optimize_graph: Whether grappler optimises the function that runs the
        step (see `graph_optimizer_scope`); None: only where it pays off,
        i.e. not on a CPU-only process (training.graph_optimizer).

    Create it under the strategy's scope: it owns state variables (loss
    scale, non-finite counters) that belong in checkpoints.
    """

    def __init__(self, model: keras.Model, loss_fn: Callable,
                 model_optimizer, global_batch_size: int,
                 mixed_precision_policy: str = "float32",
                 max_consecutive_nonfinite_steps: int = 10,
                 jit_compile: bool = False, use_asserts: bool = True,
                 image_key: str = common.IMAGE,
                 optimize_graph: Optional[bool] = None):
        if mixed_precision_policy not in ("float32", "mixed_float16",
                                          "mixed_bfloat16"):
            raise ValueError(
                "trainer_options.mixed_precision_policy must be 'float32', "
                "'mixed_float16' or 'mixed_bfloat16', got "
                f"{mixed_precision_policy!r}")
        self.model = model
        self.loss_fn = loss_fn
        self.model_optimizer = model_optimizer
        self.global_batch_size = int(global_batch_size)
        self.use_loss_scaling = mixed_precision_policy == "mixed_float16"
        self.max_consecutive_nonfinite_steps = int(
            max_consecutive_nonfinite_steps)
        self.use_asserts = use_asserts
        self.image_key = image_key
        self.optimize_graph = (graph_optimizer.pays_off_for_training()
                               if optimize_graph is None
                               else bool(optimize_graph))
        self.variables = list(model.trainable_variables)
        self.state_variables = list(model.non_trainable_variables)
        self.consecutive_nonfinite = _state_variable(
            "consecutive_nonfinite_steps", 0, tf.int64)
        self.total_nonfinite = _state_variable(
            "total_nonfinite_steps", 0, tf.int64)
        self.loss_scale = _state_variable(
            "loss_scale",
            INITIAL_LOSS_SCALE if self.use_loss_scaling else 1.0, tf.float32)
        self.loss_scale_good_steps = _state_variable(
            "loss_scale_good_steps", 0, tf.int64)
        self._forward_backward = self._forward_backward_impl
        if jit_compile:
            self._forward_backward = tf.function(
                self._compiled_forward_backward, jit_compile=True)

    def graph_optimizer_scope(self):
        """A context manager to call the step's tf.function in (every call:
        its first run decides how it is optimised), e.g.

            with step.graph_optimizer_scope():
                loss = train_function(inputs)  # runs strategy.run(step...)
        """
        return graph_optimizer.enabled(self.optimize_graph)

    def checkpoint_items(self) -> Dict[str, tf.Variable]:
        """State to save beside the model and optimizer."""
        return {
            "consecutive_nonfinite_steps": self.consecutive_nonfinite,
            "total_nonfinite_steps": self.total_nonfinite,
            "loss_scale": self.loss_scale,
            "loss_scale_good_steps": self.loss_scale_good_steps,
        }

    def _compiled_forward_backward(self, inputs, loss_scale):
        """`_forward_backward_impl` traced as its own (XLA) function, whose
        graph's custom gradients are released as the step's are (see
        replica_step)."""
        with gradient_registrations.released_after_gradients():
            return self._forward_backward_impl(inputs, loss_scale)

    def _forward_backward_impl(self, inputs, loss_scale):
        with tf.GradientTape() as tape:
            outputs = self.model(inputs[self.image_key], training=True)
            losses = self.loss_fn(inputs, outputs)
            if common.TOTAL_LOSS not in losses:
                raise ValueError(
                    f"the loss returned {sorted(losses)} without "
                    f"{common.TOTAL_LOSS!r}")
            scaled = {
                name: tf.reduce_sum(tf.cast(value, tf.float32))
                / float(self.global_batch_size)
                for name, value in losses.items()}
            objective = scaled[common.TOTAL_LOSS]
            if self.use_loss_scaling:
                objective = objective * loss_scale
        grads = tape.gradient(objective, self.variables)
        grads = [None if g is None else tf.cast(g, tf.float32)
                 for g in grads]
        if self.use_loss_scaling:
            grads = [None if g is None else g / loss_scale for g in grads]
        return scaled, grads

    # AutoGraph would transpile this step and, recursively, the model, loss
    # and Keras optimizer code it calls (14% of the first step's tracing,
    # measured with py-spy). Nothing here branches on a tensor in Python:
    # the guard uses tf.cond.
    @tf.autograph.experimental.do_not_convert
    def replica_step(self, inputs) -> Dict[str, tf.Tensor]:
        """One step on this replica; returns global-batch means of the loss
        terms plus 'gradient_norm' and 'step_skipped' (1.0 when skipped),
        identical on every replica."""
        # The ops record only this package's and the user's stack frames:
        # Keras's and TensorFlow's took 200+ MiB once the step first ran.
        # The gradient functions the step registers (tf.distribute's
        # all-reduces, custom gradients) leave TensorFlow's registry once
        # traced: they would keep the step's graph, and the model's
        # variables and slots, alive for the life of the process.
        with op_stack_traces.library_frames_dropped(), \
                gradient_registrations.released_after_gradients():
            return self._replica_step(inputs)

    def _replica_step(self, inputs) -> Dict[str, tf.Tensor]:
        context = tf.distribute.get_replica_context()
        # The forward pass updates batch-norm statistics (and other state)
        # by itself; a skipped step must not keep NaNs there either. Each
        # statistic is read once before the forward pass and once after it
        # (the reads are ordered around the pass's own writes, as all uses
        # of a variable in a tf.function are); the check and the restore
        # below share the second read.
        state_before = [tf.convert_to_tensor(v) for v in self.state_variables]
        scaled, grads = self._forward_backward(
            inputs, tf.identity(self.loss_scale))
        state_after = [tf.convert_to_tensor(v) for v in self.state_variables]
        # Non-synchronised batch norm gives each replica its own statistics:
        # their health is summed with the gradients so that every replica
        # takes the same decision.
        state_bad = 1.0 - tf.cast(_all_finite(state_after), tf.float32)
        present = [i for i, g in enumerate(grads) if g is not None]
        reduced = context.all_reduce(
            tf.distribute.ReduceOp.SUM,
            [grads[i] for i in present] + [scaled, state_bad])
        losses = reduced[-2]
        state_finite = tf.equal(reduced[-1], 0.0)
        full = [None] * len(grads)
        for i, g in zip(present, reduced[:-2]):
            full[i] = g

        loss_finite = tf.math.is_finite(losses[common.TOTAL_LOSS])
        clipped, norm = self.model_optimizer.clip(full)
        grads_finite = tf.math.is_finite(norm)
        should_apply = tf.reduce_all(tf.stack(
            [loss_finite, grads_finite, state_finite,
             self.model_optimizer.learning_rates_finite()]))
        applied = self._apply_if(should_apply, clipped)
        for variable, before, after in zip(self.state_variables,
                                           state_before, state_after):
            variable.assign(tf.where(applied, after, before))
        self._update_state(applied, loss_finite, grads_finite)

        results = dict(losses)
        results["gradient_norm"] = norm
        results["step_skipped"] = 1.0 - tf.cast(applied, tf.float32)
        if self.use_loss_scaling:
            results["loss_scale"] = tf.identity(self.loss_scale)
        return results

    def _apply_if(self, should_apply, grads) -> tf.Tensor:
        """Runs the optimizer update when `should_apply` (the same on every
        replica: it is computed from cross-replica sums).

        Returns:
          `should_apply`, as a boolean scalar made after the update.
        """
        def apply(run_apply):
            run_apply()
            return tf.constant(True)

        def skip():
            return tf.constant(False)

        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            return tf.cond(should_apply, lambda: apply(
                lambda: self.model_optimizer.apply(grads)), skip)

        def cross_replica(distribution, should_apply, grads):
            flag = distribution.experimental_local_results(should_apply)[0]
            return tf.cond(flag, lambda: apply(
                lambda: distribution.extended.call_for_each_replica(
                    self.model_optimizer.apply, args=(grads,))), skip)

        return tf.distribute.get_replica_context().merge_call(
            cross_replica, args=(should_apply, grads))

    def _update_state(self, should_apply, loss_finite, grads_finite):
        if self.use_loss_scaling:
            # A float16 overflow with a finite loss is the loss scale's
            # business, not a bad step; any other skip (a non-finite loss, a
            # non-finite learning rate, non-finite batch-norm statistics)
            # counts.
            counts = tf.logical_and(
                tf.logical_not(should_apply),
                tf.logical_not(tf.logical_and(
                    loss_finite, tf.logical_not(grads_finite))))
        else:
            counts = tf.logical_not(should_apply)
        consecutive = tf.where(
            should_apply, tf.constant(0, tf.int64),
            self.consecutive_nonfinite + tf.cast(counts, tf.int64))
        self.consecutive_nonfinite.assign(consecutive)
        self.total_nonfinite.assign_add(
            tf.cast(tf.logical_not(should_apply), tf.int64))
        if self.use_loss_scaling:
            good = tf.where(grads_finite, self.loss_scale_good_steps + 1,
                            tf.zeros_like(self.loss_scale_good_steps))
            grow = good >= LOSS_SCALE_GROWTH_STEPS
            scale = tf.where(
                grads_finite,
                tf.where(grow, self.loss_scale * 2.0, self.loss_scale),
                tf.maximum(self.loss_scale * 0.5, 1.0))
            self.loss_scale.assign(scale)
            self.loss_scale_good_steps.assign(
                tf.where(grow, tf.constant(0, tf.int64), good))
        limit = self.max_consecutive_nonfinite_steps
        if limit > 0 and self.use_asserts:
            tf.debugging.Assert(
                consecutive < limit,
                [tf.constant(self.nonfinite_message(limit)), consecutive])

    @staticmethod
    def nonfinite_message(limit: int) -> str:
        return (
            f"Training stopped: {limit} consecutive steps had a "
            f"{NONFINITE_ERROR} or non-finite gradients, and their updates "
            "were skipped; the last checkpoint holds finite values. "
            "Lower the learning rate, enable gradient clipping "
            "(solver_options.use_gradient_clipping), check the input data "
            "for bad labels, or raise "
            "trainer_options.max_consecutive_nonfinite_steps.")

    def check_nonfinite_limit(self) -> None:
        """Host-side check of the limit (for where in-graph asserts do not
        run).

        Raises:
          FloatingPointError: with `nonfinite_message` once reached.
        """
        limit = self.max_consecutive_nonfinite_steps
        if limit > 0 and int(self.consecutive_nonfinite.numpy()) >= limit:
            raise FloatingPointError(self.nonfinite_message(limit))

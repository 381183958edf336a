"""The orbit trainer: runs max_deeplab_tf.training.TrainStep in loops.

Each loop of `steps_per_loop` steps runs inside one tf.function; at its end
the mean of every loss term over the loop's applied steps, the learning
rate and the skipped-step count go to TensorBoard (through orbit's
Controller) and to the log as one line with step, loss terms, learning rate,
steps/s, images/s and ETA. A loop whose steps were all skipped shows the
mean over its skipped steps instead (NaN or infinity, as they were), never
a made-up 0. The ETA is measured from the end of the process's first loop,
whose time is mostly tracing.
"""

import time
from typing import Callable, Dict

from absl import logging
import orbit
import tensorflow as tf

from max_deeplab_tf import common


def _accumulator(name):
    # float32: TPUs have no float64.
    return tf.Variable(
        0.0, dtype=tf.float32, trainable=False, name=name,
        synchronization=tf.VariableSynchronization.ON_WRITE,
        aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{seconds:02d}s"
    return f"{minutes}m{seconds:02d}s"


class Trainer(orbit.StandardTrainer):
    """Orbit StandardTrainer over a TrainStep.

    Args:
      strategy: The tf.distribute strategy.
      train_dataset_fn: input_context -> tf.data.Dataset of per-replica
        batches (orbit.utils.make_distributed_dataset calls it).
      train_step: max_deeplab_tf.training.TrainStep (made under the scope).
      global_step: The global step variable.
      global_batch_size: Images per step, for images/s.
      total_steps: training_number_of_steps, for the ETA.
      loss_names: Names of the loss terms the loss returns.
      use_tf_while_loop: Loop in a tf.while_loop (orbit's default); off
        where a step cannot be traced inside one.
    """

    def __init__(self, strategy: tf.distribute.Strategy,
                 train_dataset_fn: Callable, train_step, global_step,
                 global_batch_size: int, total_steps: int,
                 loss_names, use_tf_while_loop: bool = True):
        self._strategy = strategy
        self._step = train_step
        self._global_step = global_step
        self._global_batch_size = global_batch_size
        self._total_steps = total_steps
        names = list(loss_names)
        if common.TOTAL_LOSS not in names:
            names.insert(0, common.TOTAL_LOSS)
        self._loss_names = names
        with strategy.scope():
            self._sums = {name: _accumulator(f"sum_{name}") for name in names}
            # Over all steps, skipped ones included: what a loop without an
            # applied step reports.
            self._all_sums = {name: _accumulator(f"all_sum_{name}")
                              for name in names}
            self._applied = _accumulator("applied_steps")
            self._skipped = _accumulator("skipped_steps")
            self._grad_norm = _accumulator("sum_gradient_norm")
            self._all_grad_norm = _accumulator("all_sum_gradient_norm")
        dataset = orbit.utils.make_distributed_dataset(
            strategy, train_dataset_fn)
        super().__init__(
            dataset,
            options=orbit.StandardTrainerOptions(
                use_tf_while_loop=use_tf_while_loop))
        self._loop_start = None
        self._loop_start_step = 0
        # (time, step) at the end of the first loop: the ETA's origin.
        self.__dict__["_timing_origin"] = None
        self.__dict__["last_logs"] = None
        self.__dict__["history"] = []

    @property
    def strategy(self):
        return self._strategy

    def train(self, num_steps):
        # The loop function is optimised (or not) at its first run, under
        # the step's setting (max_deeplab_tf.training.graph_optimizer).
        with self._step.graph_optimizer_scope():
            return super().train(num_steps)

    def train_loop_begin(self):
        for variable in (list(self._sums.values())
                         + list(self._all_sums.values())
                         + [self._applied, self._skipped, self._grad_norm,
                            self._all_grad_norm]):
            variable.assign(0.0)
        self._loop_start = time.time()
        self._loop_start_step = int(self._global_step.numpy())

    def train_step(self, iterator):
        inputs = next(iterator)
        results = self._strategy.run(self._step.replica_step, args=(inputs,))
        # Every replica returns the same (all-reduced) values.
        first = {k: self._strategy.experimental_local_results(v)[0]
                 for k, v in results.items()}
        applied = 1.0 - tf.cast(first["step_skipped"], tf.float32)
        for name in self._loss_names:
            value = tf.cast(first[name], tf.float32)
            # A skipped step's loss may be NaN; keep it out of the means.
            self._sums[name].assign_add(
                tf.where(applied > 0, value, tf.zeros_like(value)))
            self._all_sums[name].assign_add(value)
        norm = tf.cast(first["gradient_norm"], tf.float32)
        self._grad_norm.assign_add(tf.where(
            applied > 0, norm, tf.constant(0.0, tf.float32)))
        self._all_grad_norm.assign_add(norm)
        self._applied.assign_add(applied)
        self._skipped.assign_add(1.0 - applied)
        self._global_step.assign_add(1)

    def _loop_means(self, steps: int) -> Dict[str, float]:
        """Loss terms and gradient norm averaged over the loop's applied
        steps, or over all its steps when none was applied."""
        applied = float(self._applied.numpy())
        if applied > 0:
            sums, norm, count = self._sums, self._grad_norm, applied
        else:
            sums, norm, count = self._all_sums, self._all_grad_norm, steps
        count = max(count, 1)
        means = {f"losses/{name}": float(sums[name].numpy()) / count
                 for name in self._loss_names}
        means["gradient_norm"] = float(norm.numpy()) / count
        return means

    def _eta(self, step: int, now: float) -> str:
        """Time left at the rate measured since the end of the first loop
        (the first loop's time is mostly tracing)."""
        if self._timing_origin is None:
            self.__dict__["_timing_origin"] = (now, step)
            return "after the next loop (this one includes tracing)"
        start, start_step = self._timing_origin
        rate = (step - start_step) / max(now - start, 1e-9)
        return format_duration((self._total_steps - step) / max(rate, 1e-9))

    def train_loop_end(self) -> Dict[str, tf.Tensor]:
        now = time.time()
        elapsed = max(now - self._loop_start, 1e-9)
        step = int(self._global_step.numpy())
        steps = step - self._loop_start_step
        logs = self._loop_means(steps)
        learning_rate = float(self._step.model_optimizer.learning_rate)
        logs["learning_rate"] = learning_rate
        logs["skipped_nonfinite_steps"] = float(self._skipped.numpy())
        if self._step.use_loss_scaling:
            logs["loss_scale"] = float(self._step.loss_scale.numpy())
        steps_per_second = steps / elapsed
        images_per_second = steps_per_second * self._global_batch_size
        logs["images_per_second"] = images_per_second
        terms = " ".join(f"{name}={logs['losses/' + name]:.4f}"
                         for name in self._loss_names)
        skipped = int(round(logs["skipped_nonfinite_steps"]))
        logging.info(
            "step %d/%d | %s | lr=%.3g | %.2f steps/s | %.1f images/s | "
            "ETA %s%s", step, self._total_steps, terms, learning_rate,
            steps_per_second, images_per_second, self._eta(step, now),
            f" | skipped {skipped} non-finite step(s)" if skipped else "")
        # Plain attributes: tf.Module would wrap them for tracking.
        self.__dict__["last_logs"] = dict(logs)
        self.__dict__["history"].append(dict(logs, step=step))
        self._step.check_nonfinite_limit()
        return logs

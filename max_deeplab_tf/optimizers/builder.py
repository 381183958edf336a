"""Optimizers from SolverOptions, with the backbone learning-rate multiplier.

As deeplab2, a backbone multiplier other than 1 gives the backbone variables
their own optimizer whose whole schedule is scaled by the multiplier; every
other variable uses the main optimizer. Gradient clipping by global norm is
applied here, once over all gradients, before they are split.
"""

from typing import Callable, Dict, List, Optional, Sequence

import tensorflow as tf

from max_deeplab_tf.optimizers import base
from max_deeplab_tf.optimizers import lookahead as lookahead_lib
from max_deeplab_tf.optimizers import radam as radam_lib
from max_deeplab_tf.optimizers import schedules

# deeplab2 decays only convolution and dense kernels.
DEFAULT_WEIGHT_DECAY_PATTERN = r"(kernel|weight)$"
SUPPORTED_OPTIMIZERS = ("adam", "adamw", "sgd", "radam")


def build_optimizer(solver_options, learning_rate_multiplier=1.0,
                    gradients_aggregated=False, name=None,
                    weight_decay_pattern=DEFAULT_WEIGHT_DECAY_PATTERN):
    """One Keras 3 optimizer as SolverOptions describe it.

    Args:
      solver_options: trainer_pb2.SolverOptions.
      learning_rate_multiplier: Scales the learning-rate schedule.
      gradients_aggregated: The caller sums gradients across replicas itself.
      name: Optimizer name.
      weight_decay_pattern: Regular expression of the variable names that
        weight decay applies to (None: all).

    Returns:
      A keras.optimizers.Optimizer (Lookahead-wrapped when
      lookahead_sync_period > 0).

    Raises:
      ValueError: naming the SolverOptions field that is not supported.
    """
    learning_rate = schedules.build_learning_rate_schedule(
        solver_options, learning_rate_multiplier)
    kind = solver_options.optimizer
    weight_decay = float(solver_options.weight_decay) or None
    hooks = dict(gradients_aggregated=gradients_aggregated,
                 weight_decay_pattern=weight_decay_pattern)
    if kind in ("adam", "adamw", "radam") and not (
            solver_options.adam_epsilon > 0):
        # With epsilon 0, a weight whose gradient has always been 0 gets
        # 0 / 0 = NaN from Adam's update.
        raise ValueError(
            "solver_options.adam_epsilon must be positive, got "
            f"{solver_options.adam_epsilon}")
    adam_args = dict(beta_1=solver_options.adam_beta_1,
                     beta_2=solver_options.adam_beta_2,
                     epsilon=solver_options.adam_epsilon)
    if kind == "adam":
        optimizer = base.Adam(learning_rate=learning_rate,
                              weight_decay=weight_decay, name=name or "adam",
                              **adam_args, **hooks)
    elif kind == "adamw":
        optimizer = base.AdamW(learning_rate=learning_rate,
                               weight_decay=weight_decay or 0.0,
                               name=name or "adamw", **adam_args, **hooks)
    elif kind == "sgd":
        # deeplab2 uses momentum 0.9.
        optimizer = base.SGD(learning_rate=learning_rate, momentum=0.9,
                             weight_decay=weight_decay, name=name or "sgd",
                             **hooks)
    elif kind == "radam":
        optimizer = radam_lib.RAdam(learning_rate=learning_rate,
                                    weight_decay=weight_decay,
                                    name=name or "radam", **adam_args, **hooks)
    else:
        raise ValueError(
            f"solver_options.optimizer {kind!r} is not supported: expected "
            f"one of {list(SUPPORTED_OPTIMIZERS)}")
    if solver_options.lookahead_sync_period > 0:
        optimizer = lookahead_lib.Lookahead(
            optimizer, sync_period=solver_options.lookahead_sync_period,
            slow_step_size=solver_options.lookahead_slow_step_size,
            name=f"lookahead_{optimizer.name}")
    elif solver_options.lookahead_sync_period < 0:
        raise ValueError(
            "solver_options.lookahead_sync_period must be >= 0, got "
            f"{solver_options.lookahead_sync_period}")
    return optimizer


class ModelOptimizer:
    """The optimizer(s) of one model, with clipping and the backbone split.

    Args:
      solver_options: trainer_pb2.SolverOptions.
      variables: The trainable variables, in the order gradients come in.
      is_backbone: Predicate on a variable; used only when the backbone
        learning-rate multiplier is not 1.
      gradients_aggregated: The caller sums gradients across replicas.
    """

    def __init__(self, solver_options, variables: Sequence[tf.Variable],
                 is_backbone: Optional[Callable] = None,
                 gradients_aggregated: bool = False):
        self._variables = list(variables)
        self.clip_norm = (float(solver_options.clip_gradient_norm)
                          if solver_options.use_gradient_clipping else 0.0)
        if solver_options.use_gradient_clipping and self.clip_norm <= 0:
            raise ValueError(
                "solver_options.clip_gradient_norm must be positive when "
                f"use_gradient_clipping is set, got {self.clip_norm}")
        self.optimizer = build_optimizer(
            solver_options, gradients_aggregated=gradients_aggregated)
        multiplier = float(solver_options.backbone_learning_rate_multiplier)
        self._backbone_mask = [False] * len(self._variables)
        self.backbone_optimizer = None
        if multiplier != 1.0:
            if is_backbone is None:
                raise ValueError(
                    "solver_options.backbone_learning_rate_multiplier is "
                    f"{multiplier} but the model does not say which "
                    "variables are the backbone")
            self._backbone_mask = [bool(is_backbone(v))
                                   for v in self._variables]
            if any(self._backbone_mask):
                self.backbone_optimizer = build_optimizer(
                    solver_options, learning_rate_multiplier=multiplier,
                    gradients_aggregated=gradients_aggregated,
                    name=f"backbone_{self.optimizer.name}")
        self._groups = []
        main = [v for v, b in zip(self._variables, self._backbone_mask)
                if not b]
        if main:
            self._groups.append((self.optimizer, False))
        if self.backbone_optimizer is not None:
            self._groups.append((self.backbone_optimizer, True))

    @property
    def num_backbone_variables(self) -> int:
        return sum(self._backbone_mask)

    def build(self):
        """Creates the optimizer slots (needed before restoring them)."""
        for optimizer, backbone in self._groups:
            optimizer.build(self._split(self._variables, backbone))

    def _split(self, values, backbone):
        return [x for x, b in zip(values, self._backbone_mask)
                if b == backbone]

    def clip(self, grads: List[tf.Tensor]):
        """Clips by global norm if configured; returns (grads, global_norm)."""
        norm = tf.linalg.global_norm([g for g in grads if g is not None])
        if self.clip_norm > 0:
            grads, _ = tf.clip_by_global_norm(grads, self.clip_norm,
                                              use_norm=norm)
        return grads, norm

    def apply(self, grads: List[tf.Tensor]):
        """Applies (already clipped) gradients, one per variable."""
        if len(grads) != len(self._variables):
            raise ValueError(
                f"expected {len(self._variables)} gradients, got {len(grads)}")
        for optimizer, backbone in self._groups:
            optimizer.apply(self._split(grads, backbone),
                            self._split(self._variables, backbone))

    @property
    def variables(self) -> List[object]:
        """Every variable the optimizer(s) own: slots, Lookahead's slow
        weights, step counters."""
        return [v for optimizer, _ in self._groups
                for v in optimizer.variables]

    def learning_rates_finite(self) -> tf.Tensor:
        """A boolean scalar: every optimizer's current learning rate is
        finite (the train step skips an update otherwise)."""
        return tf.reduce_all(tf.stack([
            tf.math.is_finite(tf.cast(optimizer.learning_rate, tf.float32))
            for optimizer, _ in self._groups]))

    @property
    def learning_rate(self):
        """The main optimizer's current learning rate."""
        return self.optimizer.learning_rate

    @property
    def iterations(self):
        return self.optimizer.iterations

    def checkpoint_items(self) -> Dict[str, object]:
        """Trackables to save, keyed as deeplab2's checkpoints."""
        items = {"optimizer": self.optimizer}
        if self.backbone_optimizer is not None:
            items["backbone_optimizer"] = self.backbone_optimizer
        return items

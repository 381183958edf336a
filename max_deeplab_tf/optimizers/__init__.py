"""Optimizers and learning-rate schedules for MaX-DeepLab training.

Public API:
  RAdam, Lookahead: Keras 3 optimizers (the paper's RAdam + Lookahead).
  Adam, AdamW, SGD: Keras' optimizers with the trainer hooks
    (`gradients_aggregated`, `weight_decay_pattern`).
  LinearWarmup, build_learning_rate_schedule(solver_options, multiplier).
  build_optimizer(solver_options, ...) -> one optimizer.
  ModelOptimizer(solver_options, variables, is_backbone, ...): the model's
    optimizer(s) with global-norm clipping and the backbone multiplier.
"""

from max_deeplab_tf.optimizers.base import SGD
from max_deeplab_tf.optimizers.base import Adam
from max_deeplab_tf.optimizers.base import AdamW
from max_deeplab_tf.optimizers.base import OptimizerHooksMixin
from max_deeplab_tf.optimizers.builder import ModelOptimizer
from max_deeplab_tf.optimizers.builder import build_optimizer
from max_deeplab_tf.optimizers.lookahead import Lookahead
from max_deeplab_tf.optimizers.radam import RAdam
from max_deeplab_tf.optimizers.schedules import LinearWarmup
from max_deeplab_tf.optimizers.schedules import build_learning_rate_schedule

__all__ = [
    "Adam", "AdamW", "SGD", "RAdam", "Lookahead", "LinearWarmup",
    "ModelOptimizer", "OptimizerHooksMixin", "build_learning_rate_schedule",
    "build_optimizer",
]

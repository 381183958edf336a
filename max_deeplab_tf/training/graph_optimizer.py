"""Whether TensorFlow's graph optimiser (grappler) runs on the train step.

Grappler rewrites every function graph the first time it runs (constant
folding, arithmetic and dependency simplification, layout changes, fusions
by the remapper, pruning). For the MaX-DeepLab-S train step on a 2-core CPU
that costs about 7 of the 12-13 s of the step's first run, and the step is
no faster for it (0.87-0.90 s a step either way; benchmarks/README.md,
issue 14). On a GPU its layout optimiser (NCHW convolutions) and remapper
(batch norm fused with its activation) are what TensorFlow relies on for
speed (not measured here: no GPU), so grappler stays on wherever a GPU or
TPU is present. Inference functions (evaluation, export, Predictor) always
keep it.

Grappler's on/off switch is process-wide (`tf.config.optimizer`), and a
function is optimised with the options of its first run, which are part of
how TensorFlow caches it: `enabled(False)` is therefore a scope around every
call of the train step's function, set and put back each time, so that the
functions called outside it (the evaluator's) are optimised as usual. A
function first run under one setting and later under the other is prepared
again (and optimised again), so always call the same function under the
same setting.
"""

import contextlib
from typing import Iterator

import tensorflow as tf

_DISABLE = "disable_meta_optimizer"


def pays_off_for_training() -> bool:
    """False on a process with only CPUs (see the module docstring)."""
    return bool(tf.config.list_logical_devices("GPU")
                or tf.config.list_logical_devices("TPU"))


@contextlib.contextmanager
def enabled(on: bool) -> Iterator[None]:
    """Within the scope, tf.function calls are optimised by grappler only if
    `on`; the previous setting is put back on exit.

    Args:
      on: Whether grappler runs on functions first run in the scope.
    """
    previous = bool(tf.config.optimizer.get_experimental_options().get(
        _DISABLE, False))
    if previous == (not on):
        yield
        return
    tf.config.optimizer.set_experimental_options({_DISABLE: not on})
    try:
        yield
    finally:
        tf.config.optimizer.set_experimental_options({_DISABLE: previous})

"""Whether the ops being traced will be compiled by XLA, and for which device.

Some layers write the same computation differently under XLA for a CPU,
where XLA's CPU code for an op is much slower than TensorFlow's kernel for
it (each use says what was measured). Under XLA for a GPU or TPU, and
outside XLA, they keep the ops deeplab2 uses.
"""

import tensorflow as tf
from tensorflow.python.ops import control_flow_util


def in_xla_compilation() -> bool:
    """Whether ops created now will be compiled by XLA (inside a function
    with `jit_compile=True`, or a TPU computation)."""
    return control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph())


def xla_compiling_for_cpu() -> bool:
    """Whether ops created now will be compiled by XLA for a CPU: inside
    an XLA compilation in a process without a GPU or TPU."""
    return in_xla_compilation() and not (
        tf.config.list_logical_devices("GPU")
        or tf.config.list_logical_devices("TPU"))

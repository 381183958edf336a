"""Releases the gradient functions a traced forward and backward pass
registers, so that the traced step can be freed.

In a graph (the trace of a tf.function), `tf.custom_gradient` registers its
gradient function in TensorFlow's process-wide gradient registry under a
fresh name ("CustomGradient-<uid>") and never removes it. The function
closes over tensors of the traced graph, so the registry keeps that graph
alive, and through it the model's variables and the optimizer's slots: each
train step traced in a process stayed in memory for the life of the process
(MaX-DeepLab-S: the step's 871 MiB of variables and slots, found while
profiling the train step's memory for issue 14; benchmarks/README.md).
tf.distribute's all-reduce is such a custom gradient (Keras's synchronised
batch norm all-reduces its moments, on one replica too), and so is a layer's
own `tf.custom_gradient` (convolutions.depthwise_conv_as_shifted_sum under
XLA).

The gradient tape that computes the step's gradients calls the function it
recorded with the op, not the registry's entry; the entry serves only a
later symbolic differentiation of the graph (tf.gradients over it, or the
gradient of a call of the traced function), which nothing does with a
forward and backward pass whose gradients are already computed. So
`released_after_gradients()` drops, at the end of its scope, the entries
registered during it for ops of the graph it was entered in. Entries for ops
of other graphs (a nested tf.function of the model, which a later trace may
reuse and differentiate again) stay.

TensorFlow has no public way to unregister a gradient; the scope edits the
registry's dictionary (`tensorflow.python.framework.ops._gradient_registry`),
and where that is missing it changes nothing.
"""

import contextlib
from typing import Dict, Iterator, Optional, Set

import tensorflow as tf

try:
    from tensorflow.python.framework import ops as _tf_ops
except ImportError:  # pragma: no cover - depends on the TensorFlow build
    _tf_ops = None

# The prefix of tf.custom_gradient's registered names (custom_gradient.py's
# generate_name), and the op attribute that ties an op to its name.
_CUSTOM_GRADIENT_PREFIX = "CustomGradient-"
_GRADIENT_OP_TYPE_ATTR = "_gradient_op_type"


def _registry() -> Optional[Dict[str, object]]:
    """TensorFlow's gradient registry as a dict of name -> entry, or None
    where this TensorFlow keeps it otherwise."""
    registry = getattr(getattr(_tf_ops, "_gradient_registry", None),
                       "_registry", None)
    return registry if isinstance(registry, dict) else None


def _custom_gradient_names(graph: tf.Graph) -> Set[str]:
    """The registered names that ops of `graph` take their gradient from."""
    names = set()
    for op in graph.get_operations():
        # tf.custom_gradient ties its name to an IdentityN op.
        if op.type != "IdentityN":
            continue
        try:
            name = op.get_attr(_GRADIENT_OP_TYPE_ATTR)
        except ValueError:  # an IdentityN without a gradient override
            continue
        names.add(name.decode() if isinstance(name, bytes) else name)
    return names


def available() -> bool:
    """Whether this TensorFlow's registry is the dict the scope edits."""
    return _registry() is not None


@contextlib.contextmanager
def released_after_gradients() -> Iterator[None]:
    """A scope around the trace of a forward pass and its gradients: at its
    end, the custom gradients registered in it for ops of the graph being
    traced (the one current at entry) leave TensorFlow's registry. Eagerly
    nothing is registered and nothing changes."""
    registry = _registry()
    if registry is None or tf.executing_eagerly():
        yield
        return
    graph = tf.compat.v1.get_default_graph()
    # set(dict) copies in one step under the GIL: the replicas of a
    # MirroredStrategy trace in threads of their own, and register and
    # release concurrently.
    before = set(registry)
    yield
    new = {name for name in set(registry) - before
           if name.startswith(_CUSTOM_GRADIENT_PREFIX)}
    if not new:
        return
    for name in new & _custom_gradient_names(graph):
        registry.pop(name, None)

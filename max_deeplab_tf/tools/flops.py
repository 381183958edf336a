"""Floating-point operations of a traced TensorFlow graph.

TensorFlow's profiler (`tf.compat.v1.profiler`, `float_operation()`)
counts the ops that register a 'flops' statistic: convolutions, MatMul,
BatchMatMul, element-wise arithmetic, ... but not `Einsum`, which the
axial attention uses for its query-key and attention-value products. Those
are counted here from the equation and the operands' static shapes: two
FLOPs (a multiply and an add) per term of the sum, as the profiler counts
a MatMul.

    from max_deeplab_tf.tools import flops
    counted = flops.model_forward_flops(model, [1, 641, 641, 3])
    counted["total"]  # FLOPs of one forward pass, every output

    # Only what a function's returned tensors need (what TensorFlow runs):
    concrete = forward.get_concrete_function(images)
    flops.graph_flops(concrete.graph, outputs=concrete.outputs)["total"]
"""

from typing import Dict, List, Optional, Sequence

import tensorflow as tf


def einsum_flops(equation: str, input_shapes: Sequence[Sequence[int]]) -> int:
    """2 x the product of the sizes of every index of an einsum.

    Args:
      equation: An explicit einsum equation without ellipsis, 'ab,bc->ac'.
      input_shapes: Static shapes of the operands, in order.

    Returns:
      The FLOPs: each output element sums one product per value of the
      contracted indices.

    Raises:
      ValueError: an ellipsis, an implicit output, or shapes that do not
        match the equation.
    """
    if "..." in equation or "->" not in equation:
        raise ValueError(f"einsum equation {equation!r}: expected explicit "
                         "indices and an output ('ab,bc->ac')")
    inputs = equation.replace(" ", "").split("->")[0].split(",")
    if len(inputs) != len(input_shapes):
        raise ValueError(f"einsum equation {equation!r}: {len(inputs)} "
                         f"operands, got {len(input_shapes)} shapes")
    sizes: Dict[str, int] = {}
    for indices, shape in zip(inputs, input_shapes):
        if len(indices) != len(shape) or None in shape:
            raise ValueError(f"einsum equation {equation!r}: operand "
                             f"{indices!r} has shape {list(shape)}")
        for index, size in zip(indices, shape):
            if sizes.setdefault(index, int(size)) != int(size):
                raise ValueError(f"einsum equation {equation!r}: index "
                                 f"{index!r} is {sizes[index]} and {size}")
    product = 1
    for size in sizes.values():
        product *= size
    return 2 * product


def graph_flops(graph: tf.Graph,
                outputs: Optional[Sequence[tf.Tensor]] = None
                ) -> Dict[str, int]:
    """FLOPs of a graph with static shapes.

    Args:
      graph: A traced graph, e.g. `concrete_function.graph`.
      outputs: If given, only the ops these tensors depend on are counted:
        what a tf.function returning only them runs (TensorFlow prunes the
        rest when it runs a function), e.g. `concrete_function.outputs`.

    Returns:
      {"profiler": what TensorFlow's profiler counts (its per-op 'flops'
      statistics), "einsum": the Einsum ops it leaves out (none once a
      'flops' statistic is registered for Einsum), "total": their sum}.
    """
    # pylint: disable=import-outside-toplevel
    from tensorflow.compat.v1 import profiler
    from tensorflow.python.framework import ops as framework_ops

    if outputs is None:
        options = profiler.ProfileOptionBuilder(
            profiler.ProfileOptionBuilder.float_operation()
        ).with_empty_output().build()
        counted = profiler.profile(graph, options=options).total_float_ops
        operations = graph.get_operations()
    else:
        # The profiler's own count, restricted to the fetched ops: the same
        # per-op statistics it sums.
        operations = _ops_reached_from(outputs)
        counted = sum(
            framework_ops.get_stats_for_node_def(
                graph, op.node_def, "flops").value or 0
            for op in operations if _has_flops_statistic(op))
    einsum = 0
    for op in operations:
        # tf-models-official's train_utils registers a statistic for
        # Einsum when imported; the profiler has then counted it.
        if op.type == "Einsum" and not _has_flops_statistic(op):
            einsum += einsum_flops(
                op.get_attr("equation").decode(),
                [tuple(t.shape.as_list()) for t in op.inputs])
    return {"profiler": int(counted), "einsum": einsum,
            "total": int(counted) + einsum}


def _has_flops_statistic(op) -> bool:
    """Whether a 'flops' statistic is registered for the op's type (the ops
    TensorFlow's profiler counts)."""
    # pylint: disable=import-outside-toplevel,protected-access
    from tensorflow.python.framework import ops as framework_ops
    try:
        framework_ops._stats_registry.lookup(op.type + ",flops")
    except LookupError:
        return False
    return True


def _ops_reached_from(outputs: Sequence[tf.Tensor]) -> List:
    """The ops `outputs` depend on through data and control inputs."""
    seen, stack = {}, [t.op for t in outputs]
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen[op.name] = op
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return list(seen.values())


def model_forward_flops(model, input_shape: Sequence[int]) -> Dict[str, int]:
    """FLOPs of one inference forward pass of a Keras model.

    Every output of `model(images, training=False)` is counted, also those
    a caller may not fetch (MaX-DeepLab's auxiliary semantic logits, which
    post-processing does not use and a tf.function returning only the
    panoptic map prunes).

    Args:
      model: A built Keras model taking [batch, height, width, 3] images.
      input_shape: The static [batch, height, width, 3] input shape.

    Returns:
      As `graph_flops`.
    """
    forward = tf.function(lambda images: model(images, training=False))
    concrete = forward.get_concrete_function(
        tf.TensorSpec(list(input_shape), tf.float32))
    return graph_flops(concrete.graph)

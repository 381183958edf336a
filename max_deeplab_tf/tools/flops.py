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
    counted["total"]  # FLOPs of one forward pass
"""

from typing import Dict, Sequence

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


def graph_flops(graph: tf.Graph) -> Dict[str, int]:
    """FLOPs of a graph with static shapes.

    Args:
      graph: A traced graph, e.g. `concrete_function.graph`.

    Returns:
      {"profiler": what TensorFlow's profiler counts, "einsum": the
      Einsum ops it leaves out (none once a 'flops' statistic is
      registered for Einsum), "total": their sum}.
    """
    # pylint: disable=import-outside-toplevel
    from tensorflow.compat.v1 import profiler

    options = profiler.ProfileOptionBuilder(
        profiler.ProfileOptionBuilder.float_operation()).with_empty_output(
        ).build()
    from tensorflow.python.framework import ops as framework_ops

    counted = profiler.profile(graph, options=options).total_float_ops
    einsum = 0
    for op in graph.get_operations():
        # tf-models-official's train_utils registers a statistic for
        # Einsum when imported; the profiler has then counted it.
        if op.type == "Einsum" and framework_ops.get_stats_for_node_def(
                graph, op.node_def, "flops").value is None:
            einsum += einsum_flops(
                op.get_attr("equation").decode(),
                [tuple(t.shape.as_list()) for t in op.inputs])
    return {"profiler": int(counted), "einsum": einsum,
            "total": int(counted) + einsum}


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

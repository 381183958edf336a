"""TensorFlow ops used by the MaX-DeepLab losses.

  hungarian_matching(cost, valid_columns=None) -> float32 [batch, rows, cols]
    Exact, batched minimum-cost assignment (scipy's linear_sum_assignment
    total), pure TF, usable eagerly, under tf.function and under XLA.
"""

from max_deeplab_tf.ops.hungarian_matching import hungarian_matching

__all__ = ["hungarian_matching"]

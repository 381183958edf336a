"""MaX-DeepLab losses: PQ-style, mask-ID cross-entropy, instance
discrimination and the auxiliary semantic loss (deeplab2's definitions).

Public API:
  MaXDeepLabLoss(loss_options, dataset_descriptor)(y_true, y_pred) -> dict of
    per-example [batch] float32 terms (keys from max_deeplab_tf.common) and
    common.TOTAL_LOSS.
  transformer_class_ids(dataset_descriptor) -> dataset class id of each
    transformer class (thing ids, then stuff ids; void is the extra last
    class).
"""

from max_deeplab_tf.losses.ground_truth import transformer_class_ids
from max_deeplab_tf.losses.max_deeplab_loss import MaXDeepLabLoss

__all__ = ["MaXDeepLabLoss", "transformer_class_ids"]

"""Inference: MaX-DeepLab post-processing (deeplab2's pixel-wise version).

  post_processing.PostProcessor(evaluator_options, descriptor, output_size)
    (model outputs) -> panoptic_pred, semantic_pred, instance_pred,
    instance_scores, semantic_scores.
"""

from max_deeplab_tf.inference.post_processing import PostProcessor
from max_deeplab_tf.inference.post_processing import panoptic_post_process

"""Inference: the Predictor API, MaX-DeepLab post-processing and drawing.

  Predictor.from_saved_model(path) / Predictor.from_checkpoint(model_dir)
    (image, path, PIL image or batch) -> Prediction (maps, segments,
    overlay()); see `predictor`.
  post_processing.PostProcessor(evaluator_options, descriptor, output_size)
    (model outputs) -> panoptic_pred, semantic_pred, instance_pred,
    instance_scores, semantic_scores (deeplab2's pixel-wise version).
  visualization: colours, overlays and class legends (numpy + PIL).
  predict: the `python -m max_deeplab_tf.predict` command.
"""

import importlib

# Names -> defining module, imported on first use so that importing a
# submodule (the predict command, visualization) does not import TensorFlow
# before the command has configured its logging.
_LAZY = {
    "PostProcessor": "post_processing",
    "panoptic_post_process": "post_processing",
    "Prediction": "predictor",
    "Predictor": "predictor",
    "Segment": "predictor",
}
__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(
            f"max_deeplab_tf.inference.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(
        f"module 'max_deeplab_tf.inference' has no attribute {name!r}")

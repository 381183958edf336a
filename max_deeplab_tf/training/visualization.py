"""Evaluation panels (image | ground truth | prediction | legend) as PNG
files and TensorBoard images.

The drawing itself (colours, overlays, legends) is
`max_deeplab_tf.inference.visualization`, shared with the Predictor and the
predict command; this module adds the files the trainer writes.
"""

from typing import Sequence

import numpy as np
import tensorflow as tf

from max_deeplab_tf.inference.visualization import colorize_panoptic
from max_deeplab_tf.inference.visualization import default_colormap
from max_deeplab_tf.inference.visualization import panels
from max_deeplab_tf.inference.visualization import side_by_side
from max_deeplab_tf.training import files

__all__ = ["colorize_panoptic", "default_colormap", "panels", "side_by_side",
           "panels_fn", "write_panels"]


def panels_fn(descriptor, colormap=None):
    """(images, gt, pred) -> uint8 [batch, H, W, 3] evaluation panels of a
    dataset, enlarged to a readable size with a legend of class names (see
    `inference.visualization.panels`); for the evaluator's EvalHooks."""

    def draw(images, gt, pred):
        return panels(images, gt, pred, descriptor, colormap)

    return draw


def write_panels(panels_batch: np.ndarray, names: Sequence[str],
                 directory: str, step: int) -> None:
    """Writes each panel as DIRECTORY/NAME_step-STEP.png (atomically)."""
    for panel, name in zip(panels_batch, names):
        stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        png = tf.io.encode_png(tf.constant(panel)).numpy()
        files.write_atomically(f"{directory}/{stem}_step-{step}.png", png,
                               binary=True)

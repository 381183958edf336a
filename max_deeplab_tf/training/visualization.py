"""Panoptic maps as colour images, for TensorBoard and prediction files."""

from typing import Sequence

import numpy as np
import tensorflow as tf

from max_deeplab_tf.training import files


def default_colormap(num_classes: int) -> np.ndarray:
    """Distinct, deterministic colours [num_classes, 3] uint8 (bit-reversal of
    the class id, as the PASCAL VOC colour map)."""
    colours = np.zeros((num_classes, 3), np.uint8)
    for label in range(num_classes):
        value, shift = label, 7
        while value:
            for channel in range(3):
                colours[label, channel] |= ((value >> channel) & 1) << shift
            value >>= 3
            shift -= 1
    return colours


def colorize_panoptic(panoptic: np.ndarray, colormap: np.ndarray,
                      label_divisor: int) -> np.ndarray:
    """[..., height, width] panoptic ids -> [..., height, width, 3] uint8.

    Each segment takes its class colour, shifted per instance so that
    touching instances of a class differ; segment boundaries are white.
    """
    panoptic = np.asarray(panoptic, np.int64)
    semantic = np.clip(panoptic // label_divisor, 0, len(colormap) - 1)
    instance = panoptic % label_divisor
    colour = colormap[semantic].astype(np.int32)
    jitter = (instance[..., None] * np.array([37, 67, 97])) % 96
    colour = np.where(instance[..., None] > 0,
                      np.clip(colour + jitter - 48, 0, 255), colour)
    boundary = np.zeros(panoptic.shape, bool)
    boundary[..., 1:, :] |= panoptic[..., 1:, :] != panoptic[..., :-1, :]
    boundary[..., :, 1:] |= panoptic[..., :, 1:] != panoptic[..., :, :-1]
    colour[boundary] = 255
    return colour.astype(np.uint8)


def side_by_side(images, gt, pred, colormap, label_divisor) -> np.ndarray:
    """[batch, h, 3w, 3] uint8 panels: image | ground truth | prediction.

    Args:
      images: [batch, h_i, w_i, 3] float in [0, 255].
      gt, pred: [batch, h, w] panoptic ids (the image is cropped or padded
        to their size).
    """
    images = np.asarray(images)
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    h, w = gt.shape[1:3]
    canvas = np.zeros((len(gt), h, w, 3), np.uint8)
    hi, wi = min(h, images.shape[1]), min(w, images.shape[2])
    canvas[:, :hi, :wi] = np.clip(images[:, :hi, :wi], 0, 255).astype(np.uint8)
    return np.concatenate(
        [canvas, colorize_panoptic(gt, colormap, label_divisor),
         colorize_panoptic(pred, colormap, label_divisor)], axis=2)


def write_panels(panels: np.ndarray, names: Sequence[str], directory: str,
                 step: int) -> None:
    """Writes each panel as DIRECTORY/NAME_step-STEP.png (atomically)."""
    for panel, name in zip(panels, names):
        stem = name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
        png = tf.io.encode_png(tf.constant(panel)).numpy()
        files.write_atomically(f"{directory}/{stem}_step-{step}.png", png,
                               binary=True)

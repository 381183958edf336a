"""Panoptic maps drawn for people: colours, overlays and a class legend.

One implementation for every picture the project makes: `Prediction.overlay`
and the predict command (image with the segments blended over it) and the
trainer's evaluation panels (image | ground truth | prediction), each with a
legend of the class names present. numpy and PIL only (no TensorFlow).

    colormap = colormap_for(descriptor)                    # [classes, 3]
    drawn = overlay(image, panoptic, descriptor)           # [h, w + legend, 3]
    panels = panels(images, gt, pred, descriptor)          # [b, H, W, 3]
"""

import math
from typing import Iterable, Optional, Sequence

import numpy as np

# Share of the class colour in an overlay pixel (the rest is the image).
OVERLAY_ALPHA = 0.55
# Evaluation panels smaller than this are enlarged (nearest neighbour, an
# integer factor) so that they stay readable: the demo's 97 px becomes 291.
MIN_PANEL_HEIGHT = 256
_BOUNDARY = 255
_LEGEND_BACKGROUND = (32, 32, 32)
_TEXT = (255, 255, 255)


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


def colormap_for(descriptor) -> np.ndarray:
    """The descriptor's colours [num_classes, 3] uint8, or the default map
    when it has none for every class."""
    if len(descriptor.colormap) == descriptor.num_classes:
        return np.asarray(descriptor.colormap, np.uint8)
    return default_colormap(descriptor.num_classes)


def class_name(descriptor, class_id: int) -> str:
    """The name of a semantic id ('class_<id>' when the descriptor has no
    name for it)."""
    names = descriptor.class_names
    if 0 <= class_id < len(names) and names[class_id]:
        return str(names[class_id])
    return f"class_{class_id}"


def _boundaries(panoptic: np.ndarray) -> np.ndarray:
    """bool [..., h, w]: pixels whose segment differs from the one above or
    to the left."""
    boundary = np.zeros(panoptic.shape, bool)
    boundary[..., 1:, :] |= panoptic[..., 1:, :] != panoptic[..., :-1, :]
    boundary[..., :, 1:] |= panoptic[..., :, 1:] != panoptic[..., :, :-1]
    return boundary


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
    colour[_boundaries(panoptic)] = _BOUNDARY
    return colour.astype(np.uint8)


def blend(image: np.ndarray, panoptic: np.ndarray, descriptor,
          colormap: Optional[np.ndarray] = None,
          alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """The image with each segment's class colour blended over it.

    Args:
      image: uint8 [height, width, 3].
      panoptic: int [height, width], semantic * label_divisor + instance.
      descriptor: DatasetDescriptor (label divisor, void label).
      colormap: uint8 [num_classes, 3]; default `colormap_for(descriptor)`.
      alpha: share of the class colour.

    Returns:
      uint8 [height, width, 3]: void pixels keep the image, segment
      boundaries are white.
    """
    colormap = colormap_for(descriptor) if colormap is None else colormap
    panoptic = np.asarray(panoptic, np.int64)
    semantic = panoptic // descriptor.label_divisor
    void = ((semantic == descriptor.ignore_label) | (semantic < 0)
            | (semantic >= len(colormap)))
    colour = colormap[np.clip(semantic, 0, len(colormap) - 1)].astype(
        np.float32)
    image = np.asarray(image, np.float32)
    blended = np.where(void[..., None], image,
                       (1 - alpha) * image + alpha * colour)
    blended[_boundaries(panoptic)] = _BOUNDARY
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def present_classes(descriptor, *panoptic_maps: np.ndarray) -> list:
    """Sorted semantic ids (void excluded) present in any of the maps."""
    ids = set()
    for panoptic in panoptic_maps:
        semantic = np.unique(np.asarray(panoptic, np.int64)
                             // descriptor.label_divisor)
        ids.update(int(s) for s in semantic
                   if s != descriptor.ignore_label
                   and 0 <= s < descriptor.num_classes)
    return sorted(ids)


def font_size_for(height: int) -> int:
    """Legend font size in pixels for a picture `height` pixels high."""
    return int(min(48, max(12, round(height / 40))))


def legend(class_ids: Iterable[int], descriptor, height: int,
           colormap: Optional[np.ndarray] = None,
           font_size: Optional[int] = None) -> np.ndarray:
    """A legend column: one colour swatch and class name per class.

    Args:
      class_ids: semantic ids to list, in order.
      descriptor: DatasetDescriptor (names).
      height: the picture's height; the legend is at least this high
        (taller when its rows need it).
      colormap: uint8 [num_classes, 3]; default `colormap_for(descriptor)`.
      font_size: pixels; default `font_size_for(height)`.

    Returns:
      uint8 [legend_height, legend_width, 3].
    """
    from PIL import Image, ImageDraw, ImageFont

    class_ids = list(class_ids)
    colormap = colormap_for(descriptor) if colormap is None else colormap
    size = font_size or font_size_for(height)
    font = ImageFont.load_default(size=size)
    names = [class_name(descriptor, c) for c in class_ids] or ["(no segment)"]
    pad = max(2, size // 2)
    row = size + pad
    text_width = max(int(math.ceil(font.getlength(n))) for n in names)
    width = pad + size + pad + text_width + pad
    rows_height = pad + row * len(names)
    canvas = Image.new("RGB", (width, max(height, rows_height)),
                       _LEGEND_BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for index, name in enumerate(names):
        top = pad + index * row
        if index < len(class_ids):
            colour = tuple(int(c) for c in colormap[class_ids[index]])
            draw.rectangle([pad, top, pad + size - 1, top + size - 1],
                           fill=colour, outline=_TEXT)
        draw.text((pad + size + pad, top + size / 2), name, fill=_TEXT,
                  font=font, anchor="lm")
    return np.asarray(canvas)


def with_legend(picture: np.ndarray, class_ids: Sequence[int], descriptor,
                colormap: Optional[np.ndarray] = None) -> np.ndarray:
    """[h, w, 3] -> [max(h, legend h), w + legend w, 3]: the legend to the
    right of the picture (the picture padded below when the legend is
    taller)."""
    column = legend(class_ids, descriptor, picture.shape[0], colormap)
    height = column.shape[0]
    canvas = np.empty((height, picture.shape[1] + column.shape[1], 3),
                      np.uint8)
    canvas[:] = _LEGEND_BACKGROUND
    canvas[:picture.shape[0], :picture.shape[1]] = picture
    canvas[:, picture.shape[1]:] = column
    return canvas


def overlay(image: np.ndarray, panoptic: np.ndarray, descriptor,
            colormap: Optional[np.ndarray] = None,
            show_legend: bool = True) -> np.ndarray:
    """`blend` plus a legend of the classes present.

    Returns:
      uint8 [height', width + legend_width, 3] (height' >= height), or
      [height, width, 3] without the legend.
    """
    drawn = blend(image, panoptic, descriptor, colormap)
    if not show_legend:
        return drawn
    return with_legend(drawn, present_classes(descriptor, panoptic),
                       descriptor, colormap)


def enlarge(picture: np.ndarray, min_height: int) -> np.ndarray:
    """Nearest-neighbour enlargement of [..., h, w, c] by the smallest integer
    factor that makes h >= min_height (unchanged when already as high)."""
    factor = max(1, math.ceil(min_height / max(1, picture.shape[-3])))
    if factor == 1:
        return picture
    return np.repeat(np.repeat(picture, factor, axis=-3), factor, axis=-2)


def panels(images, gt, pred, descriptor, colormap=None,
           min_height: int = MIN_PANEL_HEIGHT) -> np.ndarray:
    """Evaluation panels: image | ground truth | prediction | legend.

    Args:
      images: [batch, h_i, w_i, 3] float or uint8 in [0, 255] (cropped or
        padded to the maps' size).
      gt, pred: [batch, h, w] panoptic ids.
      descriptor: DatasetDescriptor (label divisor, void, names).
      colormap: uint8 [num_classes, 3]; default `colormap_for(descriptor)`.
      min_height: panels lower than this are enlarged by an integer factor.

    Returns:
      uint8 [batch, H, W, 3], H >= max(h * factor, legend height): one size
      for the batch (as TensorBoard's image summary needs), each panel's
      legend listing the classes of its ground truth and prediction.
    """
    colormap = colormap_for(descriptor) if colormap is None else colormap
    images, gt, pred = np.asarray(images), np.asarray(gt), np.asarray(pred)
    strips = side_by_side(images, gt, pred, colormap,
                          descriptor.label_divisor)
    drawn = [with_legend(enlarge(strip, min_height),
                         present_classes(descriptor, g, p), descriptor,
                         colormap)
             for strip, g, p in zip(strips, gt, pred)]
    if not drawn:
        return np.zeros((0, min_height, 3 * min_height, 3), np.uint8)
    height = max(d.shape[0] for d in drawn)
    width = max(d.shape[1] for d in drawn)
    out = np.empty((len(drawn), height, width, 3), np.uint8)
    out[:] = _LEGEND_BACKGROUND
    for index, picture in enumerate(drawn):
        out[index, :picture.shape[0], :picture.shape[1]] = picture
    return out


def side_by_side(images, gt, pred, colormap, label_divisor) -> np.ndarray:
    """[batch, h, 3w, 3] uint8 strips: image | ground truth | prediction, at
    the maps' size, without legend (see `panels`).

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

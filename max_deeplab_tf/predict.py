r"""Panoptic predictions of an exported model on image files.

    python -m max_deeplab_tf.predict --saved_model DIR --images "GLOB" \
        --output_dir OUT [--dataset NAME_OR_JSON]

For each image (any size; grayscale and RGBA are turned into RGB, alpha
dropped) it writes
  OUT/overlay/NAME.png   the image with segment colours, instance boundaries
                         and class names drawn over it;
  OUT/panoptic/NAME.png  the COCO panoptic PNG (RGB-encoded segment ids);
and at the end OUT/panoptic.json, the COCO panoptic JSON of all images (see
max_deeplab_tf.evaluation.coco_format). Files that cannot be read are
skipped with a message; the exit status is then 1 (0 when every image was
written, 2 when nothing could be done at all).

The class names, colours and label divisor come from the export's
assets.extra/dataset_descriptor.json (written by max_deeplab_tf.export), or
from --dataset.
"""

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence

import numpy as np

_OVERLAY_ALPHA = 0.55


def read_image(path: str) -> np.ndarray:
    """An image file -> uint8 [height, width, 3].

    Grayscale is repeated over the channels; alpha is dropped.

    Raises:
      ValueError: naming the file, when it is not a readable image.
    """
    import tensorflow as tf

    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
        image = tf.io.decode_image(data, channels=3, dtype=tf.uint8,
                                   expand_animations=False)
    except (tf.errors.OpError, OSError) as e:
        message = getattr(e, "message", str(e)).strip().splitlines()[0]
        raise ValueError(f"{path}: not a readable image ({message})")
    return image.numpy()


def overlay(image: np.ndarray, panoptic: np.ndarray, descriptor,
            colormap: np.ndarray) -> np.ndarray:
    """Image with segment colours, boundaries and class names.

    Args:
      image: uint8 [height, width, 3].
      panoptic: int [height, width].
      descriptor: DatasetDescriptor (label divisor, void, class names).
      colormap: uint8 [num_classes, 3].

    Returns:
      uint8 [height, width, 3].
    """
    from PIL import Image, ImageDraw

    divisor = descriptor.label_divisor
    semantic = np.clip(panoptic // divisor, 0, len(colormap) - 1)
    void = panoptic // divisor == descriptor.ignore_label
    colour = colormap[semantic].astype(np.float32)
    blended = np.where(void[..., None], image.astype(np.float32),
                       (1 - _OVERLAY_ALPHA) * image + _OVERLAY_ALPHA * colour)
    boundary = np.zeros(panoptic.shape, bool)
    boundary[1:, :] |= panoptic[1:, :] != panoptic[:-1, :]
    boundary[:, 1:] |= panoptic[:, 1:] != panoptic[:, :-1]
    blended[boundary] = 255
    canvas = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    names = list(descriptor.class_names)
    for value in np.unique(panoptic):
        sem = int(value) // divisor
        if sem == descriptor.ignore_label:
            continue
        rows, cols = np.nonzero(panoptic == value)
        # The segment pixel nearest the centroid (the centroid itself may lie
        # outside a non-convex segment).
        nearest = np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2)
        name = names[sem] if sem < len(names) else f"class_{sem}"
        draw.text((int(cols[nearest]), int(rows[nearest])), name,
                  fill=(255, 255, 255), stroke_width=1, stroke_fill=(0, 0, 0),
                  anchor="mm")
    return np.asarray(canvas)


def _unique_stems(paths: Sequence[str]) -> List[str]:
    stems, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}_{count}")
    return stems


def run(saved_model: str, patterns: Sequence[str], output_dir: str,
        dataset: Optional[str] = None, log=print) -> int:
    """The command; returns the exit status."""
    import tensorflow as tf

    from max_deeplab_tf import export
    from max_deeplab_tf.data import dataset_info
    from max_deeplab_tf.evaluation import coco_format
    from max_deeplab_tf.training import files
    from max_deeplab_tf.training import visualization

    paths = sorted({p for pattern in patterns
                    for p in tf.io.gfile.glob(pattern)})
    paths = [p for p in paths if not tf.io.gfile.isdir(p)]
    if not paths:
        log(f"error: no file matches {list(patterns)}")
        return 2
    if dataset:
        descriptor = dataset_info.get_dataset_descriptor(dataset)
    else:
        descriptor = export.load_descriptor(saved_model)
        if descriptor is None:
            log(f"error: {saved_model} has no {export.DESCRIPTOR_FILE}; "
                "name the dataset with --dataset")
            return 2
    colormap = (np.asarray(descriptor.colormap, np.uint8)
                if len(descriptor.colormap) == descriptor.num_classes
                else visualization.default_colormap(descriptor.num_classes))
    try:
        served = tf.saved_model.load(saved_model).signatures[
            "serving_default"]
    except (OSError, KeyError, tf.errors.OpError) as e:
        log(f"error: cannot load a SavedModel with a serving_default "
            f"signature from {saved_model}: {e}")
        return 2

    output_dir = output_dir.rstrip("/")
    writer = coco_format.CocoPanopticWriter(output_dir, descriptor,
                                            json_name="panoptic.json",
                                            png_subdir="panoptic")
    skipped = []
    start = time.time()
    for index, (path, stem) in enumerate(zip(paths, _unique_stems(paths))):
        prefix = f"[{index + 1}/{len(paths)}] {path}"
        try:
            image = read_image(path)
        except ValueError as e:
            log(f"{prefix}: skipped: {e}")
            skipped.append(path)
            continue
        outputs = served(images=tf.constant(image[None]))
        panoptic = outputs["panoptic_pred"].numpy()[0]
        annotation = writer.add(stem, panoptic, file_name=f"{stem}.png")
        png = tf.io.encode_png(overlay(image, panoptic, descriptor,
                                       colormap)).numpy()
        files.write_atomically(f"{output_dir}/overlay/{stem}.png", png,
                               binary=True)
        log(f"{prefix}: {image.shape[1]}x{image.shape[0]}, "
            f"{len(annotation['segments_info'])} segments "
            f"({time.time() - start:.1f}s)")
    writer.close()
    written = len(paths) - len(skipped)
    log(f"wrote {written} of {len(paths)} image(s) to {output_dir}")
    if skipped:
        log(f"skipped {len(skipped)} unreadable file(s): "
            + ", ".join(skipped))
        return 1
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m max_deeplab_tf.predict",
        description="Panoptic predictions of an exported MaX-DeepLab.")
    parser.add_argument("--saved_model", required=True,
                        help="Directory written by the export mode.")
    parser.add_argument("--images", required=True, action="append",
                        help="Glob of image files (repeatable).")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--dataset", default=None,
                        help="Dataset name or descriptor JSON, when the "
                        "export has no dataset_descriptor.json.")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    def log(message):
        print(message, flush=True)

    return run(args.saved_model, args.images, args.output_dir, args.dataset,
               log)


if __name__ == "__main__":
    sys.exit(main())

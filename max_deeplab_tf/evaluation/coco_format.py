"""Panoptic maps in COCO panoptic format (PNG with RGB-encoded ids + JSON).

`CocoPanopticWriter` turns our panoptic maps (semantic * label_divisor +
instance) into what the official COCO panoptic evaluation (and
`python -m max_deeplab_tf.evaluation.panoptic_quality`) reads:

  * OUTPUT_DIR/PNG_SUBDIR/NAME.png: RGB, segment id = R + 256 G + 256^2 B,
    0 on void.
  * OUTPUT_DIR/JSON_NAME: {"annotations": [{"image_id", "file_name",
    "segments_info": [{"id", "category_id", "area", "bbox", "iscrowd"}]}],
    "categories": [...], "images": [...]}.

Segment id = panoptic id + 1, so that id 0 stays void even for datasets whose
class 0 is not void. Category ids are the descriptor's `category_ids` (the
source dataset's, e.g. COCO's 1..200) when it has them, else semantic ids.
Ground truth written with `ground_truth=True` marks thing segments with
instance 0 as crowd (iscrowd 1), the encoding of max_deeplab_tf.common.
"""

import io
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from max_deeplab_tf.evaluation import panoptic_quality
from max_deeplab_tf.evaluation import streaming


def image_id_of(stem: str):
    """The COCO image_id of a file stem: an integer when the stem is all
    digits ('000000000139' -> 139, as COCO names its files), else the stem.

    Predictions and ground truth written through this function match on the
    same key, and match the official COCO JSONs for COCO's files.
    """
    return int(stem) if stem.isascii() and stem.isdigit() else stem


def categories_json(descriptor) -> List[Dict]:
    """The COCO "categories" list of a descriptor (void excluded)."""
    names = list(descriptor.class_names)
    things = set(descriptor.thing_class_ids)
    out = []
    for semantic, category in streaming.category_of_class(descriptor).items():
        name = (names[semantic] if len(names) == descriptor.num_classes
                else f"class_{semantic}")
        out.append({"id": category, "name": name,
                    "isthing": int(semantic in things),
                    "supercategory": "thing" if semantic in things
                    else "stuff"})
    return out


def panoptic_to_coco(panoptic: np.ndarray, descriptor,
                     ground_truth: bool = False
                     ) -> Tuple[np.ndarray, List[Dict]]:
    """One panoptic map -> (RGB id image, segments_info).

    Args:
      panoptic: int [height, width], semantic * label_divisor + instance.
      descriptor: DatasetDescriptor.
      ground_truth: mark thing segments with instance 0 as crowd.

    Returns:
      uint8 [height, width, 3] and the list of segments (id, category_id,
      area, bbox [x, y, w, h], iscrowd), in id order.
    """
    panoptic = np.asarray(panoptic, np.int64)
    if panoptic.ndim != 2:
        raise ValueError(f"panoptic map must be [height, width], got shape "
                         f"{panoptic.shape}")
    divisor = descriptor.label_divisor
    semantic = panoptic // divisor
    void = ((semantic == descriptor.ignore_label) | (panoptic < 0)
            | (semantic >= descriptor.num_classes))
    ids = np.where(void, 0, panoptic + 1)
    categories = streaming.category_of_class(descriptor)
    things = set(descriptor.thing_class_ids)
    segments = []
    values, inverse, counts = np.unique(ids, return_inverse=True,
                                        return_counts=True)
    inverse = inverse.reshape(ids.shape)
    for index, (value, area) in enumerate(zip(values.tolist(),
                                              counts.tolist())):
        if value == 0:
            continue
        rows, cols = np.nonzero(inverse == index)
        sem, inst = divmod(value - 1, divisor)
        segments.append({
            "id": int(value), "category_id": int(categories[sem]),
            "area": int(area),
            "bbox": [int(cols.min()), int(rows.min()),
                     int(cols.max() - cols.min() + 1),
                     int(rows.max() - rows.min() + 1)],
            "iscrowd": int(ground_truth and sem in things and inst == 0)})
    return panoptic_quality.id_to_rgb(ids), segments


def encode_png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8), "RGB").save(buffer, "PNG")
    return buffer.getvalue()


class CocoPanopticWriter:
    """Writes panoptic maps in COCO format, one PNG per image, JSON at close.

    Args:
      output_dir: Folder (any tf.io.gfile path).
      descriptor: DatasetDescriptor.
      json_name: Name of the JSON file inside output_dir.
      png_subdir: Folder of the PNGs inside output_dir.
      ground_truth: Write crowd flags (see `panoptic_to_coco`).
    """

    def __init__(self, output_dir: str, descriptor,
                 json_name: str = "panoptic.json",
                 png_subdir: str = "panoptic", ground_truth: bool = False):
        self._dir = output_dir.rstrip("/")
        self._descriptor = descriptor
        self._json_name = json_name
        self._png_subdir = png_subdir
        self._ground_truth = ground_truth
        self._annotations: List[Dict] = []
        self._images: List[Dict] = []
        self._image_ids = set()

    @property
    def png_dir(self) -> str:
        return f"{self._dir}/{self._png_subdir}"

    @property
    def json_path(self) -> str:
        return f"{self._dir}/{self._json_name}"

    def add(self, image_id, panoptic: np.ndarray,
            file_name: Optional[str] = None) -> Dict:
        """Writes one image's PNG and records its annotation.

        Args:
          image_id: int or str, unique.
          panoptic: int [height, width].
          file_name: PNG name; default "<image_id>.png".

        Returns:
          The annotation (image_id, file_name, segments_info).
        """
        from max_deeplab_tf.training import files

        if image_id in self._image_ids:
            raise ValueError(f"image_id {image_id!r} was already written")
        self._image_ids.add(image_id)
        file_name = file_name or f"{image_id}.png"
        rgb, segments = panoptic_to_coco(panoptic, self._descriptor,
                                         self._ground_truth)
        files.write_atomically(f"{self.png_dir}/{file_name}", encode_png(rgb),
                               binary=True)
        annotation = {"image_id": image_id, "file_name": file_name,
                      "segments_info": segments}
        self._annotations.append(annotation)
        self._images.append({"id": image_id, "file_name": file_name,
                             "height": int(rgb.shape[0]),
                             "width": int(rgb.shape[1])})
        return annotation

    def add_batch(self, image_ids: Sequence, panoptic: np.ndarray) -> None:
        """Adds [batch, height, width] maps with their ids."""
        for image_id, single in zip(image_ids, np.asarray(panoptic)):
            self.add(image_id, single)

    def close(self) -> str:
        """Writes the JSON (atomically); returns its path."""
        from max_deeplab_tf.training import files

        files.write_json(self.json_path, {
            "annotations": self._annotations,
            "images": self._images,
            "categories": categories_json(self._descriptor)})
        return self.json_path


def save_predictions_fn(descriptor):
    """A writer for the evaluator (trainer EvalHooks.save_predictions).

    Returns fn(images, gt, predictions, names, directory) that adds each
    image's ground truth and prediction ([batch, height, width] panoptic
    maps; images unused) to DIRECTORY/coco/groundtruth/ and
    DIRECTORY/coco/predictions/ (PNGs + panoptic.json, the JSON rewritten
    after each call), so that

        python -m max_deeplab_tf.evaluation.panoptic_quality \
            --gt_json DIRECTORY/coco/groundtruth/panoptic.json \
            --gt_dir DIRECTORY/coco/groundtruth/panoptic \
            --pred_json DIRECTORY/coco/predictions/panoptic.json \
            --pred_dir DIRECTORY/coco/predictions/panoptic

    (or the official script) evaluates them. Images are named by the stem
    of `names` (unique per call sequence).
    """
    writers: Dict[str, Tuple[CocoPanopticWriter, CocoPanopticWriter]] = {}

    def fn(images, gt, predictions, names, directory):
        del images
        if directory not in writers:
            writers[directory] = (
                CocoPanopticWriter(f"{directory}/coco/groundtruth",
                                   descriptor, ground_truth=True),
                CocoPanopticWriter(f"{directory}/coco/predictions",
                                   descriptor))
        gt_writer, pred_writer = writers[directory]
        for name, gt_map, pred_map in zip(names, np.asarray(gt),
                                          np.asarray(predictions)):
            if isinstance(name, bytes):
                name = name.decode()
            stem = str(name).rsplit("/", 1)[-1].rsplit(".", 1)[0]
            gt_writer.add(image_id_of(stem), gt_map, f"{stem}.png")
            pred_writer.add(image_id_of(stem), pred_map, f"{stem}.png")
        gt_writer.close()
        pred_writer.close()

    return fn

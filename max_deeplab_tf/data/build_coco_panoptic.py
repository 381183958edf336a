r"""Converts a COCO-panoptic-format dataset to deeplab2-layout tfrecord shards.

Works for COCO panoptic 2017 itself, for the synthetic dataset of
max_deeplab_tf.data.synthetic, and for any dataset in the COCO panoptic format
with its own categories (e.g. Cityscapes after cityscapesscripts'
createPanopticImgs):

  python -m max_deeplab_tf.data.build_coco_panoptic \
      --coco_root=/data/coco --split=val --output_dir=/data/coco/tfrecord \
      --num_shards=8

Inputs. By default, for split S the first layout found under coco_root:
  annotations/panoptic_S2017.json, annotations/panoptic_S2017/, S2017/  (COCO)
  annotations/panoptic_S.json,     annotations/panoptic_S/,     S/
  panoptic_S.json,                 panoptic_S/,                 S/
--annotation_json, --panoptic_dir and --image_dir override any of the three
(e.g. Cityscapes: gtFine/cityscapes_panoptic_val.json,
gtFine/cityscapes_panoptic_val/, leftImg8bit/val/). Images are looked up by
the JSON's file_name in image_dir, then in its immediate subfolders.

Outputs, in output_dir:
  S-00000-of-0000N.tfrecord ...  one record per image (tfrecord.py layout)
  dataset_descriptor.json       the dataset descriptor derived from the
                                JSON's categories (classes sorted by
                                category id become 1..K, void is 0); a
                                dataset config names it by path, or by
                                'coco_panoptic' / 'synthetic_panoptic' when
                                the categories are those of a built-in.
                                A custom dataset is named by
                                --dataset_name (default: the name of the
                                dataset folder, --coco_root).

Labels follow deeplab2's build_coco_data.py: panoptic = semantic *
label_divisor + instance, instances numbered from 1 per class in the
segments_info order; stuff has instance 0; void (segment id 0 or pixels no
segment covers) is ignore_label * label_divisor; crowd thing segments become
void (deeplab2's default --treat_crowd_as_ignore) or, with
--notreat_crowd_as_ignore, keep their class with instance 0.

Each shard is written in the hidden folder output_dir/.partial/ and moved
into output_dir when complete, so no shard pattern (`S-*`) ever matches a
partial file, even after a hard kill. A re-run skips complete shards and
removes the partial files of earlier runs, so an interrupted conversion
resumes. The converter never deletes or replaces a file it did not create:
a user's files in output_dir are left alone, and a different
dataset_descriptor.json or shards of another shard count stop it.
Shards are written by --num_workers processes (one shard per task).

Any problem in the inputs stops the conversion with one line naming the
file and the problem (exit code 2; the traceback with --verbose). A JSON
without images is such a problem unless --allow_empty.
"""

import dataclasses
import glob as glob_module
import io
import json
import logging as std_logging
import math
import multiprocessing
import os
import posixpath
import re
import sys
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import flags
from absl import logging
import numpy as np

from max_deeplab_tf import cli

DESCRIPTOR_FILENAME = "dataset_descriptor.json"
# Partial files live in this hidden subfolder of output_dir: a glob such as
# 'out/train-*' never descends into it.
PARTIAL_DIRNAME = ".partial"
_TEMP_MARKER = ".tmp-"
DEFAULT_IMAGES_PER_SHARD = 128


class ConversionError(cli.UserError):
    """A problem in the input dataset or the output folder; the message
    names the file. Reported by the command as one line, exit code 2."""


class _LocalFiles:
    """The part of tf.io.gfile the converter uses, for local paths: a
    conversion that fails on its inputs does so before TensorFlow is
    imported, in about a second."""

    exists = staticmethod(os.path.exists)
    isdir = staticmethod(os.path.isdir)
    listdir = staticmethod(os.listdir)
    remove = staticmethod(os.remove)
    GFile = staticmethod(open)  # pylint: disable=invalid-name

    @staticmethod
    def glob(pattern: str) -> List[str]:
        return sorted(glob_module.glob(pattern))

    @staticmethod
    def makedirs(path: str) -> None:
        os.makedirs(path, exist_ok=True)

    @staticmethod
    def rename(source: str, target: str, overwrite: bool = False) -> None:
        if not overwrite and os.path.exists(target):
            raise FileExistsError(target)
        os.replace(source, target)


def _gfile(path: str = ""):
    """tf.io.gfile for remote paths (gs://, ram://), _LocalFiles else."""
    if "://" not in path:
        return _LocalFiles
    # Imported late: workers start faster.
    return cli.import_tensorflow().io.gfile


def _exists(path: str) -> bool:
    return _gfile(path).exists(path)


def _isdir(path: str) -> bool:
    return _gfile(path).isdir(path)


def _file_errors() -> tuple:
    """What reading or writing a file raises (TF's only once imported)."""
    tf = sys.modules.get("tensorflow")
    return (OSError,) + ((tf.errors.OpError,) if tf is not None else ())


def _error_text(error: BaseException) -> str:
    return cli.one_line(getattr(error, "message", None) or str(error))


def _join(*parts: str) -> str:
    # gs:// and ram:// paths use '/', as does POSIX.
    return posixpath.join(*parts) if "://" in parts[0] else os.path.join(
        *parts)


def shard_path(output_dir: str, split: str, index: int,
               num_shards: int) -> str:
    """Path of shard `index` of `num_shards` (deeplab2's naming)."""
    return _join(output_dir,
                 f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord")


def descriptor_path(output_dir: str) -> str:
    """Where the converter stores the dataset descriptor."""
    return _join(output_dir, DESCRIPTOR_FILENAME)


def partial_dir(output_dir: str) -> str:
    """The hidden folder where shards are written before they are complete."""
    return _join(output_dir, PARTIAL_DIRNAME)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one split's files are."""

    annotation_json: str
    panoptic_dir: str
    image_dir: str


def resolve_layout(coco_root: Optional[str], split: str,
                   annotation_json: Optional[str] = None,
                   panoptic_dir: Optional[str] = None,
                   image_dir: Optional[str] = None) -> Layout:
    """Finds a split's JSON, panoptic PNG folder and image folder.

    Raises:
      ConversionError: listing the paths tried when none exists.
    """
    candidates = []
    if coco_root:
        candidates = [
            (_join(coco_root, "annotations", f"panoptic_{split}2017.json"),
             _join(coco_root, "annotations", f"panoptic_{split}2017"),
             _join(coco_root, f"{split}2017")),
            (_join(coco_root, "annotations", f"panoptic_{split}.json"),
             _join(coco_root, "annotations", f"panoptic_{split}"),
             _join(coco_root, split)),
            (_join(coco_root, f"panoptic_{split}.json"),
             _join(coco_root, f"panoptic_{split}"),
             _join(coco_root, split)),
        ]
    chosen = None
    if annotation_json:
        # The PNG folder is named after the JSON in COCO and Cityscapes.
        existing_images = [c[2] for c in candidates if _isdir(c[2])]
        chosen = (annotation_json, posixpath.splitext(annotation_json)[0],
                  existing_images[0] if existing_images else None)
    else:
        for candidate in candidates:
            if _exists(candidate[0]):
                chosen = candidate
                break
    if chosen is None:
        tried = ", ".join(c[0] for c in candidates) or "(no --coco_root)"
        raise ConversionError(
            f"no panoptic annotation JSON for split {split!r}: tried {tried}; "
            "pass --annotation_json, --panoptic_dir and --image_dir")
    layout = Layout(annotation_json=chosen[0],
                    panoptic_dir=panoptic_dir or chosen[1],
                    image_dir=image_dir or chosen[2] or "")
    if not _exists(layout.annotation_json):
        raise ConversionError(
            f"{layout.annotation_json}: annotation JSON does not exist")
    if not layout.image_dir or not _isdir(layout.image_dir):
        raise ConversionError(
            f"{layout.image_dir or '(none)'}: image folder for split "
            f"{split!r} does not exist; pass --image_dir")
    if not _isdir(layout.panoptic_dir):
        raise ConversionError(
            f"{layout.panoptic_dir}: panoptic PNG folder for split {split!r} "
            "does not exist; pass --panoptic_dir")
    return layout


@dataclasses.dataclass(frozen=True)
class ImageTask:
    """One image to convert."""

    image_name: str  # As in the JSON.
    png_name: str
    image_id: Any
    segments: Tuple[dict, ...]


@dataclasses.dataclass(frozen=True)
class LabelSpec:
    """How segments become panoptic labels."""

    category_to_class: Dict[int, int]
    thing_classes: frozenset
    label_divisor: int
    ignore_label: int
    treat_crowd_as_ignore: bool


def read_annotations(json_path: str) -> dict:
    """Loads and structurally checks a COCO panoptic JSON."""
    raw = _read_bytes(json_path, "annotation JSON")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConversionError(f"{json_path}: not UTF-8 text (byte {e.start}); "
                              "expected a UTF-8 COCO panoptic JSON")
    except json.JSONDecodeError as e:
        raise ConversionError(f"{json_path}: not valid JSON: {e}")
    if not isinstance(data, dict):
        raise ConversionError(f"{json_path}: expected a JSON object with "
                              "'images', 'annotations' and 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ConversionError(f"{json_path}: lacks the list {key!r}")
    return data


def _read_bytes(path: str, what: str) -> bytes:
    """A whole file; a missing or unreadable one is a ConversionError."""
    try:
        with _gfile(path).GFile(path, "rb") as f:
            return f.read()
    except _file_errors() as e:
        raise ConversionError(f"{path}: cannot read the {what}: "
                              f"{_error_text(e)}") from e


def _check_file_name(name, json_path: str, where: str) -> str:
    """A JSON file_name must be a non-empty string that is valid UTF-8
    (JSON admits lone surrogates such as \\udcff, which no file system path
    can hold)."""
    if not isinstance(name, str) or not name:
        raise ConversionError(f"{json_path}: {where} has file_name {name!r}; "
                              "expected a non-empty string")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ConversionError(
            f"{json_path}: {where} has file_name {name!r}, which is not valid "
            "UTF-8 text; expected the file's name as UTF-8") from None
    return name


def _segment_field(segment, field, json_path, png_name):
    if field not in segment:
        raise ConversionError(
            f"{json_path}: a segment of {png_name} lacks {field!r}: "
            f"{segment!r:.200}")
    return segment[field]


def build_tasks(data: dict, json_path: str,
                category_to_class: Dict[int, int],
                thing_classes: frozenset,
                label_divisor: int) -> List[ImageTask]:
    """Pairs images with annotations and checks what the JSON alone can tell.

    Returns:
      One task per image, sorted by image file name (deeplab2's order).

    Raises:
      ConversionError: naming the JSON and the image on duplicate ids, an
        image without annotation (or the reverse), a segment with an unknown
        category, or more instances of a class than label_divisor allows.
    """
    images = {}
    for index, image in enumerate(data["images"]):
        if (not isinstance(image, dict) or "id" not in image or
                "file_name" not in image):
            raise ConversionError(f"{json_path}: images[{index}] lacks 'id' or "
                                  f"'file_name': {image!r:.200}")
        if not isinstance(image["id"], (int, str)) or isinstance(
                image["id"], bool):
            raise ConversionError(f"{json_path}: images[{index}] has id "
                                  f"{image['id']!r}; expected an integer")
        _check_file_name(image["file_name"], json_path,
                         f"image id {image['id']!r}")
        if image["id"] in images:
            raise ConversionError(f"{json_path}: duplicate image id "
                                  f"{image['id']!r}")
        images[image["id"]] = image
    annotations = {}
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict):
            raise ConversionError(f"{json_path}: annotations[{index}] is not "
                                  f"a JSON object: {annotation!r:.200}")
        for field in ("image_id", "file_name", "segments_info"):
            if field not in annotation:
                raise ConversionError(
                    f"{json_path}: annotation lacks {field!r}: "
                    f"{annotation!r:.200}")
        _check_file_name(annotation["file_name"], json_path,
                         f"the annotation of image id "
                         f"{annotation['image_id']!r}")
        if not isinstance(annotation["segments_info"], list):
            raise ConversionError(
                f"{json_path}: segments_info of {annotation['file_name']} is "
                f"{annotation['segments_info']!r:.100}; expected a list")
        image_id = annotation["image_id"]
        if image_id in annotations:
            raise ConversionError(f"{json_path}: two annotations for image id "
                                  f"{image_id!r}")
        if image_id not in images:
            raise ConversionError(
                f"{json_path}: annotation {annotation['file_name']} refers to "
                f"image id {image_id!r}, which is not in 'images'")
        annotations[image_id] = annotation
    tasks = []
    for image_id, image in images.items():
        if image_id not in annotations:
            raise ConversionError(
                f"{json_path}: image {image['file_name']} (id {image_id!r}) "
                "has no annotation")
        annotation = annotations[image_id]
        png_name = annotation["file_name"]
        per_class = {}
        seen_ids = set()
        for segment in annotation["segments_info"]:
            if not isinstance(segment, dict):
                raise ConversionError(
                    f"{json_path}: a segment of {png_name} is not a JSON "
                    f"object: {segment!r:.200}")
            segment_id = _segment_field(segment, "id", json_path, png_name)
            category = _segment_field(segment, "category_id", json_path,
                                      png_name)
            if not isinstance(segment_id, int) or isinstance(
                    segment_id, bool) or not 0 < segment_id < 256**3:
                raise ConversionError(
                    f"{json_path}: {png_name} has segment id {segment_id!r}, "
                    "expected an integer in 1..16777215")
            if segment_id in seen_ids:
                raise ConversionError(f"{json_path}: {png_name} lists segment "
                                      f"id {segment_id} twice")
            seen_ids.add(segment_id)
            if "area" in segment and (
                    not isinstance(segment["area"], (int, float)) or
                    isinstance(segment["area"], bool)):
                raise ConversionError(
                    f"{json_path}: segment {segment_id} of {png_name} has "
                    f"area {segment['area']!r}; expected a number of pixels")
            if isinstance(category, bool) or not isinstance(
                    category, int) or category not in category_to_class:
                raise ConversionError(
                    f"{json_path}: segment {segment_id} of {png_name} has "
                    f"category_id {category!r}, which is not among the JSON's "
                    f"categories {sorted(category_to_class)}")
            semantic = category_to_class[category]
            crowd = bool(segment.get("iscrowd", 0))
            if semantic not in thing_classes and crowd:
                raise ConversionError(
                    f"{json_path}: segment {segment_id} of {png_name} is a "
                    f"stuff segment (category_id {category}) marked iscrowd; "
                    "only thing segments can be crowd")
            if semantic in thing_classes and not crowd:
                per_class[semantic] = per_class.get(semantic, 0) + 1
                if per_class[semantic] >= label_divisor:
                    raise ConversionError(
                        f"{json_path}: {png_name} has more than "
                        f"{label_divisor - 1} instances of category_id "
                        f"{category}; use a larger --label_divisor")
        tasks.append(ImageTask(
            image_name=image["file_name"], png_name=png_name,
            image_id=image_id,
            segments=tuple(annotation["segments_info"])))
    tasks.sort(key=lambda t: t.image_name)
    return tasks


def panoptic_label(png_data: bytes, segments: Sequence[dict],
                   spec: LabelSpec, png_path: str,
                   json_path: str,
                   image_size: Optional[Tuple[int, int, str]] = None
                   ) -> np.ndarray:
    """The int32 [height, width] label of one COCO panoptic PNG.

    Args:
      png_data: The PNG file (RGB, segment id = R + 256 G + 256^2 B).
      segments: The image's segments_info.
      spec: Category mapping and encoding.
      png_path: Path of the PNG, for error messages.
      json_path: Path of the JSON, for error messages.
      image_size: (height, width, image path) of the image the PNG labels;
        a PNG of another size is reported as such, before any area.

    Returns:
      int32 [height, width]: semantic * label_divisor + instance per pixel.

    Raises:
      ConversionError: naming the files, when the PNG cannot be read, is not
        RGB, is not the image's size, holds a segment id the JSON lacks (or
        the reverse), or a segment's area differs from its pixel count.
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(png_data)) as png:
            png.load()
            mode = png.mode
            rgb = np.asarray(png, dtype=np.uint32) if mode == "RGB" else None
    except Exception as e:  # PIL raises many types for corrupt files.
        raise ConversionError(f"{png_path}: cannot read the panoptic PNG: "
                              f"{type(e).__name__}: {e}")
    if rgb is None:
        raise ConversionError(f"{png_path}: panoptic PNG has mode {mode!r}, "
                              "expected RGB-encoded segment ids")
    if image_size is not None and rgb.shape[:2] != tuple(image_size[:2]):
        raise ConversionError(
            f"{png_path}: panoptic PNG is {rgb.shape[0]}x{rgb.shape[1]} "
            f"(height x width) but its image {image_size[2]} is "
            f"{image_size[0]}x{image_size[1]}; expected the same size")
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]
    unique, inverse, counts = np.unique(ids, return_inverse=True,
                                        return_counts=True)
    area = dict(zip(unique.tolist(), counts.tolist()))
    by_id = {s["id"]: s for s in segments}
    extra = sorted(set(area) - set(by_id) - {0})
    if extra:
        raise ConversionError(
            f"{png_path}: segment id(s) {extra[:10]} appear in the PNG but not "
            f"in its segments_info in {json_path}")
    missing = sorted(set(by_id) - set(area))
    if missing:
        raise ConversionError(
            f"{json_path}: segment id(s) {missing[:10]} of "
            f"{posixpath.basename(png_path)} do not appear in {png_path}")
    divisor = spec.label_divisor
    void = spec.ignore_label * divisor
    value = {0: void}
    instance_count = {}
    for segment in segments:
        segment_id = segment["id"]
        if "area" in segment and segment["area"] != area[segment_id]:
            raise ConversionError(
                f"{json_path}: segment {segment_id} of "
                f"{posixpath.basename(png_path)} has area {segment['area']} "
                f"but {area[segment_id]} pixels in {png_path}")
        semantic = spec.category_to_class[segment["category_id"]]
        if semantic not in spec.thing_classes:
            value[segment_id] = semantic * divisor
        elif segment.get("iscrowd", 0):
            value[segment_id] = (void if spec.treat_crowd_as_ignore
                                 else semantic * divisor)
        else:
            instance_count[semantic] = instance_count.get(semantic, 0) + 1
            value[segment_id] = semantic * divisor + instance_count[semantic]
    table = np.array([value[i] for i in unique.tolist()], np.int32)
    return table[inverse.reshape(ids.shape)]


def _image_bytes(image_path: str, image_id, json_path: str):
    """Reads an image; returns (bytes, format, height, width)."""
    from PIL import Image

    gfile = _gfile(image_path)
    if not gfile.exists(image_path):
        raise ConversionError(
            f"{image_path}: image (id {image_id!r}, listed in {json_path}) "
            "does not exist")
    data = _read_bytes(image_path, "image")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            width, height = image.size
            kind, mode = image.format, image.mode
            if kind not in ("JPEG", "PNG") or mode not in ("RGB", "L"):
                # TF decodes only these reliably; re-encode losslessly.
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="PNG")
                data, kind = buffer.getvalue(), "PNG"
    except Exception as e:
        raise ConversionError(f"{image_path}: cannot read the image: "
                              f"{type(e).__name__}: {e}")
    return data, kind.lower().replace("jpg", "jpeg"), height, width


class _ImageFinder:
    """Finds an image by JSON file_name in a folder or its subfolders."""

    def __init__(self, image_dir: str):
        self._image_dir = image_dir
        self._index = None

    def __call__(self, name: str) -> str:
        direct = _join(self._image_dir, name)
        gfile = _gfile(direct)
        if gfile.exists(direct):
            return direct
        if self._index is None:
            # Cityscapes keeps images in per-city subfolders.
            self._index = {}
            for path in gfile.glob(_join(self._image_dir, "*", "*")):
                self._index.setdefault(posixpath.basename(path), path)
        return self._index.get(posixpath.basename(name), direct)


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """One shard to write."""

    path: str
    images: Tuple[ImageTask, ...]
    layout: Layout
    spec: LabelSpec


def _temp_path(path: str) -> str:
    """A unique partial-file name for `path`, inside the hidden folder of
    its directory: no glob of the final names can match it."""
    folder, name = posixpath.split(path) if "://" in path else os.path.split(
        path)
    return _join(partial_dir(folder),
                 f"{name}{_TEMP_MARKER}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def write_shard(task: ShardTask) -> Tuple[str, int]:
    """Writes one shard as a partial file, then moves it into place.

    Returns:
      (shard path, number of records).

    Raises:
      ConversionError: on any input problem, or when a file of the shard's
        name appeared meanwhile (it is not replaced); the partial file is
        removed.
    """
    tf = cli.import_tensorflow()  # Each worker process imports it here.

    gfile = _gfile(task.path)
    finder = _ImageFinder(task.layout.image_dir)
    temp = _temp_path(task.path)
    try:
        with tf.io.TFRecordWriter(temp) as writer:
            for image in task.images:
                writer.write(_record(image, finder, task))
        try:
            gfile.rename(temp, task.path, overwrite=False)
        except (tf.errors.AlreadyExistsError, FileExistsError):
            raise ConversionError(
                f"{task.path}: appeared while this shard was written (another "
                "conversion into the same folder?); it was left unchanged")
    except BaseException:
        if gfile.exists(temp):
            gfile.remove(temp)
        raise
    return task.path, len(task.images)


def _record(image: ImageTask, finder: "_ImageFinder",
            task: ShardTask) -> bytes:
    """The serialized tf.train.Example of one image and its label."""
    from max_deeplab_tf.data import tfrecord

    layout = task.layout
    image_path = finder(image.image_name)
    data, kind, height, width = _image_bytes(image_path, image.image_id,
                                             layout.annotation_json)
    png_path = _join(layout.panoptic_dir, image.png_name)
    if not _gfile(png_path).exists(png_path):
        raise ConversionError(
            f"{png_path}: panoptic PNG (listed in {layout.annotation_json}) "
            "does not exist")
    label = panoptic_label(_read_bytes(png_path, "panoptic PNG"),
                           image.segments, task.spec, png_path,
                           layout.annotation_json,
                           image_size=(height, width, image_path))
    name = posixpath.splitext(posixpath.basename(image.image_name))[0]
    example = tfrecord.make_example(data, kind, name, height, width,
                                    tfrecord.encode_panoptic_label(label))
    return example.SerializeToString(deterministic=True)


def _remove_partial_files(output_dir: str, split: str) -> List[str]:
    """Removes the partial shard files of earlier runs of `split`: those in
    the hidden folder, and those that versions before it left beside the
    shards (`S-00001-of-00004.tfrecord.tmp-<pid>-<hex>`). Only names of
    that exact form are touched."""
    gfile = _gfile(output_dir)
    ours = re.compile(re.escape(split) + r"-\d{5}-of-\d{5}\.tfrecord" +
                      re.escape(_TEMP_MARKER) + r"\d+-[0-9a-f]{8}$")
    candidates = []
    for folder in (partial_dir(output_dir), output_dir):
        if gfile.isdir(folder):
            candidates += gfile.glob(
                _join(folder, f"{split}-*.tfrecord{_TEMP_MARKER}*"))
    stale = [p for p in candidates if ours.match(posixpath.basename(p))]
    for path in stale:
        gfile.remove(path)
    return stale


def _remove_partial_dir_if_empty(output_dir: str) -> None:
    """Removes the (local) partial folder when nothing is left in it; object
    stores (gs://) have no empty folders to remove."""
    folder = partial_dir(output_dir)
    if "://" in folder:
        return
    try:
        os.rmdir(folder)  # Fails, harmlessly, unless the folder is empty.
    except OSError:
        pass


def _write_descriptor(output_dir: str, descriptor) -> str:
    """Stores the descriptor; an existing one is kept when equal, and a
    different one (or a foreign file of that name) stops the conversion."""
    from max_deeplab_tf.data import dataset_info

    gfile = _gfile(output_dir)
    path = descriptor_path(output_dir)
    if gfile.exists(path):
        try:
            existing = dataset_info.DatasetDescriptor.from_json(
                _read_bytes(path, "dataset descriptor").decode(
                    "utf-8", "replace"), source=path)
        except (ValueError, TypeError) as e:
            raise ConversionError(
                f"{path}: exists and is not a dataset descriptor of this "
                f"converter ({cli.one_line(e)}); it was left unchanged; "
                "choose another --output_dir")
        if not dataset_info.same_classes(existing, descriptor):
            raise ConversionError(
                f"{path}: an existing descriptor describes other classes than "
                "this split's categories; convert datasets with different "
                "categories into different output folders")
        if existing != descriptor:
            differ = [f.name for f in dataclasses.fields(existing)
                      if getattr(existing, f.name) != getattr(descriptor,
                                                              f.name)]
            hint = (f"; pass --dataset_name={existing.name}"
                    if differ == ["name"] else "")
            raise ConversionError(
                f"{path}: an existing descriptor differs from this split's in "
                f"{differ} (name {existing.name!r}, this run's "
                f"{descriptor.name!r}); it was left unchanged{hint}")
        return path
    temp = _temp_path(path)
    gfile.makedirs(partial_dir(output_dir))
    with gfile.GFile(temp, "w") as f:
        f.write(descriptor.to_json())
    try:
        gfile.rename(temp, path, overwrite=False)
    except Exception:
        gfile.remove(temp)
        raise
    return path


def default_dataset_name(coco_root: Optional[str], json_path: str) -> str:
    """The name of a custom dataset when --dataset_name is not given: the
    dataset folder's (coco_root), else the folder holding the JSON (its
    parent when that is COCO's 'annotations')."""
    folder = coco_root
    if not folder:
        folder = posixpath.dirname(json_path.rstrip("/"))
        if posixpath.basename(folder.rstrip("/")) == "annotations":
            folder = posixpath.dirname(folder.rstrip("/"))
    name = posixpath.basename(folder.rstrip("/")) if folder else ""
    return name or "custom_panoptic"


def derive_descriptor(categories, json_path: str,
                      label_divisor: Optional[int] = None,
                      dataset_name: Optional[str] = None,
                      default_name: Optional[str] = None):
    """The descriptor of a JSON's categories (a built-in one if it matches).

    Args:
      categories: The JSON's `categories` list.
      json_path: The JSON, for messages.
      label_divisor: Asked-for label divisor; default the built-in's or 256.
      dataset_name: Name asked for (--dataset_name).
      default_name: Name of a custom dataset when dataset_name is None;
        default `default_dataset_name(None, json_path)`.

    Returns:
      DatasetDescriptor. When the categories (ids, thing flags) are those of
      a built-in descriptor and no other label divisor or name is asked for,
      the built-in one is returned, so configs may name it.

    Raises:
      ConversionError: naming the JSON and the category at fault.
    """
    from max_deeplab_tf.data import dataset_info

    try:
        derived = dataset_info.descriptor_from_coco_categories(
            categories, name=dataset_name or "custom_panoptic",
            label_divisor=label_divisor or 256,
            source=f"{json_path}: categories")
    except ValueError as e:
        raise ConversionError(cli.one_line(e)) from e
    for name in dataset_info.registered_names():
        builtin = dataset_info.get_dataset_descriptor(name)
        matches = (builtin.category_ids == derived.category_ids and
                   builtin.thing_class_ids == derived.thing_class_ids and
                   (label_divisor is None or
                    label_divisor == builtin.label_divisor))
        if matches and dataset_name in (None, builtin.name):
            return builtin
    if dataset_name is None:
        derived = dataclasses.replace(
            derived, name=default_name or default_dataset_name(None,
                                                               json_path))
    return derived


@dataclasses.dataclass
class ConversionResult:
    """What `convert` did."""

    shard_paths: List[str]
    descriptor_path: str
    num_images: int
    skipped_shards: int


def convert(coco_root: Optional[str], split: str, output_dir: str,
            num_shards: Optional[int] = None,
            num_workers: Optional[int] = None,
            annotation_json: Optional[str] = None,
            panoptic_dir: Optional[str] = None,
            image_dir: Optional[str] = None,
            label_divisor: Optional[int] = None,
            treat_crowd_as_ignore: bool = True,
            dataset_name: Optional[str] = None,
            allow_empty: bool = False,
            progress: bool = True) -> ConversionResult:
    """Converts one split to tfrecord shards (see the module docstring).

    Args:
      coco_root: Dataset root (may be None when the three paths are given).
      split: Split name, e.g. 'train' or 'val'; prefixes the shard names.
      output_dir: Folder for the shards and dataset_descriptor.json.
      num_shards: Number of shards; default ceil(images / 128).
      num_workers: Processes; default min(cpu count, shards to write). One
        worker (or a ram:// path, which other processes cannot see) converts
        in this process.
      annotation_json: Overrides the panoptic JSON path.
      panoptic_dir: Overrides the panoptic PNG folder.
      image_dir: Overrides the image folder.
      label_divisor: Panoptic label divisor; default the matching built-in's
        or 256.
      treat_crowd_as_ignore: Crowd thing pixels become void (deeplab2's
        default); otherwise they keep their class with instance 0.
      dataset_name: Name written into a custom dataset's descriptor; default
        the dataset folder's name (`default_dataset_name`).
      allow_empty: Write empty shards for a JSON without images instead of
        stopping.
      progress: Show progress (cli.Progress) on stderr.

    Returns:
      ConversionResult.

    Raises:
      ConversionError: naming the file and the problem.
    """
    layout = resolve_layout(coco_root, split, annotation_json, panoptic_dir,
                            image_dir)
    data = read_annotations(layout.annotation_json)
    descriptor = derive_descriptor(
        data["categories"], layout.annotation_json, label_divisor,
        dataset_name, default_dataset_name(coco_root, layout.annotation_json))
    from max_deeplab_tf.data import dataset_info

    spec = LabelSpec(
        category_to_class=dataset_info.category_to_class(descriptor),
        thing_classes=frozenset(descriptor.thing_class_ids),
        label_divisor=descriptor.label_divisor,
        ignore_label=descriptor.ignore_label,
        treat_crowd_as_ignore=treat_crowd_as_ignore)
    tasks = build_tasks(data, layout.annotation_json, spec.category_to_class,
                        spec.thing_classes, spec.label_divisor)
    num_images = len(tasks)
    if not num_images and not allow_empty:
        raise ConversionError(
            f"{layout.annotation_json}: has no images (split {split!r}); "
            "expected at least one. Pass --allow_empty to write empty shards "
            "anyway")
    if num_shards is None:
        num_shards = max(1, math.ceil(num_images / DEFAULT_IMAGES_PER_SHARD))
    if num_shards < 1:
        raise ConversionError(f"--num_shards: {num_shards}; expected a "
                              "positive number of shards")
    _prepare_output_dir(output_dir, split, num_shards)
    path = _write_descriptor(output_dir, descriptor)
    stale = _remove_partial_files(output_dir, split)
    if stale:
        logging.info("Removed %d unfinished shard file(s) of an earlier run",
                     len(stale))
    shards = _shard_tasks(tasks, output_dir, split, num_shards, layout, spec)
    pending = [s for s in shards if not _gfile(s.path).exists(s.path)]
    skipped = num_shards - len(pending)
    if skipped:
        logging.info("%s: %d of %d shards already complete, skipping them",
                     split, skipped, num_shards)
    try:
        _write_shards(pending, num_workers, output_dir, layout, split,
                      progress)
    except BaseException:
        # A failed or interrupted worker pool may leave partial files.
        _remove_partial_files(output_dir, split)
        raise
    finally:
        _remove_partial_dir_if_empty(output_dir)
    return ConversionResult(shard_paths=[s.path for s in shards],
                            descriptor_path=path, num_images=num_images,
                            skipped_shards=skipped)


def _prepare_output_dir(output_dir: str, split: str, num_shards: int) -> None:
    """Makes output_dir and its partial folder; refuses a folder holding
    shards of this split with another shard count (a glob like 'train-*'
    would read both sets)."""
    gfile = _gfile(output_dir)
    try:
        gfile.makedirs(partial_dir(output_dir))
    except _file_errors() as e:
        raise ConversionError(f"--output_dir {output_dir}: cannot create the "
                              f"folder: {_error_text(e)}") from e
    suffix = f"-of-{num_shards:05d}.tfrecord"
    others = [p for p in gfile.glob(_join(output_dir, f"{split}-*.tfrecord"))
              if not p.endswith(suffix)]
    if others:
        raise ConversionError(
            f"{output_dir} already holds {split} shards of another "
            f"conversion (e.g. {posixpath.basename(sorted(others)[0])}); "
            f"remove them or convert with the same number of shards")


def _shard_tasks(tasks: Sequence[ImageTask], output_dir: str, split: str,
                 num_shards: int, layout: Layout,
                 spec: LabelSpec) -> List[ShardTask]:
    """Splits the images into num_shards consecutive runs."""
    per_shard = math.ceil(len(tasks) / num_shards) if tasks else 0
    return [ShardTask(
        path=shard_path(output_dir, split, i, num_shards),
        images=tuple(tasks[i * per_shard:(i + 1) * per_shard]),
        layout=layout, spec=spec) for i in range(num_shards)]


def _write_shards(pending: Sequence[ShardTask], num_workers: Optional[int],
                  output_dir: str, layout: Layout, split: str,
                  progress: bool) -> None:
    """Writes the shards, in this process or a pool of workers."""
    if num_workers is None:
        num_workers = os.cpu_count() or 1
    num_workers = max(1, min(num_workers, len(pending)))
    if "ram://" in output_dir or "ram://" in layout.annotation_json:
        num_workers = 1  # Other processes do not share this file system.
    total = sum(len(s.images) for s in pending)
    with cli.Progress(total=total, desc=f"{split} shards", unit="image",
                      every=DEFAULT_IMAGES_PER_SHARD,
                      enabled=progress) as bar:
        if num_workers == 1:
            for shard in pending:
                bar.update(write_shard(shard)[1])
        else:
            context = multiprocessing.get_context("spawn")
            with context.Pool(num_workers, initializer=_quiet_worker) as pool:
                for _, count in pool.imap_unordered(write_shard, pending):
                    bar.update(count)


def _quiet_worker():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    std_logging.getLogger("tensorflow").setLevel(std_logging.ERROR)


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("coco_root", None, "Dataset root folder.")
    flags.DEFINE_list("split", ["val"], "Split(s) to convert, e.g. train,val.")
    flags.DEFINE_string("output_dir", None, "Folder for the tfrecord shards.")
    flags.DEFINE_integer("num_shards", None,
                         "Shards per split (default: one per 128 images).")
    flags.DEFINE_integer("num_workers", None,
                         "Worker processes (default: the number of cores).")
    flags.DEFINE_string("annotation_json", None,
                        "Panoptic JSON (overrides the layout under coco_root).")
    flags.DEFINE_string("panoptic_dir", None,
                        "Folder of panoptic PNGs (overrides the layout).")
    flags.DEFINE_string("image_dir", None,
                        "Folder of images (overrides the layout).")
    flags.DEFINE_integer("label_divisor", None,
                         "Panoptic label divisor (default 256).")
    flags.DEFINE_boolean("treat_crowd_as_ignore", True,
                         "Crowd pixels become void, as in deeplab2.")
    flags.DEFINE_string(
        "dataset_name", None,
        "Name written into a custom dataset's descriptor (default: the "
        "dataset folder's name, i.e. the last part of --coco_root).")
    flags.DEFINE_boolean("allow_empty", False,
                         "Write empty shards for a JSON without images "
                         "instead of stopping with an error.")


def main(argv):
    cli.reject_arguments(argv)
    if not FLAGS.output_dir:
        raise cli.UserError("--output_dir is required: the folder for the "
                            "tfrecord shards")
    if not FLAGS.coco_root and not FLAGS.annotation_json:
        raise cli.UserError("--coco_root (or --annotation_json, "
                            "--panoptic_dir and --image_dir) is required")
    if len(FLAGS.split) > 1 and FLAGS.annotation_json:
        raise cli.UserError("--annotation_json applies to one --split only; "
                            f"got --split={','.join(FLAGS.split)}")
    if FLAGS.num_workers is not None and FLAGS.num_workers < 1:
        raise cli.UserError(f"--num_workers: {FLAGS.num_workers}; expected a "
                            "positive number")
    logging.set_verbosity(logging.INFO)
    for split in FLAGS.split:
        result = convert(
            FLAGS.coco_root, split, FLAGS.output_dir,
            num_shards=FLAGS.num_shards, num_workers=FLAGS.num_workers,
            annotation_json=FLAGS.annotation_json,
            panoptic_dir=FLAGS.panoptic_dir, image_dir=FLAGS.image_dir,
            label_divisor=FLAGS.label_divisor,
            treat_crowd_as_ignore=FLAGS.treat_crowd_as_ignore,
            dataset_name=FLAGS.dataset_name, allow_empty=FLAGS.allow_empty)
        print(f"{split}: {result.num_images} images in "
              f"{len(result.shard_paths)} shards under {FLAGS.output_dir} "
              f"({result.skipped_shards} already complete); descriptor "
              f"{result.descriptor_path}")


if __name__ == "__main__":
    _define_flags()
    cli.run_absl_main(main)

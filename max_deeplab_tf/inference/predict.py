r"""Panoptic predictions of an exported model on image files.

    python -m max_deeplab_tf.predict --saved_model EXPORT --images "GLOB" \
        --output_dir OUT [--dataset NAME_OR_JSON] [--gt_json COCO_JSON]

EXPORT is an export root (its newest version is used) or one version folder.
For each image (any size; grayscale and RGBA are turned into RGB, alpha
dropped, EXIF orientation applied) it writes
  OUT/overlay/NAME.png   the image with segment colours, boundaries and a
                         legend of the class names present (to its right);
  OUT/panoptic/NAME.png  the COCO panoptic PNG (RGB-encoded segment ids);
and at the end OUT/panoptic.json, the COCO panoptic JSON of all images (see
max_deeplab_tf.evaluation.coco_format), which
`python -m max_deeplab_tf.evaluation.panoptic_quality` reads.

Image ids: the image's id in --gt_json's "images" list (matched by file
name without extension), else the file stem, as an integer when it is all
digits (COCO's '000000000139.jpg' -> 139), as a string otherwise.

Output folder: OUT must be new, empty, or an earlier predict output (only
panoptic.json, panoptic/*.png and overlay/*.png); anything else there is
refused before any work, so a user's file is never overwritten. In an
earlier output, the files of the images predicted again are replaced.

Unreadable files are skipped with one line each naming them, the others
written; the exit status is then 2, as for any bad flag or input (0 when
every image was written).
"""

import argparse
import os

# TensorFlow's C++ logging reads this once, when TensorFlow is first
# imported (by `run`, not by this module): INFO and WARNING lines are noise
# for a command.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import re  # noqa: E402
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np  # noqa: E402

from max_deeplab_tf import cli  # noqa: E402

JSON_NAME = "panoptic.json"
PNG_SUBDIR = "panoptic"
OVERLAY_SUBDIR = "overlay"
# write_atomically's temporary names: PATH.tmp-<32 hex digits>.
_TEMPORARY = re.compile(r"\.tmp-[0-9a-f]{32}$")

ImageId = Union[int, str]


def unique_stems(paths: Sequence[str]) -> List[str]:
    """File names without extension, '_1', '_2', ... added to repeats."""
    stems, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        stems.append(stem if count == 0 else f"{stem}_{count}")
    return stems


def image_ids(paths: Sequence[str], stems: Sequence[str],
              gt_json: Optional[str] = None) -> List[ImageId]:
    """The image_id of each file (see the module docstring).

    Raises:
      cli.UserError: --gt_json is unreadable or lacks one of the images, or
        two files get the same id.
    """
    if gt_json:
        by_stem = _ids_by_stem(gt_json)
        missing = [p for p in paths
                   if os.path.splitext(os.path.basename(p))[0] not in by_stem]
        if missing:
            raise cli.UserError(
                f"--gt_json {gt_json}: its 'images' list has no file named "
                f"like {missing[0]} ({len(missing)} image(s) missing)")
        ids = [by_stem[os.path.splitext(os.path.basename(p))[0]]
               for p in paths]
    else:
        from max_deeplab_tf.evaluation import coco_format
        ids = [coco_format.image_id_of(stem) for stem in stems]
    first: Dict[ImageId, str] = {}
    for path, image_id in zip(paths, ids):
        if image_id in first:
            raise cli.UserError(
                f"--images: {first[image_id]} and {path} both get image_id "
                f"{image_id!r}; predict them into separate output folders")
        first[image_id] = path
    return ids


def _ids_by_stem(gt_json: str) -> Dict[str, ImageId]:
    from max_deeplab_tf.evaluation import panoptic_quality

    try:
        data = panoptic_quality.read_json(gt_json, "COCO")
    except ValueError as e:
        raise cli.UserError(f"--gt_json {e}") from None
    images = data.get("images") if isinstance(data, dict) else None
    if not isinstance(images, list) or not all(
            isinstance(i, dict) and "id" in i and "file_name" in i
            for i in images):
        raise cli.UserError(
            f"--gt_json {gt_json}: expected an 'images' list of "
            "{'id', 'file_name'} entries")
    return {os.path.splitext(os.path.basename(i["file_name"]))[0]: i["id"]
            for i in images}


def check_output_dir(output_dir: str) -> None:
    """Accepts a new or empty folder, or an earlier predict output.

    Raises:
      cli.UserError: naming the folder and a file that is not ours.
    """
    import tensorflow as tf

    if not tf.io.gfile.exists(output_dir):
        return
    if not tf.io.gfile.isdir(output_dir):
        raise cli.UserError(f"--output_dir {output_dir}: is a file; expected "
                            "a folder")
    foreign = []
    for name in (n.rstrip("/") for n in tf.io.gfile.listdir(output_dir)):
        path = f"{output_dir}/{name}"
        if name in (PNG_SUBDIR, OVERLAY_SUBDIR) and tf.io.gfile.isdir(path):
            foreign.extend(
                f"{name}/{child}" for child in
                (c.rstrip("/") for c in tf.io.gfile.listdir(path))
                if not _TEMPORARY.sub("", child).endswith(".png")
                or tf.io.gfile.isdir(f"{path}/{child}"))
        elif _TEMPORARY.sub("", name) != JSON_NAME or tf.io.gfile.isdir(path):
            foreign.append(name)
    if foreign:
        shown = ", ".join(sorted(foreign)[:5])
        raise cli.UserError(
            f"--output_dir {output_dir}: holds {shown}, which predict did not "
            f"write; choose a new or empty folder (a predict output holds "
            f"only {JSON_NAME}, {PNG_SUBDIR}/*.png and {OVERLAY_SUBDIR}/"
            "*.png); nothing was written")


def find_images(patterns: Sequence[str]) -> List[str]:
    """Sorted files matching the globs (folders left out).

    Raises:
      cli.UserError: when nothing matches.
    """
    import tensorflow as tf

    paths = set()
    for pattern in patterns:
        try:
            paths.update(tf.io.gfile.glob(pattern))
        except tf.errors.OpError as e:
            raise cli.UserError(f"--images {pattern!r}: {e.message}"
                                ) from None
    paths = sorted(p for p in paths if not tf.io.gfile.isdir(p))
    if not paths:
        raise cli.UserError(f"--images: {list(patterns)} matches no file")
    return paths


def run(saved_model: str, patterns: Sequence[str], output_dir: str,
        dataset: Optional[str] = None, gt_json: Optional[str] = None,
        batch_size: int = 8, log=print, progress: bool = True) -> int:
    """The command (after flag parsing); returns the exit status.

    Raises:
      cli.UserError: a bad flag or input, before anything is written.
    """
    from max_deeplab_tf.evaluation import coco_format
    from max_deeplab_tf.inference import predictor as predictor_lib
    from max_deeplab_tf.training import files

    output_dir = output_dir.rstrip("/") or "/"
    paths = find_images(patterns)
    stems = unique_stems(paths)
    ids = image_ids(paths, stems, gt_json)
    check_output_dir(output_dir)
    predictor = predictor_lib.Predictor.from_saved_model(
        saved_model, dataset=dataset, batch_size=batch_size)
    log(f"predicting {len(paths)} image(s) with {predictor.source}")

    writer = coco_format.CocoPanopticWriter(output_dir, predictor.descriptor,
                                            json_name=JSON_NAME,
                                            png_subdir=PNG_SUBDIR)
    skipped = []
    items = list(zip(paths, stems, ids))
    with cli.Progress(total=len(items), desc="predict",
                      enabled=progress) as bar:
        bar.update(0)  # the clock starts now, not after the first chunk
        for start in range(0, len(items), batch_size):
            chunk, images = _read_chunk(items[start:start + batch_size],
                                        skipped, log)
            results = predictor(images) if images else []
            for (_, stem, image_id), result in zip(chunk, results):
                writer.add(image_id, result.panoptic, file_name=f"{stem}.png")
                files.write_atomically(
                    f"{output_dir}/{OVERLAY_SUBDIR}/{stem}.png",
                    coco_format.encode_png(np.asarray(result.overlay())),
                    binary=True)
            bar.update(len(items[start:start + batch_size]))
    writer.close()
    written = len(paths) - len(skipped)
    log(f"wrote {written} of {len(paths)} image(s) to {output_dir}")
    if skipped:
        # The rest is written; the exit status still says that some input
        # was bad, as every bad input does (cli.EXIT_USAGE).
        log(f"skipped {len(skipped)} unreadable file(s): "
            + ", ".join(skipped))
        return cli.EXIT_USAGE
    return 0


def _read_chunk(items, skipped: List[str], log
                ) -> Tuple[List[Tuple[str, str, ImageId]], List[np.ndarray]]:
    """Reads a chunk's images; unreadable ones are logged and skipped."""
    from max_deeplab_tf.inference import predictor as predictor_lib

    kept, images = [], []
    for item in items:
        try:
            images.append(predictor_lib.read_image(item[0]))
        except cli.UserError as e:
            log(f"skipped {e}")
            skipped.append(item[0])
            continue
        kept.append(item)
    return kept, images


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m max_deeplab_tf.predict",
        description="Panoptic predictions of an exported MaX-DeepLab.")
    parser.add_argument("--saved_model", required=True,
                        help="The export folder (newest version) or one "
                        "version folder in it.")
    parser.add_argument("--images", required=True, action="append",
                        help="Glob of image files (repeatable).")
    parser.add_argument("--output_dir", required=True,
                        help="New or empty folder, or an earlier predict "
                        "output.")
    parser.add_argument("--dataset", default=None,
                        help="Dataset name or descriptor JSON, when the "
                        "export has no dataset_descriptor.json.")
    parser.add_argument("--gt_json", default=None,
                        help="COCO JSON whose 'images' list gives each "
                        "file's image_id (default: the file stem, an "
                        "integer when all digits).")
    parser.add_argument("--batch_size", type=int, default=8,
                        help="Images per network call (images of one size "
                        "run together).")
    cli.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size: expected >= 1, got {args.batch_size}")
    cli.import_tensorflow_quietly()

    def log(message):
        print(message, flush=True)

    return run(args.saved_model, args.images, args.output_dir, args.dataset,
               args.gt_json, args.batch_size, log)


if __name__ == "__main__":
    cli.run_main(main)

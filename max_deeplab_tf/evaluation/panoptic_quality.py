r"""Panoptic quality (Kirillov et al., CVPR 2019) on COCO-format panoptic data.

The definition is the COCO panoptic evaluation's (panopticapi pq_compute.py):
  * A ground-truth and a predicted segment of the same category match when
    their IoU is strictly above 0.5, where the union leaves out the pixels of
    the prediction that lie on void (id 0) in the ground truth.
  * Crowd ground-truth segments (iscrowd 1) never match and are never false
    negatives.
  * An unmatched predicted segment is not a false positive when more than
    half of it lies on void plus the crowd region of its own category.
  * Per category: PQ = sum(IoU of matches) / (TP + FP/2 + FN/2),
    SQ = sum(IoU) / TP (0 without matches), RQ = TP / (TP + FP/2 + FN/2).
    Averages over All / Things / Stuff use only the categories with at least
    one TP, FP or FN.

Command:

    python -m max_deeplab_tf.evaluation.panoptic_quality \
        --gt_json panoptic_val2017.json --gt_dir panoptic_val2017/ \
        --pred_json predictions.json --pred_dir predictions/ \
        [--output_json pq.json] [--workers N]

prints a table and writes {"All": {"pq", "sq", "rq", "n"}, "Things": ...,
"Stuff": ..., "per_class": {"<category id>": {"pq", "sq", "rq"}}} (fractions
in [0, 1]; per_class lists the categories averaged in). Images are evaluated
in N worker processes. Malformed input (a PNG id missing from the JSON, a
JSON segment missing from the PNG, duplicate ids, images of different sizes,
unknown categories, missing predictions) stops it with a message naming the
file and what is wrong.
"""

import argparse
import io
import json
import multiprocessing
import os
import sys
import time
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

# Columns of a statistics row: IoU sum, TP, FP, FN.
IOU, TP, FP, FN = range(4)


class PanopticInputError(ValueError):
    """The COCO-format input is malformed."""


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG colours [..., 3] -> segment ids (R + 256 G + 256^2 B)."""
    rgb = rgb.astype(np.uint32)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256 * 256 * rgb[..., 2]


def id_to_rgb(ids: np.ndarray) -> np.ndarray:
    """Segment ids [...] -> COCO panoptic colours [..., 3] uint8."""
    ids = np.asarray(ids, np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= 256 ** 3):
        raise ValueError("segment ids must be in [0, 2^24) to fit an RGB PNG")
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536],
                    axis=-1).astype(np.uint8)


class UnlistedSegmentsError(ValueError):
    """Segment ids in a PNG that its JSON does not list, or the reverse."""

    def __init__(self, side: str, ids: Sequence[int], in_png: bool):
        self.side = side
        self.ids = sorted(int(i) for i in ids)
        self.in_png = in_png
        where = ("in the PNG but not in the JSON" if in_png
                 else "in the JSON but not in the PNG")
        super().__init__(f"{side} segment id(s) {self.ids[:10]} are {where}")


def _compact(ids: np.ndarray, listed: Iterable[int], side: str):
    """Segment ids -> index into sorted([0] + listed ids).

    A binary search over the few listed ids is much faster than np.unique
    over the pixels, and finds the ids the JSON does not list on the way.
    """
    values = np.array(sorted({0} | {int(i) for i in listed}), np.int64)
    flat = np.asarray(ids, np.int64).ravel()
    index = np.minimum(np.searchsorted(values, flat), len(values) - 1)
    unlisted = values[index] != flat
    if unlisted.any():
        raise UnlistedSegmentsError(side, np.unique(flat[unlisted]), True)
    return values, index


def image_statistics(
        gt_ids: np.ndarray, gt_segments: Mapping[int, Mapping],
        pred_ids: np.ndarray, pred_segments: Mapping[int, Mapping],
        ) -> Dict[int, np.ndarray]:
    """PQ statistics of one image.

    Args:
      gt_ids: int [height, width] ground-truth segment ids; 0 is void.
      gt_segments: id -> {"category_id", "iscrowd" (optional, 0), "area"
        (optional; the PNG pixel count when absent, as the official script
        uses the JSON area)}. Every non-zero id of gt_ids must be a key.
      pred_ids: int [height, width] predicted segment ids; 0 is void.
      pred_segments: id -> {"category_id"}; exactly the non-zero ids of
        pred_ids.

    Returns:
      category id -> float64 [4] (IoU sum, TP, FP, FN) for the categories
      this image touches.

    Raises:
      UnlistedSegmentsError: when the ids of a PNG and its segments differ
        (a ground-truth segment may be absent from its PNG).
    """
    gt_values, gt_index = _compact(gt_ids, gt_segments, "ground-truth")
    pred_values, pred_index = _compact(pred_ids, pred_segments, "predicted")
    n_pred = len(pred_values)
    # intersection[i, j]: pixels with gt id gt_values[i], pred id
    # pred_values[j].
    intersection = np.bincount(
        gt_index * n_pred + pred_index,
        minlength=len(gt_values) * n_pred).reshape(len(gt_values), n_pred)
    absent = pred_values[(intersection.sum(axis=0) == 0)
                         & (pred_values != 0)]
    if len(absent):
        raise UnlistedSegmentsError("predicted", absent, False)

    pred_area = intersection.sum(axis=0)
    gt_area_png = intersection.sum(axis=1)
    gt_void = gt_values == 0
    pred_void = pred_values == 0
    void_overlap = intersection[gt_void].sum(axis=0)  # per prediction

    gt_cat = np.array([gt_segments[v]["category_id"] if v else -1
                       for v in gt_values.tolist()], np.int64)
    gt_crowd = np.array([bool(gt_segments[v].get("iscrowd", 0)) if v else
                         False for v in gt_values.tolist()])
    gt_area = np.array([gt_segments[v].get("area", a) if v else a
                        for v, a in zip(gt_values.tolist(),
                                        gt_area_png.tolist())], np.float64)
    pred_cat = np.array([pred_segments[v]["category_id"] if v else -2
                         for v in pred_values.tolist()], np.int64)

    candidate = ((~gt_void & ~gt_crowd)[:, None] & (~pred_void)[None, :]
                 & (gt_cat[:, None] == pred_cat[None, :])
                 & (intersection > 0))
    union = (gt_area[:, None] + pred_area[None, :] - intersection
             - void_overlap[None, :])
    iou = np.where(candidate, intersection / np.maximum(union, 1), 0.0)
    matched = candidate & (iou > 0.5)

    stats: Dict[int, np.ndarray] = {}

    def row(category):
        if category not in stats:
            stats[category] = np.zeros(4, np.float64)
        return stats[category]

    for i, j in zip(*np.nonzero(matched)):
        r = row(int(gt_cat[i]))
        r[TP] += 1
        r[IOU] += iou[i, j]
    gt_matched = matched.any(axis=1)
    pred_matched = matched.any(axis=0)

    # Ground-truth segments listed in the JSON but absent from the PNG are
    # rows of zero PNG area: still false negatives, as in the official code.
    for i in np.nonzero(~gt_void & ~gt_crowd & ~gt_matched)[0]:
        row(int(gt_cat[i]))[FN] += 1

    # The official script remembers one crowd segment per category (the last
    # listed); a prediction may lie on that one.
    crowd_of_category = {}
    for seg_id, seg in gt_segments.items():
        if seg.get("iscrowd", 0):
            crowd_of_category[seg["category_id"]] = seg_id
    row_of_id = {v: i for i, v in enumerate(gt_values.tolist())}
    crowd_overlap = np.zeros(n_pred, np.float64)
    for j, category in enumerate(pred_cat.tolist()):
        crowd_row = row_of_id.get(crowd_of_category.get(category, -1))
        if crowd_row is not None:
            crowd_overlap[j] = intersection[crowd_row, j]
    for j in np.nonzero(~pred_void & ~pred_matched)[0]:
        ignored = (void_overlap[j] + crowd_overlap[j]) / pred_area[j] > 0.5
        if not ignored:
            row(int(pred_cat[j]))[FP] += 1
    return stats


def summarize(stats: Mapping[int, Sequence[float]],
              categories: Mapping[int, bool]) -> Dict:
    """PQ/SQ/RQ overall, for things, for stuff and per category.

    Args:
      stats: category id -> (IoU sum, TP, FP, FN), summed over images.
      categories: category id -> is thing.

    Returns:
      {"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class":
      {"<id>": {"pq", "sq", "rq", "tp", "fp", "fn"}}}; categories without any
      TP, FP or FN are left out of the averages and of per_class.
    """
    per_class = {}
    for category in sorted(categories):
        iou, tp, fp, fn = (float(x) for x in stats.get(category, (0, 0, 0, 0)))
        if tp + fp + fn == 0:
            continue
        denominator = tp + 0.5 * fp + 0.5 * fn
        per_class[category] = {
            "pq": iou / denominator, "sq": iou / tp if tp else 0.0,
            "rq": tp / denominator, "tp": int(tp), "fp": int(fp),
            "fn": int(fn)}
    result = {}
    for group, wanted in (("All", None), ("Things", True), ("Stuff", False)):
        chosen = [v for c, v in per_class.items()
                  if wanted is None or categories[c] == wanted]
        n = len(chosen)
        result[group] = {
            metric: (sum(v[metric] for v in chosen) / n if n else 0.0)
            for metric in ("pq", "sq", "rq")}
        result[group]["n"] = n
    result["per_class"] = {str(c): v for c, v in per_class.items()}
    return result


def format_table(result: Mapping) -> str:
    """The summary as a text table (percentages), like panopticapi prints."""
    lines = [f"{'':10s}| {'PQ':>6s} {'SQ':>6s} {'RQ':>6s} {'N':>5s}",
             "-" * 36]
    for group in ("All", "Things", "Stuff"):
        g = result[group]
        lines.append(f"{group:10s}| {100 * g['pq']:6.2f} {100 * g['sq']:6.2f}"
                     f" {100 * g['rq']:6.2f} {g['n']:5d}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# COCO-format files.


def _read_bytes(path: str) -> bytes:
    import tensorflow as tf  # gfile: local, gs://, ...

    if not tf.io.gfile.exists(path):
        raise PanopticInputError(f"{path}: file not found")
    with tf.io.gfile.GFile(path, "rb") as f:
        return f.read()


def read_json(path: str, what: str) -> Mapping:
    try:
        return json.loads(_read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PanopticInputError(f"{path}: not a JSON {what} file: {e}")


def read_id_png(path: str) -> np.ndarray:
    """A COCO panoptic PNG -> int64 [height, width] segment ids."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(_read_bytes(path))) as image:
            mode = image.mode
            pixels = np.array(image)
    except PanopticInputError:
        raise
    except Exception as e:  # PIL raises several types for corrupt files.
        raise PanopticInputError(f"{path}: not a readable PNG: {e}")
    if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
        raise PanopticInputError(
            f"{path}: expected an RGB PNG with ids encoded as R + 256 G + "
            f"256^2 B, got mode {mode} with shape {pixels.shape}")
    return rgb_to_id(pixels[..., :3]).astype(np.int64)


def _segments_by_id(annotation: Mapping, source: str,
                    categories: Mapping[int, bool]) -> Dict[int, Mapping]:
    segments = {}
    for segment in annotation.get("segments_info", []):
        for field in ("id", "category_id"):
            if field not in segment:
                raise PanopticInputError(
                    f"{source}: a segment of image {annotation.get('image_id')}"
                    f" lacks {field!r}: {segment}")
        seg_id = int(segment["id"])
        if seg_id in segments:
            raise PanopticInputError(
                f"{source}: image {annotation.get('image_id')} lists segment id"
                f" {seg_id} more than once")
        if seg_id == 0:
            raise PanopticInputError(
                f"{source}: image {annotation.get('image_id')} lists segment id"
                " 0, which is reserved for void")
        if segment["category_id"] not in categories:
            raise PanopticInputError(
                f"{source}: image {annotation.get('image_id')} segment {seg_id} "
                f"has unknown category_id {segment['category_id']} (not in "
                "the ground truth's categories)")
        segments[seg_id] = segment
    return segments


def _evaluate_pair(task) -> Dict[int, np.ndarray]:
    (gt_ann, pred_ann, gt_dir, pred_dir, gt_json, pred_json,
     categories) = task
    image_id = gt_ann["image_id"]
    gt_png = f"{gt_dir}/{gt_ann['file_name']}"
    pred_png = f"{pred_dir}/{pred_ann['file_name']}"
    gt_segments = _segments_by_id(gt_ann, gt_json, categories)
    pred_segments = _segments_by_id(pred_ann, pred_json, categories)
    gt_ids = read_id_png(gt_png)
    pred_ids = read_id_png(pred_png)
    if gt_ids.shape != pred_ids.shape:
        raise PanopticInputError(
            f"{pred_png}: image {image_id} is {pred_ids.shape[1]}x"
            f"{pred_ids.shape[0]} (WxH) but its ground truth {gt_png} is "
            f"{gt_ids.shape[1]}x{gt_ids.shape[0]}")
    try:
        return image_statistics(gt_ids, gt_segments, pred_ids, pred_segments)
    except UnlistedSegmentsError as e:
        png, json_path = ((gt_png, gt_json) if e.side == "ground-truth"
                          else (pred_png, pred_json))
        if e.in_png:
            message = (f"{png}: segment id(s) {e.ids[:10]} of image "
                       f"{image_id} are in the PNG but not in {json_path}")
        else:
            message = (f"{json_path}: segment id(s) {e.ids[:10]} of image "
                       f"{image_id} are in the JSON but not in the PNG {png}")
        raise PanopticInputError(message) from None


def _evaluate_chunk(tasks) -> Dict[int, np.ndarray]:
    total: Dict[int, np.ndarray] = {}
    for task in tasks:
        for category, row in _evaluate_pair(task).items():
            total[category] = total.get(category, 0) + row
    return total


def _categories(gt: Mapping, gt_json: str) -> Dict[int, bool]:
    if "categories" not in gt or not isinstance(gt["categories"], list):
        raise PanopticInputError(f"{gt_json}: lacks the 'categories' list")
    categories = {}
    for category in gt["categories"]:
        if "id" not in category or "isthing" not in category:
            raise PanopticInputError(
                f"{gt_json}: category {category} lacks 'id' or 'isthing'")
        if category["id"] in categories:
            raise PanopticInputError(
                f"{gt_json}: category id {category['id']} is listed twice")
        categories[category["id"]] = bool(category["isthing"])
    return categories


def _annotations(data: Mapping, path: str) -> List[Mapping]:
    annotations = data.get("annotations")
    if not isinstance(annotations, list):
        raise PanopticInputError(f"{path}: lacks the 'annotations' list")
    for a in annotations:
        for field in ("image_id", "file_name"):
            if field not in a:
                raise PanopticInputError(
                    f"{path}: an annotation lacks {field!r}: "
                    f"{json.dumps(a)[:200]}")
    return annotations


def evaluate(gt_json: str, gt_dir: str, pred_json: str, pred_dir: str,
             workers: Optional[int] = None, progress: bool = False) -> Dict:
    """Panoptic quality of COCO-format predictions.

    Args:
      gt_json, gt_dir: ground-truth JSON and PNG folder.
      pred_json, pred_dir: prediction JSON and PNG folder. Every
        ground-truth image needs a prediction; extra predictions are ignored
        (as the official script).
      workers: processes; None: os.cpu_count(). 1 evaluates in this process.
      progress: print progress to stderr.

    Returns:
      The `summarize` dictionary.

    Raises:
      PanopticInputError: on malformed input.
    """
    gt = read_json(gt_json, "ground-truth panoptic")
    pred = read_json(pred_json, "panoptic prediction")
    categories = _categories(gt, gt_json)
    predictions = {}
    for annotation in _annotations(pred, pred_json):
        if annotation["image_id"] in predictions:
            raise PanopticInputError(
                f"{pred_json}: image_id {annotation['image_id']} has more "
                "than one annotation")
        predictions[annotation["image_id"]] = annotation
    tasks = []
    missing = []
    for annotation in _annotations(gt, gt_json):
        if annotation["image_id"] not in predictions:
            missing.append(annotation["image_id"])
            continue
        tasks.append((annotation, predictions[annotation["image_id"]],
                      gt_dir.rstrip("/"), pred_dir.rstrip("/"), gt_json,
                      pred_json, categories))
    if missing:
        raise PanopticInputError(
            f"{pred_json}: no prediction for {len(missing)} ground-truth "
            f"image(s), e.g. image_id {missing[:5]}")

    workers = workers or os.cpu_count() or 1
    workers = max(1, min(workers, len(tasks)))
    # Contiguous chunks, several per worker so that slow images balance.
    num_chunks = min(len(tasks), workers * 8) if tasks else 0
    chunks = [tasks[i::num_chunks] for i in range(num_chunks)]
    totals: Dict[int, np.ndarray] = {}
    start = time.time()
    done = 0

    def add(part):
        for category, row in part.items():
            totals[category] = totals.get(category, 0) + row

    try:
        if workers == 1:
            for chunk in chunks:
                add(_evaluate_chunk(chunk))
                done += len(chunk)
                if progress:
                    _progress(done, len(tasks), start)
        else:
            # fork: the workers inherit the parsed JSON instead of
            # re-importing everything.
            method = ("fork" if "fork" in
                      multiprocessing.get_all_start_methods() else None)
            with multiprocessing.get_context(method).Pool(workers) as pool:
                for part, size in zip(pool.imap(_evaluate_chunk, chunks),
                                      [len(c) for c in chunks]):
                    add(part)
                    done += size
                    if progress:
                        _progress(done, len(tasks), start)
    except PanopticInputError:
        if progress and done and sys.stderr.isatty():
            print(file=sys.stderr)  # end the progress line
        raise
    return summarize(totals, categories)


def _progress(done, total, start):
    elapsed = time.time() - start
    if sys.stderr.isatty():
        print(f"\r{done}/{total} images, {elapsed:.1f}s",
              end="" if done < total else "\n", file=sys.stderr, flush=True)
    else:
        print(f"{done}/{total} images, {elapsed:.1f}s", file=sys.stderr,
              flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m max_deeplab_tf.evaluation.panoptic_quality",
        description="COCO panoptic quality (PQ, SQ, RQ) of predictions.")
    parser.add_argument("--gt_json", required=True)
    parser.add_argument("--gt_dir", required=True)
    parser.add_argument("--pred_json", required=True)
    parser.add_argument("--pred_dir", required=True)
    parser.add_argument("--output_json", default=None,
                        help="Where to write the result JSON.")
    parser.add_argument("--workers", type=int, default=None,
                        help="Worker processes (default: all CPUs).")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error("--workers must be >= 1")
    start = time.time()
    try:
        result = evaluate(args.gt_json, args.gt_dir, args.pred_json,
                          args.pred_dir, workers=args.workers, progress=True)
    except PanopticInputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(result))
    print(f"({time.time() - start:.1f}s)")
    if args.output_json:
        from max_deeplab_tf.training import files
        files.write_json(args.output_json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

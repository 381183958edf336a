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
        [--output_json pq.json [--overwrite]] [--workers N] [--verbose]

prints a table and writes {"All": {"pq", "sq", "rq", "n"}, "Things": ...,
"Stuff": ..., "per_class": {"<category id>": {"pq", "sq", "rq", "tp", "fp",
"fn", "name"}}} (fractions in [0, 1]; per_class lists the categories
averaged in) to --output_json, a new file unless --overwrite (written to a
temporary name in the same folder, then renamed). Images are evaluated in
N worker processes, with progress on stderr. Malformed input (a missing
file, a PNG id missing from the JSON, a JSON segment missing from the PNG,
duplicate ids, images of different sizes, unknown categories, missing
predictions) stops it with one line naming the file and what is wrong,
exit code 2 (the traceback with --verbose).

Local paths are read with plain file I/O and TensorFlow is not imported;
paths with a scheme (gs://, ...) are read through tf.io.gfile. PNGs are
decoded by libspng after zlib-ng inflates their image data (`read_rgb_png`).
The pixel counting works on runs of pixels over which neither map changes
(found on the PNG bytes), not pixel by pixel: see `_runs_of_rgb`.
"""

import argparse
import io
import json
import multiprocessing
import os
import re
import struct
import time
import uuid
import zlib
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np
from zlib_ng import zlib_ng

from max_deeplab_tf import cli

# Columns of a statistics row: IoU sum, TP, FP, FN.
IOU, TP, FP, FN = range(4)


class PanopticInputError(cli.UserError):
    """The COCO-format input is malformed (the message names the file)."""


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


def _compact(run_ids: np.ndarray, listed: Iterable[int], side: str):
    """Segment ids of runs -> index into sorted([0] + listed ids).

    Args:
      run_ids: int64 [num_runs] the segment id of each run of pixels.
      listed: the ids the JSON lists for this image.
      side: "ground-truth" or "predicted", for the error.

    Returns:
      values: int64 [num_values] sorted([0] + listed ids); index: int64
      [num_runs] each run's position in `values`.

    Raises:
      UnlistedSegmentsError: if a run's id is not listed.
    """
    values = np.array(sorted({0} | {int(i) for i in listed}), np.int64)
    index = np.minimum(np.searchsorted(values, run_ids), len(values) - 1)
    unlisted = values[index] != run_ids
    if unlisted.any():
        raise UnlistedSegmentsError(side, np.unique(run_ids[unlisted]), True)
    return values, index


def _runs_of_ids(gt_ids: np.ndarray, pred_ids: np.ndarray):
    """Splits two id maps, in raster order, into runs of pixels over which
    neither changes: the pixels of a run share one (gt, pred) id pair.

    Counting runs instead of pixels makes the pair counting cost a few
    thousand operations per image instead of a pass per pixel (segments are
    large, so runs are long).

    Args:
      gt_ids, pred_ids: int [height, width] segment ids.

    Returns:
      gt_run_ids, pred_run_ids: int64 [num_runs] the ids of each run;
      lengths: int64 [num_runs] its pixel count.
    """
    gt_flat = np.asarray(gt_ids).ravel()
    pred_flat = np.asarray(pred_ids).ravel()
    changed = gt_flat[1:] != gt_flat[:-1]
    changed |= pred_flat[1:] != pred_flat[:-1]
    starts = _starts(np.flatnonzero(changed), gt_flat.size)
    lengths = np.diff(starts, append=gt_flat.size)
    return (gt_flat[starts].astype(np.int64),
            pred_flat[starts].astype(np.int64), lengths)


def _runs_of_rgb(gt_rgb: np.ndarray, pred_rgb: np.ndarray):
    """`_runs_of_ids` straight from COCO panoptic colours.

    The change test runs over the bytes (byte k against byte k + 3, the
    same channel of the next pixel), which numpy vectorises; the ids
    R + 256 G + 256^2 B are then formed only at the run starts. This skips
    the per-pixel id arithmetic and the per-pixel counting that dominate a
    pixel-wise evaluation.

    Args:
      gt_rgb, pred_rgb: uint8 [height, width, 3] C-contiguous.

    Returns:
      As `_runs_of_ids`.
    """
    num_pixels = gt_rgb.shape[0] * gt_rgb.shape[1]
    gt_bytes = gt_rgb.reshape(-1)
    pred_bytes = pred_rgb.reshape(-1)
    changed = gt_bytes[3:] != gt_bytes[:-3]
    changed |= pred_bytes[3:] != pred_bytes[:-3]
    # Byte k + 3 differs from byte k: pixel k // 3 + 1 starts a run; its
    # (up to three) changed channels give the same pixel, kept once.
    pixel = np.flatnonzero(changed) // 3
    if len(pixel):
        first = np.empty(len(pixel), bool)
        first[0] = True
        np.not_equal(pixel[1:], pixel[:-1], out=first[1:])
        pixel = pixel[first]
    starts = _starts(pixel, num_pixels)
    lengths = np.diff(starts, append=num_pixels)
    return (_ids_at(gt_bytes, starts), _ids_at(pred_bytes, starts), lengths)


def _starts(before_change: np.ndarray, num_pixels: int) -> np.ndarray:
    """Run starts [num_runs] from the sorted pixels after which a map
    changes (pixel 0 always starts a run)."""
    if num_pixels == 0:
        return np.zeros([0], np.int64)
    return np.concatenate([[0], before_change + 1]).astype(np.int64)


def _ids_at(rgb_bytes: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Segment ids (R + 256 G + 256^2 B) of the given flat pixel indices."""
    offsets = pixels * 3
    return (rgb_bytes[offsets].astype(np.int64)
            | rgb_bytes[offsets + 1].astype(np.int64) << 8
            | rgb_bytes[offsets + 2].astype(np.int64) << 16)


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
    return run_statistics(*_runs_of_ids(gt_ids, pred_ids), gt_segments,
                          pred_segments)


def run_statistics(
        gt_run_ids: np.ndarray, pred_run_ids: np.ndarray,
        lengths: np.ndarray, gt_segments: Mapping[int, Mapping],
        pred_segments: Mapping[int, Mapping]) -> Dict[int, np.ndarray]:
    """`image_statistics` of an image given as runs of pixels.

    Args:
      gt_run_ids, pred_run_ids: int64 [num_runs] the (gt, pred) segment ids
        of each run; lengths: int64 [num_runs] its pixel count (see
        `_runs_of_ids`). Runs with the same id pair may repeat.
      gt_segments, pred_segments: as `image_statistics`.

    Returns:
      As `image_statistics`.
    """
    gt_values, gt_index = _compact(gt_run_ids, gt_segments, "ground-truth")
    pred_values, pred_index = _compact(pred_run_ids, pred_segments,
                                       "predicted")
    n_pred = len(pred_values)
    # intersection[i, j]: pixels with gt id gt_values[i], pred id
    # pred_values[j]. Float64 weights count exactly up to 2^53 pixels.
    intersection = np.bincount(
        gt_index * n_pred + pred_index, weights=lengths,
        minlength=len(gt_values) * n_pred).astype(np.int64).reshape(
            len(gt_values), n_pred)
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
# COCO-format files. Local paths are read with plain file I/O, so that the
# command never pays for importing TensorFlow (seconds); paths with a scheme
# (gs://, ram://, ...) go through tf.io.gfile.

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_remote(path: str) -> bool:
    """Whether `path` has a scheme (gs://, ram://, s3://, ...)."""
    return bool(_SCHEME.match(path))


def _gfile():
    return cli.import_tensorflow().io.gfile


def _read_bytes(path: str) -> bytes:
    if is_remote(path):
        gfile = _gfile()
        if not gfile.exists(path):
            raise PanopticInputError(f"{path}: file not found")
        with gfile.GFile(path, "rb") as f:
            return f.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise PanopticInputError(f"{path}: file not found") from None
    except OSError as e:  # a folder, no permission, ...
        raise PanopticInputError(
            f"{path}: cannot be read ({e.strerror or e})") from None


def _is_dir(path: str) -> bool:
    return _gfile().isdir(path) if is_remote(path) else os.path.isdir(path)


def read_json(path: str, what: str) -> Mapping:
    try:
        data = json.loads(_read_bytes(path).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PanopticInputError(f"{path}: not a JSON {what} file: {e}")
    if not isinstance(data, dict):
        raise PanopticInputError(
            f"{path}: expected a JSON object (a COCO {what} file), got a "
            f"{type(data).__name__}")
    return data


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_plain_rgb8_png(data: bytes) -> bool:
    """Whether the PNG's header says 8-bit RGB or RGBA without interlacing:
    every COCO panoptic PNG, and what `_decode_with_spng` reads."""
    # IHDR is the first chunk: width, height (4 bytes each) from byte 16,
    # then bit depth, colour type (2 RGB, 6 RGBA), compression, filter and
    # interlace method.
    return (len(data) >= 33 and data[:8] == _PNG_SIGNATURE
            and data[12:16] == b"IHDR" and data[24] == 8
            and data[25] in (2, 6) and data[28] == 0)


class _DamagedPng(Exception):
    """What is wrong with a PNG's bytes, in words."""


def _checked_chunks(data: bytes):
    """The PNG's chunks up to IEND, their lengths and CRCs checked.

    pyspng has libspng ignore the chunks' CRCs, so a damaged file could
    decode to wrong pixels; checking the CRCs (over the compressed bytes,
    microseconds) refuses it instead, as Pillow does.

    Returns:
      A list of (kind, start, end): the chunk's 4-byte type, and where it
      lies in data, its length field to its CRC included.

    Raises:
      _DamagedPng: a chunk is cut short, a CRC does not match, or IEND is
        missing.
    """
    view = memoryview(data)
    chunks = []
    position = len(_PNG_SIGNATURE)
    while True:
        if position + 12 > len(data):
            raise _DamagedPng("truncated: it ends before its IEND chunk")
        length, = struct.unpack_from(">I", data, position)
        end = position + 8 + length
        if end + 4 > len(data):
            raise _DamagedPng("truncated: it ends inside a chunk")
        kind = bytes(view[position + 4:position + 8])
        crc, = struct.unpack_from(">I", data, end)
        if zlib.crc32(view[position + 4:end]) != crc:
            raise _DamagedPng(f"the CRC of a {kind.decode('latin-1')} chunk "
                              "does not match")
        chunks.append((kind, position, end + 4))
        if kind == b"IEND":
            return chunks
        position = end + 4


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    """One PNG chunk: length, type, body and the CRC over type and body
    (the CRC `_checked_chunks` checks)."""
    return (struct.pack(">I", len(body)) + kind + body
            + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind))))


def _with_image_data_stored(data: bytes, chunks) -> bytes:
    """The same PNG with its image data inflated here, by zlib-ng, and
    stored uncompressed in one IDAT chunk, for libspng.

    libspng inflates with zlib, whose inflation of the long runs of one
    colour in a panoptic PNG is slow on some CPUs: 1.6 ms of a 640x480 PNG
    on an AMD EPYC (Zen 5), the whole of libspng's decoding there, against
    0.05 ms with zlib-ng (benchmarks/README.md). libspng then copies the
    stored data and undoes the PNG filters. zlib-ng checks the stream's
    Adler-32 checksum, which libspng is set to ignore.

    Args:
      data: An 8-bit RGB or RGBA PNG without interlacing.
      chunks: Its `_checked_chunks`.

    Returns:
      PNG bytes with the same pixels.

    Raises:
      _DamagedPng: the image data does not inflate, or not to the size its
        header gives.
    """
    width, height = struct.unpack_from(">II", data, 16)
    channels = 4 if data[25] == 6 else 3
    size = height * (1 + width * channels)  # a filter byte per row
    idat = [i for i, (kind, _, _) in enumerate(chunks) if kind == b"IDAT"]
    if not idat:
        raise _DamagedPng("it has no IDAT chunk")
    stream = b"".join(data[chunks[i][1] + 8:chunks[i][2] - 4] for i in idat)
    inflater = zlib_ng.decompressobj()
    try:
        filtered = inflater.decompress(stream, size + 1)
    except zlib_ng.error as e:
        raise _DamagedPng(f"its image data does not inflate ({e})") from None
    if len(filtered) > size:
        raise _DamagedPng(f"its image data inflates to more than {size} "
                          f"bytes, what its {width}x{height} header needs")
    if len(filtered) < size:
        raise _DamagedPng(f"its image data inflates to {len(filtered)} bytes "
                          f"where its {width}x{height} header needs {size}")
    if not inflater.eof:
        raise _DamagedPng("its image data stream is cut short")
    head = data[:chunks[idat[0]][1]]
    tail = data[chunks[idat[-1]][2]:chunks[-1][2]]
    return head + _png_chunk(b"IDAT", zlib_ng.compress(filtered, 0)) + tail


def _decode_with_spng(data: bytes, path: str) -> np.ndarray:
    """libspng (through pyspng), the image data inflated by zlib-ng
    (`_with_image_data_stored`): 0.37 ms of CPU for a 640x480 panoptic PNG
    on an AMD EPYC with AVX-512, against 1.6 ms for libspng alone
    (benchmarks/README.md); same pixels."""
    import pyspng  # pylint: disable=import-outside-toplevel

    try:
        stored = _with_image_data_stored(data, _checked_chunks(data))
    except _DamagedPng as e:
        raise PanopticInputError(f"{path}: not a readable PNG: {e}")
    try:
        return pyspng.load(stored)
    except Exception as e:  # pyspng raises RuntimeError and ValueError.
        raise PanopticInputError(f"{path}: not a readable PNG: {e}")


def _decode_with_pillow(data: bytes, path: str):
    """Any PNG Pillow reads -> (pixels as Pillow gives them, Pillow's mode)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from PIL import ImageFile  # pylint: disable=import-outside-toplevel

    block = ImageFile.MAXBLOCK
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            # np.asarray copies the pixels out in MAXBLOCK chunks and joins
            # them (a second copy); one block for the whole image saves the
            # join, ~10% of the command's time.
            ImageFile.MAXBLOCK = max(block, 4 * image.width * image.height)
            pixels = np.asarray(image)
    except Exception as e:  # PIL raises several types for corrupt files.
        raise PanopticInputError(f"{path}: not a readable PNG: {e}")
    finally:
        ImageFile.MAXBLOCK = block
    return pixels, mode


def read_rgb_png(path: str) -> np.ndarray:
    """A COCO panoptic PNG -> uint8 [height, width, 3] C-contiguous colours
    (an alpha channel is dropped).

    8-bit RGB and RGBA PNGs without interlacing (all that COCO tools write)
    are decoded by libspng, any other PNG by Pillow, which reads or refuses
    it as before.
    """
    data = _read_bytes(path)
    if _is_plain_rgb8_png(data):
        pixels, mode = _decode_with_spng(data, path), None
    else:
        pixels, mode = _decode_with_pillow(data, path)
    if pixels.ndim != 3 or pixels.shape[-1] not in (3, 4):
        raise PanopticInputError(
            f"{path}: expected an RGB PNG with ids encoded as R + 256 G + "
            f"256^2 B, got mode {mode} with shape {pixels.shape}")
    if pixels.shape[-1] == 4:
        pixels = np.ascontiguousarray(pixels[..., :3])
    return pixels


def read_id_png(path: str) -> np.ndarray:
    """A COCO panoptic PNG -> int64 [height, width] segment ids."""
    return rgb_to_id(read_rgb_png(path)).astype(np.int64)


def _is_integral(value) -> bool:
    """Whether a JSON value is a whole number (5 or 5.0, not "5" or 5.5)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and float(value).is_integer())


def _segments_by_id(annotation: Mapping, source: str,
                    categories: Mapping[int, bool]) -> Dict[int, Mapping]:
    segments = {}
    for segment in annotation.get("segments_info", []):
        if not isinstance(segment, dict):
            raise PanopticInputError(
                f"{source}: a segment of image {annotation.get('image_id')}"
                f" is not an object: {json.dumps(segment)[:200]}")
        for field in ("id", "category_id"):
            if field not in segment:
                raise PanopticInputError(
                    f"{source}: a segment of image {annotation.get('image_id')}"
                    f" lacks {field!r}: {segment}")
        if not (_is_integral(segment["id"])
                and _is_integral(segment["category_id"])):
            raise PanopticInputError(
                f"{source}: a segment of image {annotation.get('image_id')}"
                f" has a non-integer 'id' or 'category_id': {segment}")
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
    gt_rgb = read_rgb_png(gt_png)
    pred_rgb = read_rgb_png(pred_png)
    if gt_rgb.shape != pred_rgb.shape:
        raise PanopticInputError(
            f"{pred_png}: image {image_id} is {pred_rgb.shape[1]}x"
            f"{pred_rgb.shape[0]} (WxH) but its ground truth {gt_png} is "
            f"{gt_rgb.shape[1]}x{gt_rgb.shape[0]}")
    try:
        return run_statistics(*_runs_of_rgb(gt_rgb, pred_rgb), gt_segments,
                              pred_segments)
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


# The tasks of the running evaluation, set in each worker by
# `_set_worker_tasks` (inherited, not pickled, when workers are forked), so
# that only (start, stop) ranges travel to the workers.
_WORKER_TASKS: Sequence = ()


def _set_worker_tasks(tasks) -> None:
    global _WORKER_TASKS
    _WORKER_TASKS = tasks


def _evaluate_range(bounds) -> Dict[int, np.ndarray]:
    """Summed statistics of tasks[start:stop] of `_WORKER_TASKS`."""
    start, stop = bounds
    total: Dict[int, np.ndarray] = {}
    for task in _WORKER_TASKS[start:stop]:
        for category, row in _evaluate_pair(task).items():
            total[category] = total.get(category, 0) + row
    return total


def _categories(gt: Mapping, gt_json: str) -> Dict[int, bool]:
    if "categories" not in gt or not isinstance(gt["categories"], list):
        raise PanopticInputError(f"{gt_json}: lacks the 'categories' list")
    categories = {}
    for category in gt["categories"]:
        if (not isinstance(category, dict) or "id" not in category
                or "isthing" not in category):
            raise PanopticInputError(
                f"{gt_json}: category {category} lacks 'id' or 'isthing'")
        if not _is_integral(category["id"]):
            raise PanopticInputError(
                f"{gt_json}: category {category} has a non-integer 'id'")
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
        if not isinstance(a, dict) or not isinstance(
                a.get("segments_info", []), list):
            raise PanopticInputError(
                f"{path}: expected each annotation to be an object with a "
                f"'segments_info' list, got {json.dumps(a)[:200]}")
        for field in ("image_id", "file_name"):
            if field not in a:
                raise PanopticInputError(
                    f"{path}: an annotation lacks {field!r}: "
                    f"{json.dumps(a)[:200]}")
    return annotations


def _tasks(gt_json: str, gt_dir: str, pred_json: str, pred_dir: str):
    """Reads both JSONs and pairs every ground-truth image with its
    prediction. Returns (tasks, categories: id -> is thing, names: id ->
    category name)."""
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
    if not tasks:
        raise PanopticInputError(
            f"{gt_json}: lists no annotations; expected at least one image "
            "to evaluate")
    names = {c["id"]: str(c["name"]) for c in gt["categories"] if "name" in c}
    return tasks, categories, names


def evaluate(gt_json: str, gt_dir: str, pred_json: str, pred_dir: str,
             workers: Optional[int] = None, progress: bool = False) -> Dict:
    """Panoptic quality of COCO-format predictions.

    Args:
      gt_json, gt_dir: ground-truth JSON and PNG folder.
      pred_json, pred_dir: prediction JSON and PNG folder. Every
        ground-truth image needs a prediction; extra predictions are ignored
        (as the official script).
      workers: processes; None: os.cpu_count(). 1 evaluates in this process.
      progress: show progress on stderr (`cli.Progress`: a bar in a
        terminal, a line every 100 images otherwise).

    Returns:
      The `summarize` dictionary; per_class entries also carry the
      category's "name" when the ground-truth JSON gives one.

    Raises:
      PanopticInputError: on malformed input.
    """
    tasks, categories, names = _tasks(gt_json, gt_dir, pred_json, pred_dir)
    workers = max(1, min(workers or os.cpu_count() or 1, len(tasks)))
    # Several ranges per worker so that slow images balance; the results
    # come back in order, so the sums do not depend on the scheduling.
    num_ranges = min(len(tasks), workers * 8)
    edges = np.linspace(0, len(tasks), num_ranges + 1).round().astype(int)
    ranges = list(zip(edges[:-1].tolist(), edges[1:].tolist()))
    totals: Dict[int, np.ndarray] = {}
    with cli.Progress(total=len(tasks), desc="panoptic quality",
                      enabled=progress) as bar:
        if workers == 1:
            _set_worker_tasks(tasks)
            parts = map(_evaluate_range, ranges)
            pool = None
        else:
            # fork: the workers inherit the modules and the tasks instead of
            # importing and unpickling them.
            method = ("fork" if "fork" in
                      multiprocessing.get_all_start_methods() else None)
            pool = multiprocessing.get_context(method).Pool(
                workers, initializer=_set_worker_tasks, initargs=(tasks,))
            parts = pool.imap(_evaluate_range, ranges)
        try:
            for (start, stop), part in zip(ranges, parts):
                for category, row in part.items():
                    totals[category] = totals.get(category, 0) + row
                bar.update(stop - start)
        finally:
            _set_worker_tasks(())
            if pool is not None:
                pool.terminate()
                pool.join()
    result = summarize(totals, categories)
    for category, values in result["per_class"].items():
        if int(category) in names:
            values["name"] = names[int(category)]
    return result


# ---------------------------------------------------------------------------
# The command.


def _check_output(path: str, overwrite: bool) -> None:
    """Fails early when --output_json would replace a file or cannot be
    written, before minutes of evaluation."""
    if is_remote(path):
        if _gfile().exists(path) and not overwrite:
            raise cli.UserError(
                f"--output_json: {path} already exists; pass --overwrite to "
                "replace it")
        return
    if os.path.isdir(path):
        raise cli.UserError(f"--output_json: {path} is a folder; expected a "
                            "JSON file path")
    if os.path.lexists(path) and not overwrite:
        raise cli.UserError(f"--output_json: {path} already exists; pass "
                            "--overwrite to replace it")
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise cli.UserError(f"--output_json: {parent} is a file, so {path} "
                            "cannot be created; expected a folder there")


def write_json_file(path: str, value, overwrite: bool = False) -> None:
    """Writes `value` as JSON to `path` through a temporary file in the
    same folder and a rename, so that no reader sees a partial file.

    A file that is already at `path` is replaced only when `overwrite`;
    otherwise cli.UserError (also when one appears while writing: the
    temporary file is linked to `path`, which fails if `path` exists).
    """
    text = json.dumps(value, indent=1, sort_keys=True) + "\n"
    name = os.path.basename(path.rstrip("/"))
    directory = path[:len(path.rstrip("/")) - len(name)] or "."
    temporary = f"{directory.rstrip('/')}/.{name}.tmp-{uuid.uuid4().hex}"
    exists = cli.UserError(f"--output_json: {path} already exists; pass "
                           "--overwrite to replace it")
    if is_remote(path):
        gfile = _gfile()
        gfile.makedirs(directory)
        with gfile.GFile(temporary, "w") as f:
            f.write(text)
        try:
            gfile.rename(temporary, path, overwrite=overwrite)
        except Exception:
            gfile.remove(temporary)
            if not overwrite and gfile.exists(path):
                raise exists from None
            raise
        return
    os.makedirs(directory, exist_ok=True)
    with open(temporary, "w") as f:
        f.write(text)
    try:
        if overwrite:
            os.replace(temporary, path)
            return
        try:
            # Atomic "create only if absent".
            os.link(temporary, path)
        except FileExistsError:
            raise exists from None
        except OSError:  # No hard links on this file system.
            if os.path.lexists(path):
                raise exists from None
            os.replace(temporary, path)
    finally:
        if os.path.lexists(temporary):
            os.remove(temporary)


def _check_folder(flag: str, path: str) -> None:
    if not _is_dir(path):
        raise cli.UserError(f"{flag}: {path} is not a folder; expected the "
                            "folder of the PNGs the JSON names")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m max_deeplab_tf.evaluation.panoptic_quality",
        description="COCO panoptic quality (PQ, SQ, RQ) of predictions.")
    parser.add_argument("--gt_json", required=True,
                        help="Ground-truth COCO panoptic JSON.")
    parser.add_argument("--gt_dir", required=True,
                        help="Folder of the ground-truth PNGs.")
    parser.add_argument("--pred_json", required=True,
                        help="Predicted COCO panoptic JSON.")
    parser.add_argument("--pred_dir", required=True,
                        help="Folder of the predicted PNGs.")
    parser.add_argument("--output_json", default=None,
                        help="Where to write the result JSON (a new file).")
    parser.add_argument("--overwrite", action="store_true",
                        help="Replace an existing --output_json.")
    parser.add_argument("--workers", type=int, default=None,
                        help="Worker processes (default: all CPUs).")
    cli.add_verbose_flag(parser)
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers: {args.workers}; expected an integer >= 1")
    if args.output_json:
        _check_output(args.output_json, args.overwrite)
    _check_folder("--gt_dir", args.gt_dir)
    _check_folder("--pred_dir", args.pred_dir)
    start = time.time()
    result = evaluate(args.gt_json, args.gt_dir, args.pred_json,
                      args.pred_dir, workers=args.workers, progress=True)
    print(format_table(result))
    print(f"({time.time() - start:.1f}s)")
    if args.output_json:
        write_json_file(args.output_json, result, overwrite=args.overwrite)
    return 0


if __name__ == "__main__":
    cli.run_main(main)

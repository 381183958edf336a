r"""A synthetic panoptic dataset in the COCO panoptic format.

  python -m max_deeplab_tf.data.synthetic --output_dir=/tmp/synthetic \
      --num_images=200 --num_val_images=50 --image_size=129 --seed=0

writes, for split S in (train, val), exactly COCO panoptic 2017's layout:

  S2017/<image id>.jpg                         RGB JPEG images
  annotations/panoptic_S2017/<image id>.png    segment id = R + 256 G + 256^2 B
  annotations/panoptic_S2017.json              images, annotations with
                                               segments_info (id, category_id,
                                               area, bbox, iscrowd),
                                               categories (with isthing)

so max_deeplab_tf.data.build_coco_panoptic converts it like COCO. The
categories are builtin_datasets.SYNTHETIC_CATEGORIES (descriptor
'synthetic_panoptic': 3 things, 3 stuff, 7 classes with void).

A scene: a sky above a wavy horizon, ground below, often a lake of water;
each stuff class has its own texture (smooth gradient with clouds, grainy
noise, horizontal ripples) and a jittered colour. On top, 2 to 7 overlapping
thing instances (discs, boxes, triangles with a darker rim, of random size,
aspect, rotation and colour within a per-class hue family: reddish discs,
yellowish boxes, purplish triangles; later ones occlude earlier ones),
sometimes a crowd (a cluster of
small shapes of one class annotated as one iscrowd segment) and sometimes void
(unlabelled scribbles and noise patches, segment id 0). Segments reduced by
occlusion to fewer than a few pixels become void. The output depends only on
the seed, split, index and image size.
"""

import io
import json
import posixpath
import zlib
from typing import List, Sequence, Tuple, Union

from absl import flags
import numpy as np
from PIL import Image

from max_deeplab_tf import cli
from max_deeplab_tf.data import builtin_datasets

THING_IDS = tuple(c[0] for c in builtin_datasets.SYNTHETIC_CATEGORIES
                  if c[2])
STUFF_IDS = tuple(c[0] for c in builtin_datasets.SYNTHETIC_CATEGORIES
                  if not c[2])
DISC, BOX, TRIANGLE = THING_IDS
SKY, GROUND, WATER = STUFF_IDS
SPLITS = ("train", "val")
JPEG_QUALITY = 90


def _join(*parts: str) -> str:
    return posixpath.join(*parts)


def _gfile():
    return cli.import_tensorflow().io.gfile


def split_paths(output_dir: str, split: str) -> Tuple[str, str, str]:
    """(annotation JSON, panoptic PNG folder, image folder) of a split."""
    return (_join(output_dir, "annotations", f"panoptic_{split}2017.json"),
            _join(output_dir, "annotations", f"panoptic_{split}2017"),
            _join(output_dir, f"{split}2017"))


def dataset_exists(output_dir: str, splits: Sequence[str] = SPLITS) -> bool:
    """True when every split's JSON (written last) exists."""
    gfile = _gfile()
    return all(gfile.exists(split_paths(output_dir, s)[0]) for s in splits)


def _smooth_noise(rng, height: int, width: int, cells: int) -> np.ndarray:
    """Unit-variance-ish noise varying over about `cells` cells per side."""
    grid = rng.standard_normal((cells + 1, cells + 1)).astype(np.float32)
    image = Image.fromarray(grid).resize((width, height), Image.BILINEAR)
    return np.asarray(image, np.float32)


def _stuff_layers(rng, height: int, width: int):
    """Per-pixel stuff category and the painted background."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    horizon = height * rng.uniform(0.25, 0.6) + (
        height * rng.uniform(0.02, 0.08) *
        np.sin(2 * np.pi * xx[0] / width * rng.uniform(0.5, 2.0) +
               rng.uniform(0, 2 * np.pi)))
    sky = yy < horizon[None, :]
    stuff = np.where(sky, SKY, GROUND).astype(np.int32)
    if rng.random() < 0.7:
        cy = rng.uniform(horizon.mean() + 0.1 * height, 1.1 * height)
        cx = rng.uniform(0.1, 0.9) * width
        ry = rng.uniform(0.1, 0.3) * height
        rx = rng.uniform(0.25, 0.6) * width
        angle = np.arctan2(yy - cy, xx - cx)
        wobble = 1 + 0.08 * np.sin(3 * angle + rng.uniform(0, 2 * np.pi))
        lake = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < wobble ** 2
        stuff[lake & ~sky] = WATER

    image = np.zeros((height, width, 3), np.float32)
    # Sky: smooth vertical gradient, lighter towards the horizon, clouds.
    base = np.array([rng.uniform(80, 150), rng.uniform(140, 200),
                     rng.uniform(200, 250)], np.float32)
    clouds = np.clip(_smooth_noise(rng, height, width, 4), 0, None) * 35
    sky_paint = (base + 50 * (yy / height)[..., None] * np.array(
        [1.0, 0.7, 0.2], np.float32) + clouds[..., None])
    # Ground: brown to green, grainy.
    base = np.array([rng.uniform(90, 150), rng.uniform(80, 140),
                     rng.uniform(30, 70)], np.float32)
    ground_paint = (base + rng.normal(0, 18, (height, width, 1)) +
                    12 * _smooth_noise(rng, height, width, 8)[..., None])
    # Water: dark blue-teal with horizontal ripples.
    base = np.array([rng.uniform(20, 60), rng.uniform(70, 120),
                     rng.uniform(130, 190)], np.float32)
    period = rng.uniform(3.0, 6.0)
    ripples = 22 * np.sin(2 * np.pi * yy / period + 0.6 * np.sin(
        xx / rng.uniform(5, 15)))
    water_paint = base + ripples[..., None] + rng.normal(
        0, 5, (height, width, 1))
    for category, paint in ((SKY, sky_paint), (GROUND, ground_paint),
                            (WATER, water_paint)):
        image[stuff == category] = paint[stuff == category]
    return stuff, image


def _shape_mask(kind: int, cy: float, cx: float, radius: float,
                aspect: float, theta: float, height: int, width: int):
    """Boolean mask of one shape inside its bounding window.

    Returns:
      (y0, x0, mask) with mask covering rows y0.. and columns x0.., or None
      when the shape lies outside the image.
    """
    reach = 1.5 * radius * max(aspect, 1 / aspect) + 1
    y0, y1 = max(int(cy - reach), 0), min(int(cy + reach) + 1, height)
    x0, x1 = max(int(cx - reach), 0), min(int(cx + reach) + 1, width)
    if y0 >= y1 or x0 >= x1:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy + 0.5 - cy, xx + 0.5 - cx
    cos, sin = np.cos(theta), np.sin(theta)
    u, v = cos * dx + sin * dy, -sin * dx + cos * dy
    if kind == DISC:
        mask = (u / (radius * aspect)) ** 2 + (v / (radius / aspect)) ** 2 <= 1
    elif kind == BOX:
        mask = (np.abs(u) <= radius * aspect * 0.9) & (
            np.abs(v) <= radius / aspect * 0.9)
    else:
        # Equilateral triangle: inside all three edges' half-planes.
        mask = np.ones_like(u, dtype=bool)
        for k in range(3):
            phi = theta + 2 * np.pi * k / 3
            mask &= (np.cos(phi) * dx + np.sin(phi) * dy) <= 0.6 * radius
    return y0, x0, mask


# Each thing class has a hue family (red discs, yellow boxes, purple
# triangles), wide enough that neighbours of one class still differ and
# that colour alone does not always decide the class.
_THING_HUES = {DISC: 0.0, BOX: 0.14, TRIANGLE: 0.78}


def _thing_colour(rng, kind: int) -> np.ndarray:
    """A random RGB colour (0..255) in the hue family of a thing class."""
    import colorsys
    hue = (_THING_HUES[kind] + rng.normal(0, 0.05)) % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.6, 1.0),
                              rng.uniform(0.6, 1.0))
    return np.array(rgb, np.float32) * 255


def render_scene(rng: np.random.Generator, height: int, width: int
                 ) -> Tuple[np.ndarray, np.ndarray, List[Tuple[int, int]]]:
    """Draws one scene.

    Args:
      rng: Random generator (the only source of randomness).
      height: Image height.
      width: Image width.

    Returns:
      image: uint8 [height, width, 3].
      segment_map: int32 [height, width], 0 for void, k for segments[k - 1].
      segments: (category_id, iscrowd) of each segment, all non-empty.
    """
    stuff, canvas = _stuff_layers(rng, height, width)
    segments = [(category, 0) for category in STUFF_IDS]
    segment_map = np.zeros((height, width), np.int32)
    for k, category in enumerate(STUFF_IDS):
        segment_map[stuff == category] = k + 1
    size = min(height, width)

    def paint(kind, cy, cx, radius, colour, index):
        aspect = rng.uniform(0.75, 1.33)
        theta = rng.uniform(0, 2 * np.pi)
        window = _shape_mask(kind, cy, cx, radius, aspect, theta, height,
                             width)
        if window is None:
            return
        y0, x0, mask = window
        h, w = mask.shape
        shade = 1 + 0.25 * (np.mgrid[0:h, 0:w][0] + y0 - cy) / max(radius, 1)
        # A darker rim, as objects have edges: it lets touching instances
        # of one class be told apart.
        inner = mask.copy()
        inner[1:] &= mask[:-1]
        inner[:-1] &= mask[1:]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        shade = np.where(inner, shade, 0.6 * shade)
        region = canvas[y0:y0 + h, x0:x0 + w]
        region[mask] = (colour[None, None, :] * shade[..., None])[mask]
        segment_map[y0:y0 + h, x0:x0 + w][mask] = index

    num_things = int(rng.integers(2, 8))
    crowd_at = int(rng.integers(0, num_things + 1)) if rng.random() < 0.3 \
        else -1
    for t in range(num_things + 1):
        if t == crowd_at:
            kind = THING_IDS[int(rng.integers(len(THING_IDS)))]
            segments.append((kind, 1))
            cy = rng.uniform(0.2, 0.9) * height
            cx = rng.uniform(0.1, 0.9) * width
            for _ in range(int(rng.integers(5, 10))):
                radius = max(rng.uniform(0.025, 0.045) * size, 1.5)
                paint(kind, cy + rng.normal(0, 0.06 * size),
                      cx + rng.normal(0, 0.06 * size), radius,
                      _thing_colour(rng, kind),
                      len(segments))
        elif t < num_things:
            kind = THING_IDS[int(rng.integers(len(THING_IDS)))]
            segments.append((kind, 0))
            paint(kind, rng.uniform(0.1, 0.95) * height,
                  rng.uniform(0.05, 0.95) * width,
                  rng.uniform(0.07, 0.2) * size, _thing_colour(rng, kind),
                  len(segments))

    # Void: unlabelled scribbles and noise patches.
    if rng.random() < 0.5:
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        for _ in range(int(rng.integers(1, 4))):
            (ya, yb), (xa, xb) = rng.uniform(0, height, 2), rng.uniform(
                0, width, 2)
            length2 = max((yb - ya) ** 2 + (xb - xa) ** 2, 1e-6)
            t = np.clip(((yy - ya) * (yb - ya) + (xx - xa) * (xb - xa)) /
                        length2, 0, 1)
            distance = np.hypot(yy - (ya + t * (yb - ya)),
                                xx - (xa + t * (xb - xa)))
            line = distance <= rng.uniform(0.5, 1.5)
            canvas[line] = rng.uniform(0, 60)
            segment_map[line] = 0
    if rng.random() < 0.2:
        h = int(rng.integers(2, max(3, size // 8)))
        w = int(rng.integers(2, max(3, size // 8)))
        y0, x0 = int(rng.integers(0, height - h + 1)), int(
            rng.integers(0, width - w + 1))
        canvas[y0:y0 + h, x0:x0 + w] = rng.uniform(0, 255, (h, w, 3))
        segment_map[y0:y0 + h, x0:x0 + w] = 0

    # Tiny remnants of occluded segments become void; empty ones vanish.
    min_area = max(4, (height * width) // 2000)
    areas = np.bincount(segment_map.ravel(), minlength=len(segments) + 1)
    keep = [k for k in range(1, len(segments) + 1) if areas[k] >= min_area]
    remap = np.zeros(len(segments) + 1, np.int32)
    remap[keep] = np.arange(1, len(keep) + 1)
    segment_map = remap[segment_map]
    segments = [segments[k - 1] for k in keep]
    image = np.clip(np.round(canvas), 0, 255).astype(np.uint8)
    return image, segment_map, segments


def _unique_segment_ids(rng, count: int) -> np.ndarray:
    """Distinct ids in 1..2^24-1, spread over all three colour channels."""
    ids = set()
    while len(ids) < count:
        ids.update(rng.integers(1, 2 ** 24, count).tolist())
    return rng.permutation(sorted(ids))[:count]


def _encode(array: np.ndarray, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        Image.fromarray(array).save(buffer, format="JPEG",
                                    quality=JPEG_QUALITY)
    else:
        Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_atomic(path: str, data: Union[bytes, str]) -> None:
    """Writes a hidden temporary file beside `path` (no glob of the final
    names matches it), then renames it."""
    import uuid
    gfile = _gfile()
    folder, name = posixpath.split(path)
    temp = _join(folder, f".{name}.tmp-{uuid.uuid4().hex[:8]}")
    with gfile.GFile(temp, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)
    gfile.rename(temp, path, overwrite=True)


DESCRIPTION = "max_deeplab_tf synthetic panoptic dataset"


def _check_not_foreign(json_path: str) -> None:
    """Refuses to write a split whose annotation JSON exists and is not one
    of ours (e.g. --output_dir pointed at a real COCO folder)."""
    gfile = _gfile()
    if not gfile.exists(json_path):
        return
    try:
        with gfile.GFile(json_path, "rb") as f:
            info = json.loads(f.read().decode("utf-8")).get("info", {})
        ours = info.get("description") == DESCRIPTION
    except Exception:  # pylint: disable=broad-except
        ours = False  # Unreadable or not JSON: certainly not ours.
    if not ours:
        raise cli.UserError(
            f"{json_path}: exists and is not a synthetic dataset of ours; it "
            "and its split were left unchanged; choose another --output_dir")


def _image_size(image_size) -> Tuple[int, int]:
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    height, width = (int(v) for v in image_size)
    if height < 16 or width < 16:
        raise cli.UserError(f"--image_size: {image_size} is below the "
                            "minimum 16")
    return height, width


def _image_id(split: str, index: int) -> int:
    """Image ids unique across splits, as COCO's are."""
    code = {"train": 0, "val": 1}.get(split)
    if code is None:
        code = 2 + zlib.crc32(split.encode()) % 1000
    return code * 10 ** 7 + index + 1


def make_example(seed: int, split: str, index: int, image_size
                 ) -> Tuple[np.ndarray, np.ndarray, List[dict]]:
    """One image, its segment-id map and its segments_info (deterministic).

    Returns:
      image: uint8 [height, width, 3].
      ids: int64 [height, width] COCO segment id per pixel (0 = void).
      segments_info: COCO entries (id, category_id, area, bbox, iscrowd).
    """
    height, width = _image_size(image_size)
    rng = np.random.default_rng(
        [int(seed), zlib.crc32(split.encode()), int(index)])
    image, segment_map, segments = render_scene(rng, height, width)
    segment_ids = _unique_segment_ids(rng, len(segments))
    table = np.concatenate([[0], segment_ids]).astype(np.int64)
    ids = table[segment_map]
    info = []
    for k, (category, crowd) in enumerate(segments):
        ys, xs = np.nonzero(segment_map == k + 1)
        info.append({
            "id": int(segment_ids[k]), "category_id": int(category),
            "iscrowd": int(crowd), "area": int(ys.size),
            "bbox": [int(xs.min()), int(ys.min()),
                     int(xs.max() - xs.min() + 1),
                     int(ys.max() - ys.min() + 1)]})
    return image, ids, info


def ids_to_rgb(ids: np.ndarray) -> np.ndarray:
    """COCO panoptic colour encoding of segment ids, uint8 [h, w, 3]."""
    ids = np.asarray(ids, np.int64)
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536 % 256],
                    axis=-1).astype(np.uint8)


def generate_split(output_dir: str, split: str, num_images: int,
                   image_size=129, seed: int = 0,
                   progress: bool = False) -> str:
    """Writes one split; returns the path of its annotation JSON.

    Args:
      output_dir: Dataset root (gs:// and ram:// work).
      split: Split name ('train', 'val', ...).
      num_images: Number of images.
      image_size: Side of the square images, or (height, width).
      seed: Random seed; the output depends only on (seed, split, index,
        image_size).
      progress: Show progress on stderr (cli.Progress).

    Raises:
      cli.UserError: on a negative num_images, a too small image_size, an
        output folder that cannot be made, or an annotation JSON there that
        is not ours (it is never replaced).
    """
    if num_images < 0:
        raise cli.UserError(f"--num_images: {num_images}; expected a "
                            "non-negative number")
    height, width = _image_size(image_size)
    tf = cli.import_tensorflow()  # After the checks: bad flags fail fast.

    gfile = _gfile()
    json_path, png_dir, image_dir = split_paths(output_dir, split)
    _check_not_foreign(json_path)
    try:
        for folder in (png_dir, image_dir):
            gfile.makedirs(folder)
    except tf.errors.OpError as e:
        raise cli.UserError(f"--output_dir {output_dir}: cannot create "
                            f"{folder}: {cli.one_line(e.message)}") from e
    images, annotations = [], []
    bar = cli.Progress(total=num_images, desc=f"synthetic {split}",
                       enabled=progress)
    for index in range(num_images):
        image, ids, info = make_example(seed, split, index, (height, width))
        image_id = _image_id(split, index)
        name = f"{image_id:012d}"
        _write_atomic(_join(image_dir, name + ".jpg"), _encode(image, "JPEG"))
        _write_atomic(_join(png_dir, name + ".png"),
                      _encode(ids_to_rgb(ids), "PNG"))
        images.append({"id": image_id, "file_name": name + ".jpg",
                       "height": height, "width": width})
        annotations.append({"image_id": image_id, "file_name": name + ".png",
                            "segments_info": info})
        bar.update()
    bar.close()
    data = {
        "info": {"description": DESCRIPTION,
                 "seed": int(seed), "split": split},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": builtin_datasets.categories_as_json(
            builtin_datasets.SYNTHETIC_CATEGORIES),
    }
    # Last, so that an existing JSON means a complete split.
    _write_atomic(json_path, json.dumps(data))
    return json_path


def generate_dataset(output_dir: str, num_images: int, image_size=129,
                     seed: int = 0, split: str = "train") -> str:
    """Alias of generate_split with the arguments in another order."""
    return generate_split(output_dir, split, num_images, image_size, seed)


def generate(output_dir: str, num_train_images: int = 200,
             num_val_images: int = 50, image_size=129, seed: int = 0,
             progress: bool = False) -> None:
    """Writes the train and val splits (see generate_split)."""
    generate_split(output_dir, "train", num_train_images, image_size, seed,
                   progress)
    generate_split(output_dir, "val", num_val_images, image_size, seed,
                   progress)


FLAGS = flags.FLAGS


def _define_flags():
    flags.DEFINE_string("output_dir", None, "Dataset root to write.")
    flags.DEFINE_integer("num_images", 200, "Training images.")
    flags.DEFINE_integer("num_val_images", None,
                         "Validation images (default: num_images / 4).")
    flags.DEFINE_integer("image_size", 129, "Side of the square images.")
    flags.DEFINE_integer("seed", 0, "Random seed.")


def main(argv):
    cli.reject_arguments(argv)
    if not FLAGS.output_dir:
        raise cli.UserError("--output_dir is required: the dataset root to "
                            "write")
    num_val = (FLAGS.num_val_images if FLAGS.num_val_images is not None
               else max(1, FLAGS.num_images // 4))
    if num_val < 0:
        raise cli.UserError(f"--num_val_images: {num_val}; expected a "
                            "non-negative number")
    generate(FLAGS.output_dir, FLAGS.num_images, num_val, FLAGS.image_size,
             FLAGS.seed, progress=True)
    print(f"Wrote {FLAGS.num_images} train and {num_val} val images of "
          f"{FLAGS.image_size}x{FLAGS.image_size} to {FLAGS.output_dir}")


if __name__ == "__main__":
    _define_flags()
    cli.run_absl_main(main)

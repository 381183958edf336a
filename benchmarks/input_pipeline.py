r"""Images per second of the training input pipeline at crop 641.

    python benchmarks/input_pipeline.py [--num_images=64] [--batches=12]
        [--repeats=3] [--data_dir=DIR]

Makes a synthetic COCO-panoptic dataset of COCO-sized images (480 x 640 JPEG
with a panoptic PNG) unless --data_dir already holds one, converts it to
tfrecord shards, and times max_deeplab_tf.data.input_pipeline with the
MaX-DeepLab COCO settings (crop 641 x 641, min/max resize 641, random scale
0.5-1.5 step 0.1, flip, max_thing_id 128, batch 8), in stages:

  read+decode       records read, parsed, JPEG decoded, label decoded
  +augment          + resize to range, random scale, pad, crop, flip
  full (training)   + the MaX-DeepLab targets (what build_dataset yields)
  full (eval)       build_dataset(is_training=False): resize + pad, targets

Each stage: a few warm-up batches, then --batches batches; the best of
--repeats runs is reported (the machine is shared), median in the JSON.
Prints a table and writes benchmarks/results/input_pipeline.json.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from max_deeplab_tf.data import build_coco_panoptic  # noqa: E402
from max_deeplab_tf.data import input_pipeline  # noqa: E402
from max_deeplab_tf.data import preprocessing  # noqa: E402
from max_deeplab_tf.data import synthetic  # noqa: E402
from max_deeplab_tf.data import tfrecord  # noqa: E402
from max_deeplab_tf.protos import dataset_pb2  # noqa: E402

CROP = 641
BATCH = 8
IMAGE_SIZE = (480, 640)


def make_data(data_dir, num_images):
    coco, shards = os.path.join(data_dir, "coco"), os.path.join(data_dir,
                                                                "shards")
    if not synthetic.dataset_exists(coco, ("train",)):
        synthetic.generate_split(coco, "train", num_images, IMAGE_SIZE, 0)
    build_coco_panoptic.convert(coco, "train", shards, num_shards=4)
    return os.path.join(shards, "train-*.tfrecord")


def options(pattern):
    text = dataset_pb2.DatasetOptions(
        dataset="synthetic_panoptic", file_pattern=[pattern],
        batch_size=BATCH, crop_size=[CROP, CROP], min_resize_value=[CROP],
        max_resize_value=[CROP], thing_id_mask_annotations=True)
    text.augmentations.min_scale_factor = 0.5
    text.augmentations.max_scale_factor = 1.5
    text.augmentations.scale_factor_step_size = 0.1
    return text


def staged_dataset(pattern, stage):
    """The training pipeline cut after `stage` (same reading and batching)."""
    opts = options(pattern)
    generator = input_pipeline.generator_from_options(opts, True)
    files = input_pipeline.list_files([pattern])
    dataset = tf.data.Dataset.from_tensor_slices(files).shuffle(
        len(files)).repeat().interleave(
            tf.data.TFRecordDataset, cycle_length=opts.cycle_length,
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    dataset = dataset.shuffle(opts.shuffle_buffer_size)

    def parse(serialized):
        decoded = tfrecord.decode_example(serialized)
        if stage == "decode":
            return {"image": tf.cast(decoded["image"], tf.float32),
                    "label": decoded["label"]}
        image, label = preprocessing.preprocess(
            decoded["image"], decoded["label"], (CROP, CROP), True, 0,
            (CROP, CROP), (CROP, CROP), None, 0.5, 1.5, 0.1)
        if stage == "augment":
            return {"image": image, "label": label}
        return generator(decoded)

    dataset = dataset.map(parse, num_parallel_calls=tf.data.AUTOTUNE,
                          deterministic=False)
    if stage == "decode":
        # Images differ in size before augmentation: batch by one.
        return dataset.batch(1).prefetch(tf.data.AUTOTUNE), 1
    return dataset.batch(BATCH, drop_remainder=True).prefetch(
        tf.data.AUTOTUNE), BATCH


def time_dataset(dataset, per_batch, batches, warmup=3):
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        batch = next(iterator)
        count += per_batch
    # Wait for the last batch's tensors.
    _ = {k: v.shape for k, v in batch.items()}
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num_images", type=int, default=64)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data_dir", default=None)
    args = parser.parse_args()

    data_dir = args.data_dir or tempfile.mkdtemp(prefix="input_pipeline_")
    pattern = make_data(data_dir, args.num_images)
    load_before = os.getloadavg()[0]
    rows = []
    stages = (("read+decode", "decode"), ("+augment", "augment"),
              ("full (training)", "full"))
    for name, stage in stages:
        runs = []
        for _ in range(args.repeats):
            dataset, per_batch = staged_dataset(pattern, stage)
            batches = args.batches * (BATCH if per_batch == 1 else 1)
            runs.append(time_dataset(dataset, per_batch, batches))
        rows.append((name, runs))
    eval_runs = []
    for _ in range(args.repeats):
        dataset = input_pipeline.build_dataset(options(pattern), False)
        dataset = dataset.repeat()
        eval_runs.append(time_dataset(dataset, BATCH, args.batches))
    rows.append(("full (eval)", eval_runs))
    # The real entry point, to check the staged copy is representative.
    real_runs = []
    for _ in range(args.repeats):
        real_runs.append(time_dataset(
            input_pipeline.build_dataset(options(pattern), True), BATCH,
            args.batches))
    rows.append(("build_dataset (training)", real_runs))

    cores = os.cpu_count()
    load = (round(load_before, 2), round(os.getloadavg()[0], 2))
    print(f"Input pipeline, crop {CROP}x{CROP}, batch {BATCH}, "
          f"{IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG inputs, {cores} CPU cores "
          f"(shared machine, 1-minute load {load[0]} -> {load[1]}: best of "
          f"{args.repeats})")
    print(f"{'stage':<26}{'images/s best':>14}{'median':>10}")
    results = []
    for name, runs in rows:
        best, median = max(runs), statistics.median(runs)
        print(f"{name:<26}{best:>14.1f}{median:>10.1f}")
        results.append({"stage": name, "images_per_s_best": round(best, 2),
                        "images_per_s_median": round(median, 2),
                        "runs": [round(r, 2) for r in runs]})
    out = {
        "benchmark": "input_pipeline",
        "crop_size": [CROP, CROP], "batch_size": BATCH,
        "input_image_size": list(IMAGE_SIZE),
        "num_images": args.num_images,
        "augmentation": {"min_resize_value": CROP, "max_resize_value": CROP,
                         "min_scale_factor": 0.5, "max_scale_factor": 1.5,
                         "scale_factor_step_size": 0.1, "flip": 0.5},
        "max_thing_id": 128,
        "machine": {"cpu_count": cores, "load_average_1min": list(load),
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                    "tensorflow": tf.__version__},
        "results": results,
    }
    path = os.path.join(REPO_ROOT, "benchmarks", "results",
                        "input_pipeline.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(out, f, indent=1)
    os.replace(path + ".tmp", path)
    print(f"Wrote {path}")


if __name__ == "__main__":
    main()

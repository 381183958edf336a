r"""Speed of the panoptic-quality command and of the streaming TF statistics.

    python benchmarks/panoptic_quality.py [--images=200] [--repeats=3]

Makes COCO-sized synthetic ground truth and predictions (480x640, about 30
segments per image, crowd and void included) in COCO panoptic format in a
temporary folder, then times
  * the command's evaluation (max_deeplab_tf.evaluation.panoptic_quality.
    evaluate) with 1 worker and with all CPUs (at least 2); the PNG
    decoding and the per-image statistics run in the workers. Wall-clock
    seconds and the CPU seconds of the process and its workers are shown:
    on a busy machine (see the printed load average) the wall clock cannot
    improve, while equal CPU seconds show that the split costs nothing;
  * the streaming statistics (evaluation.streaming.panoptic_statistics) in a
    tf.function, batches of 8 images, on the same maps.
and checks that all of them give the same PQ. Times are the minimum over
--repeats runs. Prints a table and writes
benchmarks/results/panoptic_quality.json.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from max_deeplab_tf.data import dataset_info  # noqa: E402
from max_deeplab_tf.evaluation import coco_format  # noqa: E402
from max_deeplab_tf.evaluation import panoptic_quality  # noqa: E402
from max_deeplab_tf.evaluation import streaming  # noqa: E402

HEIGHT, WIDTH = 480, 640


def make_pair(rng, descriptor):
    things = list(descriptor.thing_class_ids)
    stuff = list(descriptor.stuff_class_ids)
    div = descriptor.label_divisor
    gt = np.zeros([HEIGHT, WIDTH], np.int64)
    for band in range(4):  # stuff bands
        gt[band * HEIGHT // 4:(band + 1) * HEIGHT // 4] = (
            rng.choice(stuff) * div)
    pred = gt.copy()
    for instance in range(1, 26):
        cls = int(rng.choice(things))
        h, w = rng.randint(10, 160), rng.randint(10, 200)
        y, x = rng.randint(0, HEIGHT - h), rng.randint(0, WIDTH - w)
        crowd = rng.rand() < 0.05
        gt[y:y + h, x:x + w] = cls * div + (0 if crowd else instance)
        if rng.rand() < 0.9:
            dy, dx = rng.randint(-8, 9, size=2)
            pcls = cls if rng.rand() < 0.85 else int(rng.choice(things))
            py, px = max(y + dy, 0), max(x + dx, 0)
            pred[py:py + h, px:px + w] = pcls * div + instance
    for _ in range(3):
        y, x = rng.randint(0, HEIGHT - 40), rng.randint(0, WIDTH - 40)
        gt[y:y + 30, x:x + 40] = descriptor.ignore_label * div
    return gt, pred


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    descriptor = dataset_info.get_dataset_descriptor("coco_panoptic")
    rng = np.random.RandomState(0)
    pairs = [make_pair(rng, descriptor) for _ in range(args.images)]
    directory = tempfile.mkdtemp(prefix="pq_bench_")
    gt_writer = coco_format.CocoPanopticWriter(
        f"{directory}/gt", descriptor, "gt.json", "png", ground_truth=True)
    pred_writer = coco_format.CocoPanopticWriter(
        f"{directory}/pred", descriptor, "pred.json", "png")
    for i, (gt, pred) in enumerate(pairs):
        gt_writer.add(i, gt)
        pred_writer.add(i, pred)
    files = (gt_writer.close(), gt_writer.png_dir, pred_writer.close(),
             pred_writer.png_dir)

    cpus = os.cpu_count() or 1
    rows = []
    results = {}
    cpu_seconds = {}

    def cpu_time():
        usage = [resource.getrusage(who) for who in (
            resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        return sum(u.ru_utime + u.ru_stime for u in usage)

    for workers in sorted({1, max(cpus, 2)}):
        times, cpu = [], []
        name = f"command, {workers} worker(s)"
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), cpu_time()
            results[name] = panoptic_quality.evaluate(*files, workers=workers)
            times.append(time.perf_counter() - start)
            cpu.append(cpu_time() - start_cpu)
        rows.append((name, min(times)))
        cpu_seconds[name] = min(cpu)

    metric_fn = tf.function(streaming.statistics_fn(descriptor))
    batches = [(np.stack([p[0] for p in pairs[i:i + 8]]).astype(np.int32),
                np.stack([p[1] for p in pairs[i:i + 8]]).astype(np.int32))
               for i in range(0, len(pairs), 8)]
    metric_fn(*batches[0])  # trace
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        total = None
        for gt, pred in batches:
            stats = {k: v.numpy() for k, v in metric_fn(gt, pred).items()}
            total = stats if total is None else {
                k: total[k] + stats[k] for k in stats}
        times.append(time.perf_counter() - start)
    results["streaming TF"] = streaming.result_from_statistics(total,
                                                               descriptor)
    rows.append(("streaming TF (batches of 8)", min(times)))

    pqs = {name: r["All"]["pq"] for name, r in results.items()}
    agree = max(pqs.values()) - min(pqs.values()) < 1e-6
    base = rows[0][1]
    print(f"{args.images} images {HEIGHT}x{WIDTH}, {cpus} CPU(s); "
          f"PQ {100 * next(iter(pqs.values())):.3f} "
          f"({'all agree' if agree else 'DISAGREE: ' + str(pqs)})")
    load = os.getloadavg()[0]
    print(f"load average during the run: {load:.1f} on {cpus} CPU(s); wall-"
          "clock speed-ups need idle CPUs, CPU seconds show the work itself")
    print(f"{'':32s} {'seconds':>8s} {'ms/image':>9s} {'speed-up':>9s} "
          f"{'CPU s':>7s}")
    for name, seconds in rows:
        cpu = cpu_seconds.get(name)
        print(f"{name:32s} {seconds:8.2f} {1000 * seconds / args.images:9.1f}"
              f" {base / seconds:9.2f} "
              + (f"{cpu:7.2f}" if cpu is not None else f"{'':>7s}"))
    os.makedirs(os.path.join(REPO_ROOT, "benchmarks", "results"),
                exist_ok=True)
    out = os.path.join(REPO_ROOT, "benchmarks", "results",
                       "panoptic_quality.json")
    with open(out, "w") as f:
        json.dump({"images": args.images, "size": [HEIGHT, WIDTH],
                   "cpus": cpus, "machine": platform.platform(),
                   "pq_agree": agree, "pq": pqs,
                   "load_average": load,
                   "seconds": {name: s for name, s in rows},
                   "cpu_seconds": cpu_seconds}, f, indent=1)
    print(f"wrote {out}")
    shutil.rmtree(directory, ignore_errors=True)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())

r"""The PQ command against the COCO panoptic API, side by side.

    python benchmarks/panoptic_quality.py --panopticapi_path=/tmp/panopticapi \
        --panopticapi_python=/tmp/pqapi-venv/bin/python \
        [--images=1000] [--rounds=3] [--workers=2] [--data_dir=DIR]

`--panopticapi_path` is a checkout of cocodataset/panopticapi (its code is
run, never copied here), `--panopticapi_python` the interpreter of a
virtualenv with numpy and pillow for it:

    git clone https://github.com/cocodataset/panopticapi /tmp/panopticapi
    python3 -m venv /tmp/pqapi-venv
    /tmp/pqapi-venv/bin/pip install numpy pillow

Makes `--images` synthetic COCO-format pairs of 640x480 ground truth and
prediction (4 stuff bands, 25 things with 5% crowd, void rectangles; the
prediction shifts, relabels and drops things), then times, as child
processes of this one, in alternating rounds (ours, panopticapi, ours,
panopticapi, ...):
  A. `python -m max_deeplab_tf.evaluation.panoptic_quality ... --workers=N`
  B. `panopticapi.evaluation.pq_compute(...)` (it starts one worker per CPU:
     cpu_count() workers, 2 on the 2-core machine the table was made on).
Each time is the wall clock of the whole command (interpreter start,
imports, reading, workers), beside the CPU seconds of that process tree and
the 1-minute load average before and after it: the machine is shared, so
the medians and the per-round ratios are reported, not a best case. Both
results must agree: PQ, SQ, RQ and N of All / Things / Stuff and the
per-class PQ, SQ, RQ of every category with a TP, FP or FN, to 1e-12.
Prints a table and writes benchmarks/results/panoptic_quality.json.
"""

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from max_deeplab_tf.evaluation import panoptic_quality  # noqa: E402

HEIGHT, WIDTH = 480, 640
THING_IDS = tuple(range(1, 81))
STUFF_IDS = tuple(range(92, 145))
# Written into the data folder once it is complete; a folder without it is
# made again.
DATA_MARKER = "benchmark_data.json"

# Runs panopticapi's own entry point and saves its result as JSON.
PANOPTICAPI_SNIPPET = """
import json, sys
from panopticapi.evaluation import pq_compute
result = pq_compute(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4])
with open(sys.argv[5], "w") as f:
    json.dump(result, f, default=float)
"""


def make_pair(rng):
    """One (ground truth, prediction) pair of label maps.

    Returns:
      gt, pred: int64 [HEIGHT, WIDTH] maps of (category id, instance) codes
        category * 1000 + instance; 0 is void.
      crowd: the set of ground-truth codes that are crowd regions.
    """
    gt = np.zeros([HEIGHT, WIDTH], np.int64)
    for band in range(4):
        gt[band * HEIGHT // 4:(band + 1) * HEIGHT // 4] = (
            int(rng.choice(STUFF_IDS)) * 1000)
    pred = gt.copy()
    crowd = set()
    for instance in range(1, 26):
        category = int(rng.choice(THING_IDS))
        h, w = rng.randint(10, 160), rng.randint(10, 200)
        y, x = rng.randint(0, HEIGHT - h), rng.randint(0, WIDTH - w)
        code = category * 1000 + instance
        if rng.rand() < 0.05:
            crowd.add(code)
        gt[y:y + h, x:x + w] = code
        if rng.rand() < 0.9:
            dy, dx = rng.randint(-8, 9, size=2)
            predicted = (category if rng.rand() < 0.85
                         else int(rng.choice(THING_IDS)))
            py, px = max(y + dy, 0), max(x + dx, 0)
            pred[py:py + h, px:px + w] = predicted * 1000 + instance
    for _ in range(3):
        y, x = rng.randint(0, HEIGHT - 40), rng.randint(0, WIDTH - 40)
        gt[y:y + 30, x:x + 40] = 0
    return gt, pred, crowd


def write_png_and_segments(codes, crowd, rng, path, ground_truth):
    """Writes one COCO panoptic PNG; returns its segments_info."""
    present, areas = np.unique(codes, return_counts=True)
    keep = present != 0
    present, areas = present[keep], areas[keep]
    # Random distinct segment ids in [1, 2^24), as COCO's colour-like ids.
    ids = rng.choice(np.arange(1, 256 ** 3, 977), size=len(present),
                     replace=False)
    lookup = np.zeros(len(present) + 1, np.int64)
    lookup[1:] = ids
    index = np.searchsorted(present, codes)
    index = np.where(codes == 0, 0, index + 1)
    Image.fromarray(panoptic_quality.id_to_rgb(lookup[index])).save(path)
    segments = []
    for seg_id, code, area in zip(ids.tolist(), present.tolist(),
                                  areas.tolist()):
        segment = {"id": seg_id, "category_id": code // 1000}
        if ground_truth:
            segment.update(iscrowd=int(code in crowd), area=area)
        segments.append(segment)
    return segments


def make_data(directory, images, seed=0):
    """Writes gt.json, gt/, pred.json, pred/ under `directory` (reused when
    a complete set of the same size is already there)."""
    marker = os.path.join(directory, DATA_MARKER)
    wanted = {"images": images, "seed": seed, "size": [HEIGHT, WIDTH]}
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f) == wanted:
                return
    rng = np.random.RandomState(seed)
    categories = ([{"id": c, "name": f"thing{c}", "isthing": 1}
                   for c in THING_IDS]
                  + [{"id": c, "name": f"stuff{c}", "isthing": 0}
                     for c in STUFF_IDS])
    data = {side: {"images": [], "annotations": [],
                   "categories": categories} for side in ("gt", "pred")}
    for side in data:
        os.makedirs(os.path.join(directory, side), exist_ok=True)
    for image_id in range(images):
        gt, pred, crowd = make_pair(rng)
        file_name = f"{image_id:012d}.png"
        for side, codes in (("gt", gt), ("pred", pred)):
            segments = write_png_and_segments(
                codes, crowd, rng, os.path.join(directory, side, file_name),
                ground_truth=side == "gt")
            data[side]["images"].append(
                {"id": image_id, "file_name": file_name.replace(".png",
                                                                ".jpg"),
                 "height": HEIGHT, "width": WIDTH})
            data[side]["annotations"].append(
                {"image_id": image_id, "file_name": file_name,
                 "segments_info": segments})
    for side, value in data.items():
        with open(os.path.join(directory, f"{side}.json"), "w") as f:
            json.dump(value, f)
    with open(marker, "w") as f:
        json.dump(wanted, f)


def children_cpu_seconds():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_run(command, env, timeout, cwd=None):
    """Runs `command` (in `cwd`); returns (wall s, CPU s of its process
    tree, load average before, after)."""
    load_before = os.getloadavg()[0]
    cpu = children_cpu_seconds()
    start = time.perf_counter()
    run = subprocess.run(command, env=env, capture_output=True, text=True,
                         timeout=timeout, cwd=cwd)
    wall = time.perf_counter() - start
    cpu = children_cpu_seconds() - cpu
    if run.returncode != 0:
        raise RuntimeError(f"{command[:3]} failed ({run.returncode}):\n"
                           f"{run.stdout[-2000:]}\n{run.stderr[-2000:]}")
    return wall, cpu, load_before, os.getloadavg()[0]


def compare(ours, theirs):
    """Largest absolute difference between the two results, over All /
    Things / Stuff (pq, sq, rq) and every category both list with a TP, FP
    or FN; raises if they list different categories or N."""
    worst = 0.0
    for group in ("All", "Things", "Stuff"):
        if ours[group]["n"] != theirs[group]["n"]:
            raise AssertionError(f"{group} n: {ours[group]['n']} != "
                                 f"{theirs[group]['n']}")
        for metric in ("pq", "sq", "rq"):
            worst = max(worst, abs(ours[group][metric]
                                   - theirs[group][metric]))
    # panopticapi lists every category, with zeros where it has no TP, FP or
    # FN; ours lists only those it averages.
    theirs_used = {c for c, v in theirs["per_class"].items()
                   if any(v.values())}
    if not theirs_used <= set(ours["per_class"]):
        raise AssertionError("per-class categories differ")
    for category, values in ours["per_class"].items():
        for metric in ("pq", "sq", "rq"):
            worst = max(worst, abs(values[metric]
                                   - theirs["per_class"][category][metric]))
    return worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--panopticapi_path", required=True,
                        help="A checkout of cocodataset/panopticapi.")
    parser.add_argument("--panopticapi_python", default=sys.executable,
                        help="Python with numpy and pillow to run it.")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3,
                        help="Alternating rounds (one run of each side).")
    parser.add_argument("--workers", type=int, default=2,
                        help="--workers of our command.")
    parser.add_argument("--data_dir", default=None,
                        help="Where to make (or reuse) the data; default: a "
                             "temporary folder, removed at the end.")
    parser.add_argument("--timeout", type=float, default=1800,
                        help="Seconds allowed for one run.")
    parser.add_argument("--output", default=os.path.join(
        REPO_ROOT, "benchmarks", "results", "panoptic_quality.json"))
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.panopticapi_path, "panopticapi",
                                       "evaluation.py")):
        parser.error(f"--panopticapi_path: {args.panopticapi_path} has no "
                     "panopticapi/evaluation.py; expected a checkout of "
                     "cocodataset/panopticapi")

    owned = args.data_dir is None
    directory = (os.path.abspath(args.data_dir) if args.data_dir
                 else tempfile.mkdtemp(prefix="pq_bench_"))
    work = tempfile.mkdtemp(prefix="pq_bench_out_")
    try:
        start = time.perf_counter()
        make_data(directory, args.images)
        print(f"data: {args.images} pairs of {WIDTH}x{HEIGHT} in {directory}"
              f" ({time.perf_counter() - start:.0f}s)", flush=True)
        files = [os.path.join(directory, name)
                 for name in ("gt.json", "pred.json", "gt", "pred")]

        env = dict(os.environ)
        env["PYTHONPATH"] = REPO_ROOT
        theirs_env = dict(os.environ)
        theirs_env["PYTHONPATH"] = os.path.abspath(args.panopticapi_path)
        runs = {"ours": [], "panopticapi": []}
        results = {}
        for round_index in range(args.rounds):
            for side in ("ours", "panopticapi"):
                out = os.path.join(work, f"{side}-{round_index}.json")
                if side == "ours":
                    command = [
                        sys.executable, "-m",
                        "max_deeplab_tf.evaluation.panoptic_quality",
                        "--gt_json", files[0], "--pred_json", files[1],
                        "--gt_dir", files[2], "--pred_dir", files[3],
                        "--workers", str(args.workers), "--output_json", out]
                    side_env = env
                    # `python -m` puts the working folder first on
                    # sys.path: run from this checkout so that its code is
                    # the one timed, wherever the script is started from.
                    side_cwd = REPO_ROOT
                else:
                    command = [args.panopticapi_python, "-c",
                               PANOPTICAPI_SNIPPET] + files + [out]
                    side_env = theirs_env
                    side_cwd = None
                wall, cpu, load_before, load_after = timed_run(
                    command, side_env, args.timeout, side_cwd)
                with open(out) as f:
                    results[side] = json.load(f)
                runs[side].append({"wall_s": wall, "cpu_s": cpu,
                                   "load_before": load_before,
                                   "load_after": load_after})
                print(f"round {round_index + 1} {side:12s} {wall:7.2f} s wall"
                      f" {cpu:7.2f} s CPU  load {load_before:.2f} -> "
                      f"{load_after:.2f}", flush=True)
        difference = compare(results["ours"], results["panopticapi"])
        same = difference <= 1e-12

        median = {side: statistics.median(r["wall_s"] for r in rs)
                  for side, rs in runs.items()}
        median_cpu = {side: statistics.median(r["cpu_s"] for r in rs)
                      for side, rs in runs.items()}
        ratios = [a["wall_s"] / b["wall_s"]
                  for a, b in zip(runs["ours"], runs["panopticapi"])]
        ratio = median["ours"] / median["panopticapi"]
        all_pq = results["ours"]["All"]
        print(f"PQ {100 * all_pq['pq']:.3f} SQ {100 * all_pq['sq']:.3f} "
              f"RQ {100 * all_pq['rq']:.3f}; largest difference to "
              f"panopticapi {difference:.1e} ({'same' if same else 'DIFFER'})")
        print(f"median wall: ours {median['ours']:.2f} s, panopticapi "
              f"{median['panopticapi']:.2f} s, ratio {ratio:.3f} (per round: "
              f"{', '.join(f'{r:.3f}' for r in ratios)}); median CPU s: ours "
              f"{median_cpu['ours']:.2f}, panopticapi "
              f"{median_cpu['panopticapi']:.2f}")
        report = {
            "benchmark": "PQ command vs COCO panopticapi pq_compute",
            "command": "python " + " ".join(
                [os.path.relpath(os.path.abspath(__file__), REPO_ROOT)]
                + (argv if argv is not None else sys.argv[1:])),
            "images": args.images, "size_wxh": [WIDTH, HEIGHT],
            "our_workers": args.workers,
            "panopticapi_workers": os.cpu_count(),
            "cpu_count": os.cpu_count(), "machine": platform.platform(),
            "python": platform.python_version(),
            "panopticapi_python": args.panopticapi_python,
            "rounds": runs, "median_wall_s": median,
            "median_cpu_s": median_cpu, "ratio_of_medians": ratio,
            "ratio_per_round": ratios,
            "largest_metric_difference": difference, "same_numbers": same,
            "pq": {g: results["ours"][g] for g in ("All", "Things",
                                                   "Stuff")},
        }
        os.makedirs(os.path.dirname(args.output), exist_ok=True)
        temporary = f"{args.output}.tmp-{os.getpid()}"
        with open(temporary, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(temporary, args.output)
        print(f"wrote {args.output}")
        return 0 if same else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if owned:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

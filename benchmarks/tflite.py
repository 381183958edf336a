r"""LiteRT (TFLite) export of the demo: PQ of each variant, agreement with
the SavedModel, latency of one image and file sizes.

    python benchmarks/tflite.py [--work_dir=.] [--model_dir=demo_output/model]
        [--rounds=5] [--calls=20]

1. Trains the demo (`python -m trainer.main --config_file=configs/demo.
   textproto`, in --work_dir, whose demo_output/ it uses) unless
   --model_dir already holds a checkpoint.
2. Exports it with the three LiteRT variants: `python -m trainer.main
   --mode=export --config_override='export_options { tflite_variants:
   [...] }'` (adds them to an existing version of the same step).
3. For the SavedModel and each .tflite file: `python -m
   max_deeplab_tf.predict` on the synthetic val split, then `python -m
   max_deeplab_tf.evaluation.panoptic_quality` (PQ, SQ, RQ), and, in
   process, the fraction of val pixels whose panoptic id equals the
   SavedModel's.
4. Latency of one val image (97x97, the crop size, so no resizing) through
   the SavedModel's serving_default signature and the LiteRT interpreter's
   signature runner (num_threads = CPU count), both with the post-processing
   inside: `--rounds` rounds alternating the sides (A B C D A B C D ...),
   each timing `--calls` calls; the median per call of each round and the
   1-minute load average at its start are kept.
5. File sizes: the SavedModel (saved_model.pb + variables/) and each
   .tflite file.

Writes benchmarks/results/tflite.json and prints a table.
"""

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO_ROOT, "benchmarks", "results")
DEMO_CONFIG = os.path.join(REPO_ROOT, "configs", "demo.textproto")
VARIANTS = ("float32", "float16", "int8")
SIDES = ("saved_model",) + VARIANTS


def _run(command, cwd):
    print("+", " ".join(command), flush=True)
    started = time.time()
    subprocess.run(command, check=True, cwd=cwd,
                   env=dict(os.environ, PYTHONPATH=REPO_ROOT))
    return time.time() - started


def _folder_bytes(folder):
    total = 0
    for parent, _, names in os.walk(folder):
        total += sum(os.path.getsize(os.path.join(parent, n)) for n in names)
    return total


def _model_paths(version):
    from max_deeplab_tf.export import tflite

    paths = {"saved_model": version}
    paths.update({v: tflite.tflite_path(version, v) for v in VARIANTS})
    return paths


def quality(paths, coco_dir, out_dir, work_dir):
    """PQ of each side on the val split (predict + the PQ command)."""
    gt_json = os.path.join(coco_dir, "annotations", "panoptic_val2017.json")
    results = {}
    for side, path in paths.items():
        predictions = os.path.join(out_dir, side)
        _run([sys.executable, "-m", "max_deeplab_tf.predict",
              f"--saved_model={path}",
              f"--images={os.path.join(coco_dir, 'val2017', '*.jpg')}",
              f"--output_dir={predictions}", f"--gt_json={gt_json}"],
             work_dir)
        pq_json = os.path.join(out_dir, f"pq_{side}.json")
        _run([sys.executable, "-m",
              "max_deeplab_tf.evaluation.panoptic_quality",
              f"--gt_json={gt_json}",
              f"--gt_dir={os.path.join(coco_dir, 'annotations', 'panoptic_val2017')}",
              f"--pred_json={os.path.join(predictions, 'panoptic.json')}",
              f"--pred_dir={os.path.join(predictions, 'panoptic')}",
              f"--output_json={pq_json}", "--overwrite"], work_dir)
        with open(pq_json) as f:
            pq = json.load(f)
        results[side] = {group: {k: pq[group][k] for k in ("pq", "sq", "rq")}
                         for group in ("All", "Things", "Stuff")}
    return results


def agreement(paths, images):
    """Fraction of val pixels whose panoptic id is the SavedModel's."""
    import numpy as np

    from max_deeplab_tf import Predictor

    reference = Predictor.from_saved_model(paths["saved_model"])
    want = [reference(image).panoptic for image in images]
    result = {}
    for variant in VARIANTS:
        predictor = Predictor.from_tflite(paths[variant])
        equal = sum(int((predictor(image).panoptic == w).sum())
                    for image, w in zip(images, want))
        result[variant] = equal / sum(w.size for w in want)
    segments = [len(np.unique(w)) for w in want]
    return result, {"min": min(segments), "mean": float(np.mean(segments))}


def latency(paths, image, rounds, calls):
    """Per round and side: median seconds per call; load average."""
    import numpy as np
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    served = tf.saved_model.load(paths["saved_model"]).signatures[
        "serving_default"]
    uint8 = tf.constant(image[None])
    float32 = image[None].astype(np.float32)
    calls_by_side = {"saved_model": lambda: served(images=uint8)}
    for variant in VARIANTS:
        runner = Interpreter(model_path=paths[variant],
                             num_threads=os.cpu_count()
                             ).get_signature_runner()
        calls_by_side[variant] = (lambda r=runner: r(images=float32))
    for call in calls_by_side.values():  # warm-up
        call()
        call()
    per_round = []
    for _ in range(rounds):
        row = {"load_average_1min": os.getloadavg()[0]}
        for side, call in calls_by_side.items():
            times = []
            for _ in range(calls):
                started = time.perf_counter()
                call()
                times.append(time.perf_counter() - started)
            row[side] = statistics.median(times)
        per_round.append(row)
    return per_round


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work_dir", default=".",
                        help="Folder of the demo's demo_output/.")
    parser.add_argument("--model_dir", default="demo_output/model",
                        help="The demo's model_dir (relative to work_dir).")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--output",
                        default=os.path.join(RESULTS, "tflite.json"))
    args = parser.parse_args()
    work_dir = os.path.abspath(args.work_dir)
    model_dir = os.path.join(work_dir, args.model_dir)
    coco_dir = os.path.join(work_dir, "demo_output", "synthetic_coco")
    out_dir = os.path.join(work_dir, "demo_output", "tflite_benchmark")
    record = {"load_average_start": os.getloadavg(), "cpu_count":
              os.cpu_count(), "timings_s": {}}

    if not glob.glob(os.path.join(model_dir, "ckpt-*.index")):
        record["timings_s"]["train"] = _run(
            [sys.executable, "-m", "trainer.main",
             f"--config_file={DEMO_CONFIG}", f"--model_dir={model_dir}"],
            work_dir)
    quoted = ", ".join(f'"{v}"' for v in VARIANTS)
    record["timings_s"]["export"] = _run(
        [sys.executable, "-m", "trainer.main", f"--config_file={DEMO_CONFIG}",
         f"--model_dir={model_dir}", "--mode=export",
         f"--config_override=export_options {{ tflite_variants: [{quoted}] }}"],
        work_dir)

    sys.path.insert(0, REPO_ROOT)
    from max_deeplab_tf import export
    from max_deeplab_tf.inference import predictor as predictor_lib

    version = export.resolve_saved_model(os.path.join(model_dir, "export"))
    paths = _model_paths(version)
    record["version"] = os.path.relpath(version, work_dir)
    record["bytes"] = {
        "saved_model": _folder_bytes(os.path.join(version, "variables"))
        + os.path.getsize(os.path.join(version, "saved_model.pb"))}
    record["bytes"].update({v: os.path.getsize(paths[v]) for v in VARIANTS})

    record["pq"] = quality(paths, coco_dir, out_dir, work_dir)
    images = [predictor_lib.read_image(p) for p in sorted(glob.glob(
        os.path.join(coco_dir, "val2017", "*.jpg")))]
    record["panoptic_agreement_with_saved_model"], record[
        "segments_per_image_saved_model"] = agreement(paths, images)
    record["latency_rounds"] = latency(paths, images[0], args.rounds,
                                       args.calls)
    record["latency_median_s"] = {
        side: statistics.median(r[side] for r in record["latency_rounds"])
        for side in SIDES}
    record["load_average_end"] = os.getloadavg()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")

    loads = [r["load_average_1min"] for r in record["latency_rounds"]]
    print(f"\n{len(images)} val images; latency: {args.rounds} rounds x "
          f"{args.calls} calls of one {images[0].shape[0]}x"
          f"{images[0].shape[1]} image, load average "
          f"{min(loads):.1f}-{max(loads):.1f}")
    print("| model | PQ | PQ things | PQ stuff | panoptic pixels = "
          "SavedModel | latency (median) | size |")
    print("|---|---|---|---|---|---|---|")
    for side in SIDES:
        pq = record["pq"][side]
        same = (1.0 if side == "saved_model" else
                record["panoptic_agreement_with_saved_model"][side])
        name = ("SavedModel" if side == "saved_model"
                else f"LiteRT {side}")
        print(f"| {name} | {100 * pq['All']['pq']:.2f} | "
              f"{100 * pq['Things']['pq']:.2f} | "
              f"{100 * pq['Stuff']['pq']:.2f} | {100 * same:.2f}% | "
              f"{1000 * record['latency_median_s'][side]:.1f} ms | "
              f"{record['bytes'][side] / 1e6:.2f} MB |")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

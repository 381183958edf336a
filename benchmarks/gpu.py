r"""MaX-DeepLab-S on a GPU: training throughput and model FLOP utilisation
per precision and XLA setting, inference latency and throughput, in one run
short enough for a lent GPU.

    python benchmarks/gpu.py [--crop=641] [--batch_sizes=48,32,16,8]
        [--precisions=float32,mixed_bfloat16,mixed_float16] [--xla=both]
        [--steps=10] [--inference_batches=1,16] [--budget_s=480]
        [--peak_tflops=NAME=VALUE,...]
        [--deeplab2_path=DIR --deeplab2_python=PY --deeplab2_batch=8]
        [--allow_cpu] [--output=JSON]

Each measurement is a fresh process. Training (`train_step.py --child`):
for each precision and XLA setting, the batch sizes are tried from the
largest down, and the first that fits (no out-of-memory error) is
measured: images/s and the device's peak memory. Model FLOP utilisation
(MFU) = 3 x forward FLOPs per image x images/s / the GPU's peak rate for
the precision (the usual convention: the backward pass costs twice the
forward). Forward FLOPs are counted once, on the float32 inference graph,
by TensorFlow's profiler plus the einsums it skips
(`max_deeplab_tf.tools.flops`). Peak rates are built in for the GPUs
below (dense, no sparsity; float32 runs as TF32 on these, TensorFlow's
default); give others with --peak_tflops. Inference: the model and its
post-processing in one tf.function, latency at batch 1 (median) and
throughput at the largest of --inference_batches. With --deeplab2_path,
`vs_deeplab2.py` then runs deeplab2 and ours at --deeplab2_batch on the
same device (one round). Settings that would start after --budget_s are
skipped and reported as skipped. Prints a table and writes
benchmarks/results/gpu.json. Without a GPU it stops with one line, unless
--allow_cpu (a smoke run of the same steps on the CPU).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO_ROOT, "benchmarks")
CONFIG = os.path.join(REPO_ROOT, "configs", "max_deeplab_s.textproto")

# Dense peak TFLOPS by precision: (bfloat16 / float16 tensor cores, TF32).
# NVIDIA's data sheets (SXM parts).
PEAK_TFLOPS = {
    "H200": {"mixed_bfloat16": 989.0, "mixed_float16": 989.0,
             "float32": 494.0},
    "H100": {"mixed_bfloat16": 989.0, "mixed_float16": 989.0,
             "float32": 494.0},
    "A100": {"mixed_bfloat16": 312.0, "mixed_float16": 312.0,
             "float32": 156.0},
}
# Lower-cased markers of an out-of-memory failure in a child's output
# (TensorFlow's ResourceExhaustedError, XLA's RESOURCE_EXHAUSTED).
OUT_OF_MEMORY = ("resourceexhausted", "resource_exhausted", "out of memory",
                 "oom when allocating")


def _config_overrides(crop):
    return [f"train_dataset_options {{ crop_size: {crop} crop_size: {crop} "
            "file_pattern: 'unused' }",
            f"eval_dataset_options {{ crop_size: {crop} crop_size: {crop} "
            "file_pattern: 'unused' }",
            "model_options { initial_checkpoint: '' }"]


def _build_model(crop, precision):
    import keras
    import max_deeplab_tf
    from max_deeplab_tf import model as model_lib

    keras.mixed_precision.set_global_policy(precision)
    config = max_deeplab_tf.load_experiment(CONFIG, _config_overrides(crop))
    model = max_deeplab_tf.build_model(config)
    model_lib.build_for_input_size(model, crop, crop)
    return config, model


def probe_child(args):
    """The device's name and the forward FLOPs of one image."""
    import tensorflow as tf
    from max_deeplab_tf.tools import flops

    gpus = tf.config.list_physical_devices("GPU")
    name = (tf.config.experimental.get_device_details(gpus[0]).get(
        "device_name", "GPU") if gpus else platform.processor() or "CPU")
    if not gpus and not args.allow_cpu:
        print("RESULT " + json.dumps({"device": name, "gpus": 0}))
        return
    _, model = _build_model(args.crop, "float32")
    counted = flops.model_forward_flops(model, [1, args.crop, args.crop, 3])
    print("RESULT " + json.dumps({"device": name, "gpus": len(gpus),
                                  "forward_flops": counted}))


def inference_child(args):
    """Forward and post-processing: latency at batch 1 and throughput at
    each of --inference_batches."""
    import numpy as np
    import tensorflow as tf
    from max_deeplab_tf import common
    from max_deeplab_tf.data import dataset_info
    from max_deeplab_tf.inference import PostProcessor

    config, model = _build_model(args.crop, args.precision)
    post = PostProcessor(config.evaluator_options,
                         dataset_info.get_dataset_descriptor(
                             config.train_dataset_options.dataset))

    @tf.function(jit_compile=args.xla == "on")
    def predict(images):
        return post(model(images, training=False))[common.PRED_PANOPTIC_KEY]

    rng = np.random.RandomState(0)
    results = {}
    for batch in [int(b) for b in args.inference_batches.split(",")]:
        images = tf.constant(rng.uniform(
            0, 255, (batch, args.crop, args.crop, 3)).astype(np.float32))
        start = time.perf_counter()
        predict(images).numpy()
        first = time.perf_counter() - start
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            predict(images).numpy()
            times.append(time.perf_counter() - start)
        median = statistics.median(times)
        results[str(batch)] = {"first_s": first, "median_s": median,
                               "images_per_s": batch / median}
    print("RESULT " + json.dumps({"precision": args.precision,
                                  "xla": args.xla, "batches": results}))


def _run(command, timeout):
    """(RESULT dict or None, error text or None) of a child process."""
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    try:
        out = subprocess.run(command, capture_output=True, text=True,
                             timeout=timeout, env=env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout} s"
    lines = [line for line in out.stdout.splitlines()
             if line.startswith("RESULT ")]
    if out.returncode != 0 or not lines:
        return None, (out.stderr or out.stdout)[-3000:]
    return json.loads(lines[-1][len("RESULT "):]), None


def _run_to_end(command, timeout):
    """None if the process exits with 0, else the end of its output."""
    try:
        out = subprocess.run(command, capture_output=True, text=True,
                             timeout=timeout, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout} s"
    return None if out.returncode == 0 else (out.stderr or out.stdout)[-3000:]


def _peak_tflops(device, precision, overrides):
    for name, value in overrides.items():
        if name.lower() in device.lower():
            return value
    for name, by_precision in PEAK_TFLOPS.items():
        if name.lower() in device.lower():
            return by_precision[precision]
    return None


def _train(args, precision, xla, forward_flops, peak):
    """The largest batch size that fits, measured; or why none was."""
    tried = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        result, error = _run(
            [sys.executable, os.path.join(BENCHMARKS, "train_step.py"),
             "--child", "--variant=max_deeplab_s", f"--xla={xla}",
             f"--crop={args.crop}", f"--batch_size={batch}",
             f"--steps={args.steps}", "--warmup=2",
             f"--precision={precision}"], args.timeout)
        if result is not None:
            result["batch_sizes_out_of_memory"] = tried
            if forward_flops and peak:
                achieved = 3 * forward_flops * result["images_per_s"]
                result["model_tflops_per_s"] = achieved / 1e12
                result["mfu"] = achieved / (peak * 1e12)
            return result
        if not any(marker in error.lower() for marker in OUT_OF_MEMORY):
            return {"error": error.strip().splitlines()[-1]
                    if error.strip() else "failed"}
        tried.append(batch)
    return {"error": f"out of memory at every batch size {tried}"}


def _each_setting(precisions, settings, over_budget, measure):
    """measure(precision, xla) for each pair, in order, as rows; those that
    would start after the budget is spent are marked skipped."""
    rows = []
    for precision in precisions:
        for xla in settings:
            row = {"precision": precision, "xla": xla}
            if over_budget():
                row["skipped"] = "budget spent"
            else:
                row.update(measure(precision, xla))
            rows.append(row)
    return rows


def _print_table(report):
    print(f"device: {report['device']}; forward FLOPs per "
          f"{report['crop']}x{report['crop']} image: "
          f"{(report['forward_flops'] or 0) / 1e9:.1f} G")
    header = (f"{'precision':<16}{'xla':<5}{'batch':>6}{'images/s':>10}"
              f"{'MFU':>7}{'peak MiB':>10}{'first s':>9}")
    print(header)
    print("-" * len(header))
    for row in report["training"]:
        if "error" in row or "skipped" in row:
            print(f"{row['precision']:<16}{row['xla']:<5} "
                  f"{row.get('error') or row['skipped']}")
            continue
        mfu = f"{row['mfu']:.1%}" if row.get("mfu") is not None else "-"
        device_mib = row.get("device_peak_mib") or row["peak_rss_mib"]
        print(f"{row['precision']:<16}{row['xla']:<5}{row['batch_size']:>6}"
              f"{row['images_per_s']:>10.2f}{mfu:>7}{device_mib:>10.0f}"
              f"{row['first_step_s']:>9.1f}")
    print("inference (forward + post-processing):")
    for row in report["inference"]:
        if "error" in row or "skipped" in row:
            print(f"  {row['precision']:<16}{row['xla']:<5} "
                  f"{row.get('error') or row['skipped']}")
            continue
        cells = ", ".join(
            f"batch {b}: {r['median_s'] * 1e3:.1f} ms, "
            f"{r['images_per_s']:.1f} images/s"
            for b, r in row["batches"].items())
        print(f"  {row['precision']:<16}{row['xla']:<5}{cells}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--crop", type=int, default=641)
    parser.add_argument("--batch_sizes", default="48,32,16,8",
                        help="tried from the first (largest) down")
    parser.add_argument("--precisions",
                        default="float32,mixed_bfloat16,mixed_float16")
    parser.add_argument("--xla", choices=["on", "off", "both"],
                        default="both")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--inference_batches", default="1,16")
    parser.add_argument("--budget_s", type=float, default=480,
                        help="start no new setting after this many seconds")
    parser.add_argument("--timeout", type=int, default=300,
                        help="seconds per child process")
    parser.add_argument("--peak_tflops", default="",
                        help="NAME=TFLOPS,...: peak rates for devices whose "
                        "name contains NAME (all precisions)")
    parser.add_argument("--deeplab2_path")
    parser.add_argument("--deeplab2_python", default=sys.executable)
    parser.add_argument("--deeplab2_batch", type=int, default=8)
    parser.add_argument("--allow_cpu", action="store_true",
                        help="run without a GPU (a smoke run)")
    parser.add_argument("--output", default=os.path.join(
        BENCHMARKS, "results", "gpu.json"))
    parser.add_argument("--child", choices=["probe", "inference"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="float32",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "probe":
        probe_child(args)
        return 0
    if args.child == "inference":
        inference_child(args)
        return 0

    started = time.perf_counter()
    overrides = {}
    for item in filter(None, args.peak_tflops.split(",")):
        name, _, value = item.partition("=")
        overrides[name] = float(value)
    script = [sys.executable, os.path.abspath(__file__),
              f"--crop={args.crop}", f"--steps={args.steps}",
              f"--inference_batches={args.inference_batches}"]
    probe, error = _run(
        script + ["--child=probe"] + (["--allow_cpu"] if args.allow_cpu
                                      else []), args.timeout)
    if probe is None:
        print(f"error: the probe process failed: {error.strip()[-500:]}",
              file=sys.stderr)
        return 1
    if not probe["gpus"] and not args.allow_cpu:
        print("error: no GPU visible to TensorFlow; this script measures a "
              "GPU (--allow_cpu runs its steps on the CPU as a smoke run)",
              file=sys.stderr)
        return 1
    device = probe["device"]
    forward_flops = probe["forward_flops"]["total"]
    settings = ["off", "on"] if args.xla == "both" else [args.xla]
    precisions = args.precisions.split(",")
    report = {"benchmark": "gpu", "device": device, "crop": args.crop,
              "forward_flops": forward_flops,
              "forward_flops_by_counter": probe["forward_flops"],
              "command": " ".join(sys.argv)}

    def over_budget():
        return time.perf_counter() - started > args.budget_s

    def train(precision, xla):
        peak = _peak_tflops(device, precision, overrides)
        return dict(_train(args, precision, xla, forward_flops, peak),
                    peak_tflops=peak)

    def infer(precision, xla):
        result, error = _run(script + [
            "--child=inference", f"--precision={precision}", f"--xla={xla}"],
            args.timeout)
        return result or {"error": error.strip().splitlines()[-1]
                          if error.strip() else "failed"}

    report["training"] = _each_setting(precisions, settings, over_budget,
                                       train)
    report["inference"] = _each_setting(precisions, settings, over_budget,
                                        infer)
    if args.deeplab2_path and not over_budget():
        output = args.output + ".deeplab2.json"
        error = _run_to_end([
            sys.executable, os.path.join(BENCHMARKS, "vs_deeplab2.py"),
            f"--deeplab2_path={args.deeplab2_path}",
            f"--deeplab2_python={args.deeplab2_python}",
            "--work=train_step,train_step_xla,forward641", "--rounds=1",
            f"--steps={args.steps}", f"--crop={args.crop}",
            f"--batch_size={args.deeplab2_batch}", f"--output={output}"],
            args.timeout * 4)
        report["deeplab2"] = ({"output": output} if error is None
                              else {"error": error.strip()[-500:]})
    report["seconds"] = time.perf_counter() - started
    _print_table(report)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from max_deeplab_tf.training import files  # imports TensorFlow
    files.write_json(args.output, report)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

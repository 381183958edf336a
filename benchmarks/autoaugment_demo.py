r"""The demo's PQ and time with AutoAugment off (A) and on (B).

    nice -n 5 python benchmarks/autoaugment_demo.py [--rounds=2]
        [--steps=N] [--snapshot] [--smoke] [--keep] [--output=FILE]

Runs README.md's demo job,

    python -m trainer.main --config_file=configs/demo.textproto

as a child process, alternating A B A B ... for --rounds rounds, B adding

    --config_override='train_dataset_options.augmentations {
        autoaugment_policy_name: "simple_classification_policy" }'

(deeplab2's policy, as configs/max_deeplab_l.textproto uses it; the demo's
random scale and flip stay as they are). Every run gets a fresh model_dir in
one temporary folder that the script makes and deletes at the end (--keep
keeps it). The synthetic dataset (deterministic, seed 0) is made once in that
folder before the timed runs, so no timed run pays for it: a check in a
child process builds the training SampleGenerator from the overridden config, confirms that
AutoAugment is set (and absent without the override and in evaluation) and
that the policy changes images, then makes the dataset. --snapshot runs the
committed HEAD (git archive into the temporary folder) instead of the
working tree, so that edits made to the working tree meanwhile do not reach
the runs.

Per run it records: the total wall time of the child, its CPU time (user +
system, from getrusage; less sensitive than wall time to other work on a
shared machine), the training time (from
the child's "Experiment ..." line to its last "step N/N" line, model building
and tf.function tracing included), the median steps/s of the logged loops
after the first, the evaluation time, PQ/SQ/RQ (All/Things/Stuff) from
MODEL_DIR/eval/metrics-latest.json, and the 1-minute load average
(/proc/loadavg) at its start and end. Prints a table and writes
benchmarks/results/autoaugment_demo.json. --smoke runs only the check and a
2-step run of B and A (train, eval, export; nothing written to
benchmarks/results unless --output is given).
"""

import argparse
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO_ROOT, "configs", "demo.textproto")
POLICY = "simple_classification_policy"
AUTOAUGMENT_OVERRIDE = (
    f'train_dataset_options.augmentations {{ autoaugment_policy_name: '
    f'"{POLICY}" }}')
RESULT = os.path.join(REPO_ROOT, "benchmarks", "results",
                      "autoaugment_demo.json")

STEP_LINE = re.compile(r"step (\d+)/(\d+) \|.*\| ([0-9.]+) steps/s")
EXPERIMENT_LINE = re.compile(r"Experiment \S+, mode")
EVAL_LINE = re.compile(r"eval at step (\d+) on (\d+) images")
TRAINED_LINE = re.compile(r"Trained to step (\d+) in ([0-9.]+) s")

# Run in a child process: the override sets the training generator's
# AutoAugment (and only with it), and the policy changes images.
CHECK = r"""
import sys
import max_deeplab_tf
print("package:", max_deeplab_tf.__file__)
import numpy as np
import tensorflow as tf
from max_deeplab_tf.config import load_experiment
from max_deeplab_tf.data import autoaugment, input_pipeline
overrides = [o for o in sys.argv[2:]]
on = load_experiment(sys.argv[1], overrides, mode="train_and_eval")
off = load_experiment(sys.argv[1], overrides[1:], mode="train_and_eval")
aug_on = input_pipeline.generator_from_options(
    on.train_dataset_options, is_training=True)._autoaugment
aug_off = input_pipeline.generator_from_options(
    off.train_dataset_options, is_training=True)._autoaugment
aug_eval = input_pipeline.generator_from_options(
    on.eval_dataset_options, is_training=False)._autoaugment
assert aug_on is not None, "override did not enable AutoAugment"
assert aug_off is None, "AutoAugment set without the override"
assert aug_eval is None, "AutoAugment set in evaluation"
assert aug_on.policy == tuple(tuple(tuple(op) for op in sub) for sub in
                              autoaugment.POLICIES[%r]), aug_on.policy
print("augmentations (on):",
      str(on.train_dataset_options.augmentations).replace("\n", "; "))
tf.random.set_seed(0)
rng = np.random.default_rng(0)
# Integer-valued: AutoAugment truncates a float image to uint8 first, which
# alone would change a non-integer one.
image = tf.constant(rng.integers(0, 256, (97, 97, 3)).astype("float32"))
label = tf.zeros((97, 97), tf.int32)
changed = 0
for _ in range(200):
    out, out_label = aug_on(image, label)
    changed += int(not np.array_equal(out.numpy(), image.numpy()))
# One of 5 sub-policies per image, each op with its probability: an image is
# changed with probability (0.52 + 0.2 + 0.36 + 0.68 + 0.36) / 5 = 0.424.
print(f"AutoAugment check: policy {len(aug_on.policy)} sub-policies, "
      f"changed {changed}/200 images (expected about 85)")
assert 0 < changed < 200, changed
# Makes the synthetic dataset (deterministic, seed 0) before the timed runs.
from trainer import library_hooks
library_hooks.prepare_synthetic_data(off)
print("synthetic dataset:", off.trainer_options.synthetic_data.shard_dir)
""" % POLICY


def load1() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def child_env(source, **extra):
    env = dict(os.environ, PYTHONPATH=source, **extra)
    return env


def run_check(source, overrides):
    started = time.time()
    proc = subprocess.run(
        [sys.executable, "-c", CHECK, config_path(source),
         AUTOAUGMENT_OVERRIDE, *overrides], cwd=source, capture_output=True,
        text=True, env=child_env(source, TF_CPP_MIN_LOG_LEVEL="2"))
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout + proc.stderr[-4000:])
        raise SystemExit("AutoAugment check failed")
    for line in lines:
        print(f"  {line}", flush=True)
    return {"lines": lines, "seconds": time.time() - started}


def config_path(source):
    return os.path.join(source, "configs", "demo.textproto")


def snapshot_head(root):
    """git archive HEAD into ROOT/source; returns (path, commit)."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT,
                            capture_output=True, text=True,
                            check=True).stdout.strip()
    source = os.path.join(root, "source")
    os.makedirs(source)
    archive = subprocess.Popen(["git", "archive", commit], cwd=REPO_ROOT,
                               stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", source], stdin=archive.stdout,
                   check=True)
    archive.stdout.close()
    if archive.wait() != 0:
        raise SystemExit("git archive failed")
    return source, commit


def run_demo(name, autoaugment_on, model_dir, data_overrides, steps,
             log_path, source):
    """One demo run as a child process; returns its record."""
    command = [sys.executable, "-m", "trainer.main",
               f"--config_file={config_path(source)}",
               f"--model_dir={model_dir}"]
    overrides = list(data_overrides)
    if steps:
        overrides.append(
            f"trainer_options.solver_options.training_number_of_steps: "
            f"{steps}")
    if autoaugment_on:
        overrides.append(AUTOAUGMENT_OVERRIDE)
    command += [f"--config_override={o}" for o in overrides]
    record = {"run": name, "autoaugment": autoaugment_on,
              "overrides": overrides, "load1_start": load1(),
              "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                           time.gmtime())}
    print(f"[{record['started_utc']}] run {name} (AutoAugment "
          f"{'on' if autoaugment_on else 'off'}), load "
          f"{record['load1_start']:.2f}", flush=True)
    arrivals = {}
    steps_per_s = []
    last_step = None
    usage_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with open(log_path, "w", buffering=1) as log:
        proc = subprocess.Popen(
            command, cwd=source, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1,
            env=child_env(source, PYTHONUNBUFFERED="1"))
        for line in proc.stdout:
            now = time.monotonic() - started
            log.write(f"{now:9.2f} {line}")
            if EXPERIMENT_LINE.search(line) and "experiment" not in arrivals:
                arrivals["experiment"] = now
            match = STEP_LINE.search(line)
            if match:
                last_step = int(match.group(1))
                steps_per_s.append(float(match.group(3)))
                arrivals.setdefault("first_step_log", now)
                if match.group(1) == match.group(2):
                    arrivals["last_step"] = now
            match = EVAL_LINE.search(line)
            if match:
                arrivals["eval"] = now
            match = TRAINED_LINE.search(line)
            if match:
                record["trained_log_s"] = float(match.group(2))
        returncode = proc.wait()
    record["total_s"] = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the child (user + system): less sensitive than wall
    # time to what else runs on a shared machine.
    record["cpu_s"] = ((usage.ru_utime - usage_before.ru_utime) +
                       (usage.ru_stime - usage_before.ru_stime))
    record["load1_end"] = load1()
    record["returncode"] = returncode
    record["last_step"] = last_step
    if returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        print(tail, file=sys.stderr)
        raise SystemExit(f"run {name} failed with exit code {returncode}")
    record["arrivals_s"] = arrivals
    if "experiment" in arrivals and "last_step" in arrivals:
        record["train_s"] = arrivals["last_step"] - arrivals["experiment"]
    if "last_step" in arrivals and "eval" in arrivals:
        record["eval_s"] = arrivals["eval"] - arrivals["last_step"]
    # The first logged loop includes tracing; the rest are steady state.
    steady = steps_per_s[1:] or steps_per_s
    record["steps_per_s_median"] = (statistics.median(steady)
                                    if steady else None)
    metrics_path = os.path.join(model_dir, "eval", "metrics-latest.json")
    with open(metrics_path) as f:
        metrics = json.load(f)
    record["metrics"] = metrics
    record["pq"] = {
        group: {k: metrics[group][k] for k in ("pq", "sq", "rq")
                if k in metrics[group]}
        for group in ("All", "Things", "Stuff") if group in metrics}
    print(f"  {name}: {record['total_s']:.0f} s total, train "
          f"{record.get('train_s', float('nan')):.0f} s, "
          f"{record['steps_per_s_median'] or float('nan'):.2f} steps/s, "
          f"PQ {100 * record['pq']['All']['pq']:.2f}, load "
          f"{record['load1_start']:.2f} -> {record['load1_end']:.2f}",
          flush=True)
    return record


def pct(x):
    return f"{100 * x:6.2f}"


def summarize(runs):
    lines = []
    header = (f"{'run':<4} {'AA':<4} {'PQ':>6} {'SQ':>6} {'RQ':>6} "
              f"{'PQth':>6} {'PQst':>6} {'train s':>8} {'total s':>8} "
              f"{'steps/s':>7} {'CPU s':>7} {'load':>11}")
    lines.append(header)
    for r in runs:
        pq = r["pq"]
        lines.append(
            f"{r['run']:<4} {'on' if r['autoaugment'] else 'off':<4} "
            f"{pct(pq['All']['pq'])} {pct(pq['All']['sq'])} "
            f"{pct(pq['All']['rq'])} {pct(pq['Things']['pq'])} "
            f"{pct(pq['Stuff']['pq'])} {r.get('train_s', float('nan')):8.0f} "
            f"{r['total_s']:8.0f} {r['steps_per_s_median'] or 0:7.2f} "
            f"{r['cpu_s']:7.0f} "
            f"{r['load1_start']:5.2f}-{r['load1_end']:5.2f}")
    summary = {}
    for key, on in (("off", False), ("on", True)):
        group = [r for r in runs if r["autoaugment"] == on]
        if not group:
            continue
        pqs = [r["pq"]["All"]["pq"] for r in group]
        summary[key] = {
            "runs": len(group),
            "pq": pqs,
            "pq_mean": statistics.mean(pqs),
            "pq_spread": max(pqs) - min(pqs),
            "pq_things_mean": statistics.mean(
                r["pq"]["Things"]["pq"] for r in group),
            "pq_stuff_mean": statistics.mean(
                r["pq"]["Stuff"]["pq"] for r in group),
            "train_s_median": statistics.median(
                r["train_s"] for r in group),
            "total_s_median": statistics.median(r["total_s"] for r in group),
            "cpu_s_median": statistics.median(r["cpu_s"] for r in group),
            "steps_per_s_median": statistics.median(
                r["steps_per_s_median"] for r in group),
        }
    if "off" in summary and "on" in summary:
        for key in ("train_s_median", "total_s_median", "cpu_s_median"):
            summary[f"ratio_on_off_{key}"] = (summary["on"][key] /
                                              summary["off"][key])
        summary["ratio_on_off_steps_per_s"] = (
            summary["on"]["steps_per_s_median"] /
            summary["off"]["steps_per_s_median"])
        lines.append("")
        for key in ("off", "on"):
            s = summary[key]
            lines.append(
                f"AutoAugment {key:>3}: PQ {' '.join(pct(p) for p in s['pq'])}"
                f" (mean {100 * s['pq_mean']:.2f}, spread "
                f"{100 * s['pq_spread']:.2f}), median train "
                f"{s['train_s_median']:.0f} s, total "
                f"{s['total_s_median']:.0f} s, CPU {s['cpu_s_median']:.0f} s, "
                f"{s['steps_per_s_median']:.2f} steps/s")
        lines.append(
            f"time on/off: train x{summary['ratio_on_off_train_s_median']:.3f}"
            f", total x{summary['ratio_on_off_total_s_median']:.3f}, "
            f"CPU x{summary['ratio_on_off_cpu_s_median']:.3f}, "
            f"steps/s x{summary['ratio_on_off_steps_per_s']:.3f}")
    return lines, summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=0,
                        help="training steps (0: the demo's 1,500)")
    parser.add_argument("--smoke", action="store_true",
                        help="only the check and a 2-step run of A and B")
    parser.add_argument("--snapshot", action="store_true",
                        help="run the committed HEAD (git archive into the "
                             "temporary folder) instead of the working tree, "
                             "so that edits made during the runs do not "
                             "reach them")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary folder (logs, model_dirs)")
    parser.add_argument("--output", default=None,
                        help=f"result JSON (default {RESULT}; none with "
                             "--smoke)")
    args = parser.parse_args()

    root = tempfile.mkdtemp(prefix="autoaugment_demo_")
    print(f"temporary folder {root}", flush=True)
    source, commit = REPO_ROOT, None
    if args.snapshot:
        source, commit = snapshot_head(root)
        print(f"running HEAD {commit} from {source}", flush=True)
    data = os.path.join(root, "data")
    data_overrides = [
        f'trainer_options.synthetic_data.coco_dir: "{data}/synthetic_coco"',
        f'trainer_options.synthetic_data.shard_dir: "{data}/shards"',
        f'train_dataset_options.file_pattern: "{data}/shards/train-*.tfrecord"',
        f'eval_dataset_options.file_pattern: "{data}/shards/val-*.tfrecord"',
    ]
    result = {
        "benchmark": "autoaugment_demo",
        "command": [sys.executable, "-m", "trainer.main",
                    "--config_file=configs/demo.textproto",
                    "--model_dir=TMP/run_NAME"]
                   + [f"--config_override={o}" for o in data_overrides],
        "autoaugment_override": AUTOAUGMENT_OVERRIDE,
        "source": "git HEAD snapshot" if commit else "working tree",
        "commit": commit,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "nice": os.nice(0),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load1_start": load1(),
    }
    try:
        print("checking that the override enables AutoAugment ...",
              flush=True)
        result["check"] = run_check(source, data_overrides)
        if args.smoke:
            # Both variants run end to end (train, eval, export).
            result["smoke"] = [
                run_demo(name, on, os.path.join(root, f"run_{name}"),
                         data_overrides, 2,
                         os.path.join(root, f"run_{name}.log"), source)
                for name, on in (("sB", True), ("sA", False))]
            if args.output:
                with open(args.output, "w") as f:
                    json.dump(result, f, indent=1)
            return
        runs = []
        for index in range(args.rounds):
            for letter, on in (("A", False), ("B", True)):
                name = f"{letter}{index + 1}"
                runs.append(run_demo(
                    name, on, os.path.join(root, f"run_{name}"),
                    data_overrides, args.steps,
                    os.path.join(root, f"run_{name}.log"), source))
                result["runs"] = runs
                lines, result["summary"] = summarize(runs)
                result["load1_end"] = load1()
                result["finished_utc"] = time.strftime(
                    "%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                # Written after every run, so a cut-short session keeps
                # what it measured.
                output = args.output or RESULT
                os.makedirs(os.path.dirname(output), exist_ok=True)
                with open(output, "w") as f:
                    json.dump(result, f, indent=1)
        print()
        print("\n".join(lines))
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

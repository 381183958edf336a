r"""MaX-DeepLab-S against deeplab2, side by side (issue 14).

    python benchmarks/vs_deeplab2.py --deeplab2_path=/tmp/dl2src/deeplab2 \
        --deeplab2_python=/tmp/dl2-venv/bin/python [--rounds=2] [--steps=3] \
        [--work=train_step,train_step_xla,first_step,forward641,memory]

`--deeplab2_path` is a checkout of google-research/deeplab2 (its code is run,
never copied here) with its protos compiled, `--deeplab2_python` the
interpreter of a virtualenv with TensorFlow 2.20 and tf-keras for it (see
benchmarks/README.md). deeplab2 runs in `benchmarks/deeplab2_worker.py`,
ours in this file (`--child`); each measurement is a fresh process.

Both sides build MaX-DeepLab-S from their own config
(configs/max_deeplab_s.textproto here, deeplab2's
configs/coco/max_deeplab/max_deeplab_s_os16_res641_400k.textproto there),
77,756,942 trainable parameters each, with the 0.1x backbone learning rate,
and see the same synthetic batch (benchmarks/train_step.py's
`synthetic_batch`, written once to an .npz that both read).

Work:
  train_step      train step at --crop (129), batch --batch_size (2), all
                  losses; ours with XLA off. Per process: first step (trace,
                  graph optimisation and the first run) then the median of
                  --steps steps, each synchronised.
  train_step_xla  ours with `use_xla: true` (TrainStep(jit_compile=True))
                  against the same deeplab2 processes (deeplab2's trainer
                  has no XLA switch for its step).
  first_step      the first-step figures of the train_step processes.
  memory          peak resident set size (ru_maxrss) of the train_step
                  processes.
  forward641      inference on one 641x641 image: the model only, and model
                  plus panoptic post-processing (deeplab2: its eval path;
                  ours: model + inference.PostProcessor). Also the float32
                  floor: the FLOPs of our fetched forward pass at the best
                  rate of a 2048x2048 matmul in the same process, against
                  deeplab2's forward pass (row forward641_float32_floor).
The train processes of a round run deeplab2, ours (XLA off), ours (XLA on);
the next round reverses the order (A B C, C B A, ...) so that a load change
hits both sides alike; forward641 processes alternate the same way. The
1-minute load average is recorded before and after every process. Ratios
are ours / deeplab2, per round and of the medians.

Writes benchmarks/results/vs_deeplab2.json.
"""

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

PROCESS_START = time.perf_counter()
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH_DIR = os.path.join(REPO_ROOT, "benchmarks")
OUR_CONFIG = os.path.join(REPO_ROOT, "configs", "max_deeplab_s.textproto")
DEEPLAB2_CONFIG = os.path.join(
    "configs", "coco", "max_deeplab", "max_deeplab_s_os16_res641_400k.textproto")
WORKS = ("train_step", "train_step_xla", "first_step", "forward641", "memory")


# --------------------------------------------------------------------------
# Ours (run with --child in this project's virtualenv).

def _role_to_ours():
    from max_deeplab_tf import common
    return {
        "image": common.IMAGE,
        "semantic": common.GT_SEMANTIC_KEY,
        "panoptic": common.GT_PANOPTIC_KEY,
        "thing_id_mask": common.GT_THING_ID_MASK_KEY,
        "thing_id_class": common.GT_THING_ID_CLASS_KEY,
        "semantic_loss_weight": common.SEMANTIC_LOSS_WEIGHT_KEY,
    }


def _timed_calls(fn, arg, steps):
    """(first call's seconds, the next `steps` calls' seconds): the worker's
    timing, so that both sides are timed alike."""
    from deeplab2_worker import timed_calls  # imports nothing of deeplab2

    return timed_calls(fn, arg, steps)


def build_ours(work, crop, batch_size, xla):
    """Model, and for work='train' the trainer's TrainStep, as
    trainer/train_lib.py builds them (backbone multiplier included)."""
    import max_deeplab_tf
    from max_deeplab_tf import losses
    from max_deeplab_tf import model as model_lib
    from max_deeplab_tf import optimizers
    from max_deeplab_tf.data import dataset_info
    from max_deeplab_tf.training import train_step as train_step_lib
    from trainer import train_lib

    overrides = [
        f"eval_dataset_options {{ crop_size: {crop} crop_size: {crop} "
        "file_pattern: 'unused' }",
        "model_options { initial_checkpoint: '' }"]
    if work == "train":
        overrides.append(
            f"train_dataset_options {{ crop_size: {crop} crop_size: {crop} "
            f"batch_size: {batch_size} file_pattern: 'unused' }}")
    else:
        overrides.append(
            f"train_dataset_options {{ crop_size: {crop} crop_size: {crop} "
            "file_pattern: 'unused' }")
    config = max_deeplab_tf.load_experiment(OUR_CONFIG, overrides)
    descriptor = dataset_info.get_dataset_descriptor(
        config.train_dataset_options.dataset)
    model = max_deeplab_tf.build_model(config)
    model_lib.build_for_input_size(model, crop, crop)  # as train_lib
    parts = {"config": config, "descriptor": descriptor, "model": model}
    if work != "train":
        return parts
    solver = config.trainer_options.solver_options
    loss = losses.MaXDeepLabLoss(config.trainer_options.loss_options,
                                 descriptor)
    is_backbone = (train_lib.default_is_backbone(model)
                   if solver.backbone_learning_rate_multiplier != 1.0
                   else None)
    model_optimizer = optimizers.ModelOptimizer(
        solver, model.trainable_variables, is_backbone=is_backbone,
        gradients_aggregated=True)
    model_optimizer.build()
    parts["step"] = train_step_lib.TrainStep(
        model, loss, model_optimizer, batch_size,
        mixed_precision_policy=config.trainer_options.mixed_precision_policy
        or "float32",
        max_consecutive_nonfinite_steps=(
            config.trainer_options.max_consecutive_nonfinite_steps),
        jit_compile=xla)
    parts["backbone_variables"] = model_optimizer.num_backbone_variables
    return parts


def child(args):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    from max_deeplab_tf import cli
    # As `trainer.main` starts: TensorFlow and orbit imported without
    # Keras's optional packages.
    with cli.without_optional_keras_packages():
        import orbit  # noqa: F401  pylint: disable=unused-import
        import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port
    import max_deeplab_tf  # noqa: F401
    from max_deeplab_tf import common
    from max_deeplab_tf.inference import PostProcessor
    import_s = time.perf_counter() - PROCESS_START

    data = np.load(args.batch)
    strategy = tf.distribute.get_strategy()
    start = time.perf_counter()
    work = args.child
    parts = build_ours(work, args.crop, args.batch_size, args.xla == "on")
    model = parts["model"]
    result = {"side": "ours", "work": work, "xla": args.xla,
              "parameters": int(sum(np.prod(v.shape)
                                    for v in model.trainable_variables)),
              "tf_version": tf.__version__, "import_s": import_s,
              "onednn": _pywrap_util_port.IsMklEnabled()}
    if work == "train":
        step = parts["step"]
        batch = {key: tf.constant(data[role])
                 for role, key in _role_to_ours().items()}

        @tf.function
        def train_step(inputs):
            return strategy.run(step.replica_step, args=(inputs,))[
                common.TOTAL_LOSS]

        result["build_s"] = time.perf_counter() - start
        # As the trainer calls it (grappler off on a CPU-only process).
        with step.graph_optimizer_scope():
            first, times = _timed_calls(train_step, batch, args.steps)
            result.update({
                "crop": args.crop, "batch_size": args.batch_size,
                "first_step_s": first, "step_times_s": times,
                "step_s": statistics.median(times),
                "loss": float(train_step(batch)),
                "backbone_variables": parts["backbone_variables"],
                "graph_optimizer": step.optimize_graph})
            if args.tf_profile:
                # A TensorFlow profiler trace of --steps more steps (for
                # finding where the time goes; not used by the comparison).
                tf.profiler.experimental.start(args.tf_profile)
                for _ in range(args.steps):
                    float(train_step(batch))
                tf.profiler.experimental.stop()
    else:
        image = tf.constant(data["image641"])
        post = PostProcessor(parts["config"].evaluator_options,
                             parts["descriptor"])

        @tf.function
        def forward(images):
            outputs = model(images, training=False)
            return {k: outputs[k] for k in (
                common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
                common.PRED_TRANSFORMER_CLASS_LOGITS_KEY)}

        @tf.function
        def full(images):
            outputs = post(model(images, training=False))
            return {k: outputs[k] for k in (common.PRED_PANOPTIC_KEY,
                                            common.PRED_SEMANTIC_KEY)}

        result["build_s"] = time.perf_counter() - start
        from deeplab2_worker import timed_forward  # nothing of deeplab2
        result.update(timed_forward(forward, full, image, args.steps))
        # The float32 floor of the forward pass on this machine: the FLOPs
        # the fetched outputs need (both sides run the same model) at the
        # best rate this process's matmul kernel reaches.
        from max_deeplab_tf.tools import flops
        concrete = forward.get_concrete_function(image)
        result["forward_gflop"] = flops.graph_flops(
            concrete.graph, outputs=concrete.outputs)["total"] / 1e9
        result["matmul_gflops"] = matmul_gflops()
    from deeplab2_worker import print_result  # nothing of deeplab2
    print_result(result, PROCESS_START)


def matmul_gflops(size=2048, calls=10):
    """The best rate, in GFLOP/s, of a float32 [size, size] x [size, size]
    matmul over `calls` calls in this process: about the most this
    machine's kernels do with both cores on a shape they suit best."""
    import tensorflow as tf
    from deeplab2_worker import timed_calls  # imports nothing of deeplab2

    matrix = tf.random.stateless_uniform([size, size], seed=[0, 1])
    product = tf.function(lambda m: tf.matmul(m, m))
    _, times = timed_calls(product, matrix, calls)
    return 2 * size ** 3 / min(times) / 1e9


def forward_floor(table, rows, rounds):
    """Adds 'forward641_float32_floor' to `table`: per round, our forward
    pass's FLOPs at the matmul rate measured in the same process (the
    shortest time any float32 implementation of the same model could take
    here), against deeplab2's measured forward pass of that round."""
    floors, theirs, per_round, loads = [], [], [], []
    for r in range(rounds):
        ours = next((x for x in rows if x["label"] == "forward:ours"
                     and x.get("round") == r and "forward_gflop" in x), None)
        deeplab2 = next((x for x in rows if x["label"] == "forward:deeplab2"
                         and x.get("round") == r and "forward_s" in x), None)
        if ours is None or deeplab2 is None:
            continue
        floors.append(ours["forward_gflop"] / ours["matmul_gflops"])
        theirs.append(deeplab2["forward_s"])
        per_round.append(floors[-1] / theirs[-1])
        loads += [ours["load_before"], ours["load_after"],
                  deeplab2["load_before"], deeplab2["load_after"]]
    if per_round:
        table["forward641_float32_floor"] = _table_entry(
            "forward_gflop / matmul_gflops (ours) against forward_s "
            "(deeplab2)", floors, theirs, per_round, loads)


# --------------------------------------------------------------------------
# Driver.

def write_batch(path, crop, batch_size):
    """The synthetic batch of benchmarks/train_step.py, by role, plus one
    641x641 image for forward641."""
    import numpy as np
    sys.path.insert(0, BENCH_DIR)
    sys.path.insert(0, REPO_ROOT)
    from train_step import synthetic_batch
    from max_deeplab_tf.data import dataset_info
    import max_deeplab_tf

    config = max_deeplab_tf.load_experiment(OUR_CONFIG, [
        "train_dataset_options { file_pattern: 'unused' }",
        "eval_dataset_options { file_pattern: 'unused' }",
        "model_options { initial_checkpoint: '' }"])
    descriptor = dataset_info.get_dataset_descriptor(
        config.train_dataset_options.dataset)
    batch = synthetic_batch(batch_size, crop, crop, descriptor,
                            config.train_dataset_options.max_thing_id)
    by_role = {role: batch[key] for role, key in _role_to_ours().items()}
    by_role["image641"] = np.random.RandomState(1).uniform(
        0, 255, (1, 641, 641, 3)).astype(np.float32)
    np.savez(path, **by_role)


def run_process(label, command, env, timeout):
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        out = subprocess.run(command, capture_output=True, text=True,
                             timeout=timeout, env=env, cwd=REPO_ROOT)
    except subprocess.TimeoutExpired:
        return {"label": label, "error": f"timed out after {timeout}s",
                "load_before": load_before}
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime -
                                                before.ru_stime)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    row = {"label": label, "load_before": load_before,
           "load_after": os.getloadavg()[0], "wall_s": wall,
           "cpu_s": cpu, "command": " ".join(command)}
    if out.returncode != 0 or not lines:
        row["error"] = (out.stderr or out.stdout)[-3000:]
    else:
        row.update(json.loads(lines[-1][len("RESULT "):]))
    print(f"  {label:<22} wall {wall:7.1f} s  load {load_before:.2f}->"
          f"{row['load_after']:.2f}  "
          + ("ERROR " + row["error"].strip().splitlines()[-1]
             if "error" in row else
             ", ".join(f"{k} {row[k]:.2f}" for k in (
                 "first_step_s", "step_s", "forward_s", "forward_post_s",
                 "peak_rss_mib") if k in row)), flush=True)
    return row


def ratio(a, b):
    return a / b if a is not None and b else None


def median_of(rows, key):
    values = [r[key] for r in rows if key in r]
    return statistics.median(values) if values else None


def summarise(rows, rounds):
    """Per-round and median ratios, ours / deeplab2."""
    def pick(label, r):
        return next((x for x in rows if x["label"] == label
                     and x.get("round") == r and "error" not in x), None)

    table = {}
    specs = [
        ("train_step", "train:ours:xla_off", "train:deeplab2", "step_s"),
        ("train_step_xla", "train:ours:xla_on", "train:deeplab2", "step_s"),
        ("first_step", "train:ours:xla_off", "train:deeplab2",
         "first_step_s"),
        ("first_step_xla", "train:ours:xla_on", "train:deeplab2",
         "first_step_s"),
        ("process_to_first_step_done", "train:ours:xla_off",
         "train:deeplab2", "until_first_step_s"),
        ("memory", "train:ours:xla_off", "train:deeplab2", "peak_rss_mib"),
        ("memory_xla", "train:ours:xla_on", "train:deeplab2",
         "peak_rss_mib"),
        ("forward641", "forward:ours", "forward:deeplab2", "forward_s"),
        ("forward641_post", "forward:ours", "forward:deeplab2",
         "forward_post_s"),
        ("forward641_first", "forward:ours", "forward:deeplab2",
         "forward_first_s"),
        ("memory_forward641", "forward:ours", "forward:deeplab2",
         "peak_rss_mib"),
    ]
    for row in rows:
        if "first_step_s" in row:
            row["until_first_step_s"] = (row["import_s"] + row["build_s"]
                                         + row["first_step_s"])
    for name, ours_label, theirs_label, key in specs:
        per_round, ours_values, theirs_values, loads = [], [], [], []
        for r in range(rounds):
            ours, theirs = pick(ours_label, r), pick(theirs_label, r)
            if ours is None or theirs is None:
                continue
            ours_values.append(ours[key])
            theirs_values.append(theirs[key])
            per_round.append(ratio(ours[key], theirs[key]))
            loads += [ours["load_before"], ours["load_after"],
                      theirs["load_before"], theirs["load_after"]]
        if not per_round:
            continue
        table[name] = _table_entry(key, ours_values, theirs_values,
                                   per_round, loads)
    forward_floor(table, rows, rounds)
    return table


def _table_entry(key, ours, theirs, per_round, loads):
    """One row of the summary: both sides' values per round, their
    medians, the ratio of the medians and per round, the load range."""
    return {
        "key": key, "ours": ours, "deeplab2": theirs,
        "ours_median": statistics.median(ours),
        "deeplab2_median": statistics.median(theirs),
        "ratio_of_medians": ratio(statistics.median(ours),
                                  statistics.median(theirs)),
        "ratio_per_round": per_round,
        "load_average_range": [min(loads), max(loads)]}


def _cpu_model() -> str:
    """The CPU's model name, family and model numbers, and its widest
    vector instructions (Linux), which the figures depend on: TensorFlow
    turns oneDNN on by default only with AVX-512 VNNI or BF16, AVX-VNNI or
    AMX, and two 'AMD EPYC' machines of this project differed in both."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                fields.setdefault(key.strip(), value.strip())
                if not line.strip():
                    break  # the first processor is enough
    except OSError:
        return platform.processor() or platform.machine()
    flags = set(fields.get("flags", "").split())
    vector = [flag for flag in ("avx2", "avx512f", "avx512_vnni",
                                "avx512_bf16", "avx_vnni", "amx_tile")
              if flag in flags]
    return (f"{fields.get('model name', platform.machine())} (family "
            f"{fields.get('cpu family', '?')}, model "
            f"{fields.get('model', '?')}; {' '.join(vector) or 'no AVX2'})")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deeplab2_path",
                        help="checkout of google-research/deeplab2 "
                        "(protos compiled)")
    parser.add_argument("--deeplab2_python", default=sys.executable,
                        help="interpreter of deeplab2's virtualenv")
    parser.add_argument("--work", default=",".join(WORKS))
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3,
                        help="timed calls per process after the first")
    parser.add_argument("--crop", type=int, default=129)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=1500,
                        help="seconds per process")
    parser.add_argument("--output", default=os.path.join(
        BENCH_DIR, "results", "vs_deeplab2.json"))
    parser.add_argument("--batch", help=argparse.SUPPRESS)
    parser.add_argument("--xla", default="off", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=["train", "forward"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--tf_profile", metavar="DIR",
                        help="with --child=train: also write a TensorFlow "
                        "profiler trace of --steps steps to DIR")
    args = parser.parse_args()
    if args.child:
        sys.path.insert(0, REPO_ROOT)
        child(args)
        return
    if not args.deeplab2_path:
        parser.error("--deeplab2_path is required")
    works = args.work.split(",")
    for work in works:
        if work not in WORKS:
            parser.error(f"unknown work {work!r}: {WORKS}")

    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    batch_path = os.path.join(tempfile.mkdtemp(prefix="vs_deeplab2_"),
                              "batch.npz")
    write_batch(batch_path, args.crop, args.batch_size)
    env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep
               + os.environ.get("PYTHONPATH", ""))
    env.pop("TF_USE_LEGACY_KERAS", None)
    deeplab2_env = dict(env, TF_USE_LEGACY_KERAS="1")
    deeplab2_env["PYTHONPATH"] = os.environ.get("PYTHONPATH", "")
    common = [f"--batch={batch_path}", f"--steps={args.steps}"]
    deeplab2_common = [
        args.deeplab2_python, os.path.join(BENCH_DIR, "deeplab2_worker.py"),
        f"--deeplab2_path={args.deeplab2_path}",
        "--config=" + os.path.join(args.deeplab2_path, DEEPLAB2_CONFIG)
    ] + common
    ours_common = [sys.executable, os.path.abspath(__file__)] + common

    train = [w for w in works if w != "forward641"]
    processes = []  # (label, command, env)
    if train:
        size = [f"--crop={args.crop}", f"--batch_size={args.batch_size}"]
        processes.append(("train:deeplab2", deeplab2_common + [
            "--work=train"] + size, deeplab2_env))
        if set(train) - {"train_step_xla"}:
            processes.append(("train:ours:xla_off", ours_common + [
                "--child=train", "--xla=off"] + size, env))
        if "train_step_xla" in train:
            processes.append(("train:ours:xla_on", ours_common + [
                "--child=train", "--xla=on"] + size, env))
    forward = []
    if "forward641" in works:
        forward = [
            ("forward:deeplab2", deeplab2_common + [
                "--work=forward", "--crop=641"], deeplab2_env),
            ("forward:ours", ours_common + ["--child=forward", "--crop=641"],
             env)]

    rows = []
    for r in range(args.rounds):
        order = processes if r % 2 == 0 else processes[::-1]
        order = order + (forward if r % 2 == 0 else forward[::-1])
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for label, command, process_env in order:
            row = run_process(label, command, process_env, args.timeout)
            row["round"] = r
            rows.append(row)
            report = {
                "benchmark": "vs_deeplab2",
                "machine": platform.processor() or platform.machine(),
                "cpu_model": _cpu_model(), "cpu_count": os.cpu_count(),
                # TensorFlow's oneDNN switch for both sides (unset: its
                # default for this CPU), which decides the kernels.
                "TF_ENABLE_ONEDNN_OPTS": os.environ.get(
                    "TF_ENABLE_ONEDNN_OPTS"),
                "deeplab2_path": args.deeplab2_path,
                "deeplab2_commit": _git_commit(args.deeplab2_path),
                "crop": args.crop, "batch_size": args.batch_size,
                "steps": args.steps, "rounds": args.rounds,
                "command": " ".join([os.path.relpath(sys.argv[0], REPO_ROOT)]
                                    + sys.argv[1:]),
                "summary": summarise(rows, args.rounds), "processes": rows}
            temporary = args.output + ".tmp"
            with open(temporary, "w") as f:
                json.dump(report, f, indent=1)
            os.replace(temporary, args.output)

    print(f"\n{'work':<28}{'deeplab2':>12}{'ours':>12}{'ratio':>8}  "
          "per round                 load")
    for name, entry in report["summary"].items():
        print(f"{name:<28}{entry['deeplab2_median']:>12.2f}"
              f"{entry['ours_median']:>12.2f}"
              f"{entry['ratio_of_medians']:>8.2f}  "
              + ", ".join(f"{x:.2f}" for x in entry["ratio_per_round"])
              + "   {:.2f}-{:.2f}".format(*entry["load_average_range"]))
    params = {r["label"]: r.get("parameters") for r in rows}
    print("parameters:", params)
    print(f"wrote {args.output}")


def _git_commit(path):
    try:
        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"],
                              capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()

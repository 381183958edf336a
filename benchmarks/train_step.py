r"""Speed and memory of the MaX-DeepLab training step.

    python benchmarks/train_step.py [--variants=tiny,max_deeplab_s]
        [--crop=129] [--batch_size=2] [--steps=5] [--xla=both]
        [--precision=float32|mixed_float16|mixed_bfloat16]

For each variant and XLA setting, a fresh process builds the model, the
loss (with Hungarian matching), the optimizer and the trainer's TrainStep,
feeds one fixed synthetic batch (a few thing instances on stuff regions),
and times the compiled step: first call (trace + compile) and then the mean
of --steps calls. Peak memory is the process's peak resident set size (and
the device's peak allocation on a GPU). Prints a table and writes
benchmarks/results/train_step.json.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VARIANTS = {
    # name: (config file, description)
    "tiny": ("configs/testing/tiny.textproto", "test/demo variant"),
    "max_deeplab_s": ("configs/max_deeplab_s.textproto", "MaX-DeepLab-S"),
}


def synthetic_batch(batch_size, height, width, descriptor, max_thing_id,
                    seed=0):
    """One batch in the input pipeline's format (numpy)."""
    import numpy as np
    from max_deeplab_tf import common

    rng = np.random.RandomState(seed)
    things = list(descriptor.thing_class_ids)
    stuff = list(descriptor.stuff_class_ids)
    semantic = np.zeros((batch_size, height, width), np.int32)
    thing_id = np.full((batch_size, height, width), -1, np.int32)
    thing_class = np.full((batch_size, max_thing_id), -1, np.int32)
    for b in range(batch_size):
        # Stuff: horizontal bands; things: rectangles on top.
        bands = rng.choice(stuff, size=3, replace=len(stuff) < 3)
        edges = np.sort(rng.randint(1, height, size=2))
        semantic[b, :edges[0]] = bands[0]
        semantic[b, edges[0]:edges[1]] = bands[1]
        semantic[b, edges[1]:] = bands[2]
        for i in range(min(5, max_thing_id)):
            cls = rng.choice(things)
            y0, x0 = rng.randint(0, height - 8), rng.randint(0, width - 8)
            y1 = y0 + rng.randint(4, max(5, height // 3))
            x1 = x0 + rng.randint(4, max(5, width // 3))
            semantic[b, y0:y1, x0:x1] = cls
            thing_id[b, y0:y1, x0:x1] = i
            thing_class[b, i] = cls
    panoptic = semantic * descriptor.label_divisor + np.maximum(thing_id + 1,
                                                                0)
    return {
        common.IMAGE: rng.uniform(0, 255, (batch_size, height, width, 3)
                                  ).astype(np.float32),
        common.GT_SEMANTIC_KEY: semantic,
        common.GT_PANOPTIC_KEY: panoptic.astype(np.int32),
        common.GT_THING_ID_MASK_KEY: thing_id,
        common.GT_THING_ID_CLASS_KEY: thing_class,
        common.SEMANTIC_LOSS_WEIGHT_KEY: (
            semantic != descriptor.ignore_label).astype(np.float32),
    }


def child(args):
    """Measures one (variant, xla) setting; prints one JSON line."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    import max_deeplab_tf
    from max_deeplab_tf import losses
    from max_deeplab_tf import model as model_lib
    from max_deeplab_tf import optimizers
    from max_deeplab_tf.data import dataset_info
    from max_deeplab_tf.training import train_step as train_step_lib

    config_path, _ = VARIANTS[args.variant]
    crop = args.crop
    config = max_deeplab_tf.load_experiment(
        os.path.join(REPO_ROOT, config_path),
        [f"train_dataset_options {{ crop_size: {crop} crop_size: {crop} "
         f"batch_size: {args.batch_size} file_pattern: 'unused' }}",
         f"eval_dataset_options {{ crop_size: {crop} crop_size: {crop} "
         "file_pattern: 'unused' }",
         "model_options { initial_checkpoint: '' }"])
    descriptor = dataset_info.get_dataset_descriptor(
        config.train_dataset_options.dataset)
    strategy = tf.distribute.get_strategy()
    # As train_lib: the policy is set before the model is built.
    keras.mixed_precision.set_global_policy(args.precision)
    model = max_deeplab_tf.build_model(config)
    model_lib.build_for_input_size(model, crop, crop)  # as train_lib
    loss = losses.MaXDeepLabLoss(config.trainer_options.loss_options,
                                 descriptor)
    model_optimizer = optimizers.ModelOptimizer(
        config.trainer_options.solver_options, model.trainable_variables,
        gradients_aggregated=True,
        is_backbone=lambda v: False)
    model_optimizer.build()
    step = train_step_lib.TrainStep(
        model, loss, model_optimizer, args.batch_size,
        mixed_precision_policy=args.precision,
        jit_compile=args.xla == "on")
    batch = synthetic_batch(args.batch_size, crop, crop, descriptor,
                            config.train_dataset_options.max_thing_id)
    batch = {k: tf.constant(v) for k, v in batch.items()}

    @tf.function
    def run(inputs):
        return strategy.run(step.replica_step, args=(inputs,))

    # As the trainer calls it (grappler off on a CPU-only process).
    with step.graph_optimizer_scope():
        start = time.perf_counter()
        result = run(batch)
        float(result["total_loss"])
        first = time.perf_counter() - start
        for _ in range(args.warmup):
            float(run(batch)["total_loss"])
        start = time.perf_counter()
        for _ in range(args.steps):
            result = run(batch)
        loss_value = float(result["total_loss"])
        seconds = (time.perf_counter() - start) / args.steps
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device_peak_mib = None
    if tf.config.list_physical_devices("GPU"):
        device_peak_mib = tf.config.experimental.get_memory_info(
            "GPU:0")["peak"] / 2 ** 20
    print("RESULT " + json.dumps({
        "variant": args.variant, "xla": args.xla, "crop": crop,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "parameters": int(sum(v.shape.num_elements()
                              for v in model.trainable_variables)),
        "first_step_s": first, "step_s": seconds,
        "steps_per_s": 1.0 / seconds,
        "images_per_s": args.batch_size / seconds,
        "peak_rss_mib": peak_rss_mib, "device_peak_mib": device_peak_mib,
        "loss": loss_value}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", default="tiny,max_deeplab_s")
    parser.add_argument("--crop", type=int, default=129,
                        help="square crop, k * 32 + 1")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--xla", choices=["on", "off", "both"],
                        default="both")
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "mixed_float16", "mixed_bfloat16"],
                        help="Keras mixed-precision policy, as the trainer's "
                        "trainer_options.mixed_precision_policy")
    parser.add_argument("--timeout", type=int, default=1200,
                        help="seconds per setting")
    parser.add_argument("--output",
                        default=os.path.join(REPO_ROOT, "benchmarks",
                                             "results", "train_step.json"))
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    rows = []
    settings = ["off", "on"] if args.xla == "both" else [args.xla]
    for variant in args.variants.split(","):
        if variant not in VARIANTS:
            parser.error(f"unknown variant {variant!r}: {list(VARIANTS)}")
        for xla in settings:
            command = [sys.executable, os.path.abspath(__file__), "--child",
                       f"--variant={variant}", f"--xla={xla}",
                       f"--crop={args.crop}",
                       f"--batch_size={args.batch_size}",
                       f"--steps={args.steps}", f"--warmup={args.warmup}",
                       f"--precision={args.precision}"]
            env = dict(os.environ, PYTHONPATH=REPO_ROOT + os.pathsep
                       + os.environ.get("PYTHONPATH", ""))
            try:
                out = subprocess.run(command, capture_output=True, text=True,
                                     timeout=args.timeout, env=env,
                                     cwd=REPO_ROOT)
            except subprocess.TimeoutExpired:
                rows.append({"variant": variant, "xla": xla,
                             "error": f"timed out after {args.timeout}s"})
                continue
            lines = [l for l in out.stdout.splitlines()
                     if l.startswith("RESULT ")]
            if out.returncode != 0 or not lines:
                rows.append({"variant": variant, "xla": xla,
                             "error": (out.stderr or out.stdout)[-2000:]})
                continue
            rows.append(json.loads(lines[-1][len("RESULT "):]))

    header = (f"{'variant':<15}{'xla':<5}{'params':>12}{'first step s':>14}"
              f"{'step s':>9}{'steps/s':>9}{'images/s':>10}{'peak RSS MiB':>14}")
    print(header)
    print("-" * len(header))
    for row in rows:
        if "error" in row:
            print(f"{row['variant']:<15}{row['xla']:<5} ERROR: "
                  f"{row['error'].strip().splitlines()[-1]}")
            continue
        print(f"{row['variant']:<15}{row['xla']:<5}{row['parameters']:>12,}"
              f"{row['first_step_s']:>14.1f}{row['step_s']:>9.2f}"
              f"{row['steps_per_s']:>9.2f}{row['images_per_s']:>10.2f}"
              f"{row['peak_rss_mib']:>14.0f}")
    report = {"benchmark": "train_step", "machine": platform.processor()
              or platform.machine(), "cpu_count": os.cpu_count(),
              "crop": args.crop, "batch_size": args.batch_size,
              "steps": args.steps, "results": rows}
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    temporary = args.output + ".tmp"
    with open(temporary, "w") as f:
        json.dump(report, f, indent=1)
    os.replace(temporary, args.output)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

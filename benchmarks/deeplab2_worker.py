r"""deeplab2's side of `vs_deeplab2.py` (run in deeplab2's own virtualenv).

    TF_USE_LEGACY_KERAS=1 /tmp/dl2-venv/bin/python benchmarks/deeplab2_worker.py \
        --deeplab2_path=/tmp/dl2src/deeplab2 --config=CONFIG.textproto \
        --batch=BATCH.npz --work=train|forward [--crop=129] [--batch_size=2] \
        [--steps=3]

Imports deeplab2 from the checkout `--deeplab2_path` at run time (nothing of
deeplab2 is copied into this project) and needs its protos compiled there
(`python -m grpc_tools.protoc -I. --python_out=. deeplab2/*.proto`, run in
the checkout's parent directory). This file imports nothing from
max_deeplab_tf: it only reads the synthetic batch that the driver wrote.

work=train: deeplab2's `Trainer._train_step` (its model, its
DeepLabFamilyLoss with Hungarian matching, its optimizers built by
`trainer._create_optimizer`, 0.1x backbone learning rate through its second
optimizer, as `Trainer.__init__` sets them up), wrapped the way its orbit
trainer runs it: `strategy.run(step_fn)` inside one tf.function, one step per
call. orbit (tf-models-official) is not needed: where it is not installed a
stand-in module gives `Trainer` its base class; deeplab2's dataset code in
`Trainer.__init__` is not run (the fields it sets are set here).

work=forward: `DeepLab(image, training=False)` (its evaluation path:
resizing, semantic softmax and its MaX-DeepLab post-processor), and the same
with the post-processor replaced by one returning nothing ("forward only").

Prints one line `RESULT {json}`.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import types

PROCESS_START = time.perf_counter()

# Roles in the batch file -> deeplab2's input keys (deeplab2/common.py).
ROLE_TO_DEEPLAB2 = {
    "image": "image",
    "semantic": "semantic_gt",
    "panoptic": "panoptic_gt",
    "thing_id_mask": "thing_id_mask_gt",
    "thing_id_class": "thing_id_class_gt",
    "semantic_loss_weight": "semantic_loss_weight",
}


def import_deeplab2(path):
    """Puts the checkout on sys.path as package `deeplab2`."""
    path = os.path.abspath(path)
    if os.path.basename(path) == "deeplab2":
        sys.path.insert(0, os.path.dirname(path))
    else:
        parent = tempfile.mkdtemp(prefix="deeplab2_link_")
        os.symlink(path, os.path.join(parent, "deeplab2"))
        sys.path.insert(0, parent)
    try:
        import orbit  # noqa: F401
    except ImportError:
        # deeplab2/trainer/trainer.py subclasses orbit.StandardTrainer; its
        # __init__ (datasets) is not run here, so an empty base will do.
        orbit = types.ModuleType("orbit")
        orbit.StandardTrainer = type("StandardTrainer", (object,), {})
        orbit.utils = types.SimpleNamespace()
        sys.modules["orbit"] = orbit


def load_config(config_path, overrides):
    from google.protobuf import text_format
    from deeplab2 import config_pb2

    config = config_pb2.ExperimentOptions()
    with open(config_path) as f:
        text_format.Parse(f.read(), config)
    for override in overrides:
        text_format.Merge(override, config)
    return config


def synced(value):
    """Waits for a result (a tensor or a nest of them)."""
    import tensorflow as tf
    for tensor in tf.nest.flatten(value):
        tensor.numpy()


def timed_calls(fn, arg, steps):
    start = time.perf_counter()
    synced(fn(arg))
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        synced(fn(arg))
        times.append(time.perf_counter() - start)
    return first, times


def print_result(result, process_start):
    """Adds the process's peak RSS and run time to `result` and prints it as
    the one `RESULT {json}` line the driver reads (both sides' children)."""
    result["peak_rss_mib"] = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    result["process_s"] = time.perf_counter() - process_start
    print("RESULT " + json.dumps(result), flush=True)


def timed_forward(forward, full, image, steps):
    """The forward641 figures of one side: the model alone (`forward`) and
    with post-processing (`full`), each timed by `timed_calls`."""
    first, times = timed_calls(forward, image, steps)
    first_post, times_post = timed_calls(full, image, steps)
    return {
        "crop": int(image.shape[1]), "batch_size": int(image.shape[0]),
        "forward_first_s": first, "forward_times_s": times,
        "forward_s": statistics.median(times),
        "forward_post_first_s": first_post,
        "forward_post_times_s": times_post,
        "forward_post_s": statistics.median(times_post),
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--deeplab2_path", required=True)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batch", required=True, help=".npz from the driver")
    parser.add_argument("--work", choices=["train", "forward"],
                        required=True)
    parser.add_argument("--crop", type=int, default=129)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf
    import_deeplab2(args.deeplab2_path)
    from deeplab2.data import dataset
    from deeplab2.model import deeplab
    from deeplab2.model.loss import loss_builder
    from deeplab2.trainer import runner_utils
    from deeplab2.trainer import trainer as trainer_lib
    import_s = time.perf_counter() - PROCESS_START

    crop = args.crop
    overrides = ["model_options { initial_checkpoint: '' }"]
    if args.work == "train":
        overrides.append(
            "train_dataset_options { crop_size: %d crop_size: %d "
            "batch_size: %d }" % (crop, crop, args.batch_size))
    config = load_config(args.config, overrides)
    # Repeated fields merge by appending: keep the last two crop sizes.
    for options in (config.train_dataset_options,):
        sizes = list(options.crop_size)[-2:]
        del options.crop_size[:]
        options.crop_size.extend(sizes)
    descriptor = dataset.MAP_NAME_TO_DATASET_INFO[
        config.train_dataset_options.dataset]
    data = np.load(args.batch)
    strategy = tf.distribute.get_strategy()

    start = time.perf_counter()
    model = deeplab.DeepLab(config, descriptor)
    input_size = list(config.train_dataset_options.crop_size)
    # As deeplab2/trainer/train_lib.build_deeplab_model.
    model(tf.keras.Input(input_size + [3], batch_size=1), training=False)
    parameters = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    result = {"side": "deeplab2", "work": args.work, "parameters": parameters,
              "tf_version": tf.__version__, "import_s": import_s}

    if args.work == "train":
        loss = loss_builder.DeepLabFamilyLoss(
            loss_options=config.trainer_options.loss_options,
            deeplab_options=config.model_options,
            num_classes=descriptor.num_classes,
            ignore_label=descriptor.ignore_label,
            ignore_depth=descriptor.ignore_depth,
            thing_class_ids=descriptor.class_has_instances_list,
            auxiliary_output_number=model.auxiliary_output_number)
        # The fields Trainer.__init__ sets (its dataset code is skipped).
        trainer = trainer_lib.Trainer.__new__(trainer_lib.Trainer)
        solver = config.trainer_options.solver_options
        trainer._strategy = strategy
        trainer._config = config
        trainer._model = model
        trainer._loss = loss
        trainer._optimizer = trainer_lib._create_optimizer(solver)
        trainer._backbone_optimizer = None
        if solver.HasField("backbone_learning_rate_multiplier"):
            trainer._backbone_optimizer = trainer_lib._create_optimizer(
                solver, learning_rate_multiplier=(
                    solver.backbone_learning_rate_multiplier))
        trainer._global_step = tf.Variable(
            0, dtype=tf.int64, trainable=False, name="global_step",
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        trainer._use_gradient_clipping = solver.use_gradient_clipping
        trainer._clip_gradient_norm = solver.clip_gradient_norm
        trainer._train_loss_metric_dict = (
            runner_utils.create_loss_metric_dict(loss.get_loss_names(),
                                                 prefix="train_"))
        batch = {ROLE_TO_DEEPLAB2[role]: tf.constant(data[role])
                 for role in ROLE_TO_DEEPLAB2}

        # Trainer.train_step, with the batch in place of next(iterator).
        @tf.function
        def train_step(inputs):
            def step_fn(inputs):
                trainer._train_step(inputs)
                trainer._global_step.assign_add(1)
            strategy.run(step_fn, args=(inputs,))
            return trainer._train_loss_metric_dict["total_loss"].result()

        result["build_s"] = time.perf_counter() - start
        first, times = timed_calls(train_step, batch, args.steps)
        result.update({
            "crop": crop, "batch_size": args.batch_size,
            "first_step_s": first, "step_times_s": times,
            "step_s": statistics.median(times),
            "loss": float(trainer._train_loss_metric_dict[
                "total_loss"].result()),
            "backbone_variables": sum(
                1 for v in model.trainable_variables
                if runner_utils.check_if_variable_in_backbone(
                    v, config.model_options.backbone.name,
                    [x.name for x in model.checkpoint_items[
                        "encoder"].trainable_variables])),
        })
    else:
        image = tf.constant(data["image641"])
        forward_only_model = model

        @tf.function
        def full(images):
            outputs = model(images, training=False)
            return {k: outputs[k] for k in ("panoptic_pred", "semantic_pred")}

        def no_post_processing(result_dict):
            del result_dict
            return {}

        @tf.function
        def forward(images):
            saved = forward_only_model._post_processor
            forward_only_model._post_processor = no_post_processing
            try:
                outputs = forward_only_model(images, training=False)
            finally:
                forward_only_model._post_processor = saved
            return {k: outputs[k] for k in (
                "pixel_space_mask_logits", "transformer_class_logits")}

        result["build_s"] = time.perf_counter() - start
        result.update(timed_forward(forward, full, image, args.steps))
    print_result(result, PROCESS_START)


if __name__ == "__main__":
    main()

"""One real training step on 1 device and on 2 mirrored logical CPUs.

    python -m tests.trainer.mirrored_check OUT.json

In one process with the CPU split in two: builds the tiny MaX-DeepLab
(configs/testing/tiny.textproto, drop path off so that both runs draw no
randomness) once under OneDeviceStrategy and once under MirroredStrategy over
the two devices, with the same initial weights, the real loss, RAdam +
Lookahead with the backbone multiplier and clipping, and runs the same
global batches through both. Writes the losses and the largest weight
difference to OUT.json.
"""

import json
import os
import sys


def main(out_path):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainer import distribution
    distribution.split_cpu(2)
    import keras
    import numpy as np
    import tensorflow as tf

    # Graph optimisation takes longer than the two steps; both runs skip it
    # alike.
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": True})

    import max_deeplab_tf
    from max_deeplab_tf import losses
    from max_deeplab_tf import optimizers
    from max_deeplab_tf.data import dataset_info
    from max_deeplab_tf.training import train_step as train_step_lib
    from benchmarks import train_step as bench
    from tests.conftest import REPO_ROOT

    crop, batch, steps = 33, 2, 2
    config = max_deeplab_tf.load_experiment(
        os.path.join(REPO_ROOT, "configs/testing/tiny.textproto"), [
            "model_options { backbone { drop_path_keep_prob: 1.0 } }",
            f"train_dataset_options {{ crop_size: {crop} crop_size: {crop} "
            f"batch_size: {batch} }}",
            f"eval_dataset_options {{ crop_size: {crop} crop_size: {crop} }}",
            "trainer_options { solver_options { optimizer: 'radam' "
            "lookahead_sync_period: 2 base_learning_rate: 0.01 "
            "use_gradient_clipping: true clip_gradient_norm: 1.0 } }"])
    descriptor = dataset_info.get_dataset_descriptor(
        config.train_dataset_options.dataset)
    batches = [bench.synthetic_batch(batch, crop, crop, descriptor,
                                     config.train_dataset_options.max_thing_id,
                                     seed=s) for s in range(steps)]
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    strategies = {"one": tf.distribute.OneDeviceStrategy(devices[0]),
                  "two": tf.distribute.MirroredStrategy(devices)}
    initial = None
    results = {}
    for name, strategy in strategies.items():
        keras.utils.set_random_seed(0)
        with strategy.scope():
            model = max_deeplab_tf.build_model(config)
            model(tf.zeros([1, crop, crop, 3]), training=False)
            if initial is None:
                initial = [v.numpy() for v in model.variables]
            else:
                for v, value in zip(model.variables, initial):
                    v.assign(value)
            model_optimizer = optimizers.ModelOptimizer(
                config.trainer_options.solver_options,
                model.trainable_variables,
                is_backbone=model.is_backbone_variable,
                gradients_aggregated=True)
            model_optimizer.build()
            step = train_step_lib.TrainStep(
                model, losses.MaXDeepLabLoss(
                    config.trainer_options.loss_options, descriptor),
                model_optimizer, batch)

        @tf.function
        def run(inputs):
            out = strategy.run(step.replica_step, args=(inputs,))
            return {k: strategy.experimental_local_results(v)[0]
                    for k, v in out.items()}

        losses_seen = []
        for data in batches:
            dataset = tf.data.Dataset.from_tensors(data)
            inputs = next(iter(strategy.experimental_distribute_dataset(
                dataset)))
            out = run(inputs)
            losses_seen.append({k: float(v) for k, v in out.items()})
        results[name] = {
            "losses": losses_seen,
            "weights": [v.numpy() for v in model.variables],
            "names": [v.path for v in model.variables],
            "trainable": [any(v is t for t in model.trainable_variables)
                          for v in model.variables],
            "backbone": model_optimizer.num_backbone_variables,
            "replicas": strategy.num_replicas_in_sync}
    one, two = results["one"], results["two"]
    moved = max(float(np.abs(a - b).max())
                for a, b in zip(initial, one["weights"]))
    differences = sorted(
        ((float(np.abs(a - b).max()), n, bool(t)) for a, b, n, t in zip(
            one["weights"], two["weights"], one["names"], one["trainable"])),
        reverse=True)
    report = {
        "largest_differences": differences[:8],
        "max_trainable_difference": max(d for d, _, t in differences if t),
        "replicas": [one["replicas"], two["replicas"]],
        "backbone_variables": one["backbone"],
        "losses_one": one["losses"], "losses_two": two["losses"],
        "max_weight_difference": max(
            float(np.abs(a - b).max())
            for a, b in zip(one["weights"], two["weights"])),
        "max_weight_change": moved,
        "num_variables": len(initial)}
    with open(out_path, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])

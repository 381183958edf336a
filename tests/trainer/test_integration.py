"""The trainer with the real library: model, loss, input pipeline, PQ,
export, on a small synthetic dataset, everything on ram://.

A short train_and_eval whose loss goes down, its checkpoint restoring every
weight of the real model, its metrics files and its SavedModel; and the
real model's training step giving the same result on 1 device and on
MirroredStrategy over 2 logical CPUs (sync batch norm included).
"""

import json
import sys
import uuid

import numpy as np
import pytest
import tensorflow as tf

import max_deeplab_tf
from max_deeplab_tf.data import build_coco_panoptic
from max_deeplab_tf.data import synthetic
from max_deeplab_tf.training import checkpoints
from tests.conftest import REPO_ROOT
from tests.trainer import subprocesses as sp
from trainer import train_lib

CROP = 33


def small_experiment(root):
    """The demo config, shrunk: 4 train / 4 val images of 33x33; training
    sees the same 4 images every step (no augmentation), so the loss must
    fall quickly."""
    synthetic.generate(f"{root}/coco", num_train_images=4, num_val_images=4,
                       image_size=CROP, seed=3)
    for split in ("train", "val"):
        build_coco_panoptic.convert(f"{root}/coco", split, f"{root}/shards",
                                    num_shards=1)
    return max_deeplab_tf.load_experiment(
        f"{REPO_ROOT}/configs/demo.textproto", [
            "trainer_options { steps_per_loop: 10 save_checkpoints_steps: 10 "
            "solver_options { training_number_of_steps: 30 warmup_steps: 0 "
            "optimizer: 'adam' lookahead_sync_period: 0 "
            "base_learning_rate: 0.005 } }",
            "experiment_name: 'integration'",
            f"train_dataset_options {{ file_pattern: '{root}/shards/train-*' "
            f"batch_size: 4 crop_size: {CROP} crop_size: {CROP} "
            f"min_resize_value: {CROP} max_resize_value: {CROP} "
            "augmentations { min_scale_factor: 1 max_scale_factor: 1 "
            "flip_probability: 0 } }",
            f"eval_dataset_options {{ file_pattern: '{root}/shards/val-*' "
            f"batch_size: 3 crop_size: {CROP} crop_size: {CROP} "
            f"min_resize_value: {CROP} max_resize_value: {CROP} }}",
            "evaluator_options { eval_interval: 30 num_vis_samples: 2 }"])


def test_short_train_and_eval_on_ram(tmp_path):
    root = f"ram://integration-{uuid.uuid4().hex}"
    config = small_experiment(root)
    # The data is made above, not by the trainer.
    config.trainer_options.ClearField("synthetic_data")
    model_dir = f"{root}/model"
    pieces = train_lib._library_components()
    captured = {}
    build = pieces.build_model

    def build_model(cfg):
        captured["model"] = build(cfg)
        return captured["model"]

    pieces.build_model = build_model
    result = train_lib.run_experiment("train_and_eval", config, model_dir,
                                      components=pieces)
    assert result["global_step"] == 30
    history = result["train_history"]
    assert [h["step"] for h in history] == [10, 20, 30]
    first, last = (history[0]["losses/total_loss"],
                   history[-1]["losses/total_loss"])
    assert last < first, [h["losses/total_loss"] for h in history]
    for term in ("pq_style_loss_class_term", "pq_style_loss_mask_dice_term",
                 "mask_id_cross_entropy_loss",
                 "instance_discrimination_loss", "semantic_loss"):
        assert np.isfinite(history[-1][f"losses/{term}"]), term

    # Evaluation over all 4 val images (batches of 3: the last is partial).
    with tf.io.gfile.GFile(f"{model_dir}/eval/metrics-latest.json") as f:
        metrics = json.load(f)
    assert metrics["step"] == 30 and metrics["num_images"] == 4
    assert {"All", "Things", "Stuff", "per_class"} <= set(metrics)
    assert 0.0 <= metrics["All"]["pq"] <= 1.0
    assert set(metrics["losses"]) >= {"total_loss", "semantic_loss"}
    assert len(tf.io.gfile.listdir(f"{model_dir}/vis")) == 2

    # The checkpoint holds every weight of the real model.
    model = captured["model"]
    fresh = max_deeplab_tf.build_model(config)
    fresh(tf.zeros([1, CROP, CROP, 3]))
    prefix = f"{model_dir}/ckpt-30"
    tf.train.Checkpoint(model=checkpoints.model_view(fresh)).read(
        prefix).assert_existing_objects_matched()
    assert len(fresh.variables) == len(model.variables)
    for a, b in zip(model.variables, fresh.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)

    # The exported SavedModel serves the trained model.
    served = tf.saved_model.load(result["export_dir"])
    outputs = served.signatures["serving_default"](
        images=tf.zeros([1, 40, 50, 3], tf.uint8))
    assert outputs["panoptic_pred"].shape == (1, 40, 50)


def test_mirrored_two_cpus_equals_one_device_real_model(tmp_path):
    out = tmp_path / "mirrored.json"
    sp.run([sys.executable, "-m", "tests.trainer.mirrored_check",
            str(out)], str(tmp_path / "log"), timeout=600)
    report = json.loads(out.read_text())
    assert report["replicas"] == [1, 2]
    assert report["backbone_variables"] > 0
    # Sync batch norm sums E[x] and E[x^2] over the replicas and takes
    # E[x^2] - E[x]^2, where one device computes the variance directly; on
    # the ASPP image-pooling branch (one pooled vector per image, a batch of
    # 2) that cancellation costs a few float32 digits, which shows in the
    # semantic loss (~1e-4) and, after one update, in the gradient norm.
    tolerances = {"total_loss": 2e-4, "pq_style_loss_class_term": 1e-5,
                  "mask_id_cross_entropy_loss": 1e-5,
                  "instance_discrimination_loss": 2e-5,
                  "semantic_loss": 2e-4, "gradient_norm": 1e-3}
    for one, two in zip(report["losses_one"], report["losses_two"]):
        for name, rel in tolerances.items():
            assert two[name] == pytest.approx(one[name], rel=rel), name
    # Trainable weights agree to float32 rounding after the steps, while
    # the steps moved them by orders of magnitude more.
    assert report["max_trainable_difference"] < 1e-4
    assert report["max_weight_change"] > 100 * report[
        "max_trainable_difference"]

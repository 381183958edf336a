"""The streaming PanopticQuality metric: accumulation, reset, merge, XLA,
replicas. (Its per-rule statistics are checked in test_panoptic_quality.)"""

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.evaluation import streaming

DESCRIPTOR = dataset_info.DatasetDescriptor(
    name="pq_test", num_classes=5, ignore_label=0, label_divisor=100,
    thing_class_ids=(1, 2))


def test_streaming_metric_accumulates_resets_and_compiles():
    metric = streaming.PanopticQuality(DESCRIPTOR)
    gt = tf.constant([[[301, 301, 101, 101]]])
    pred = tf.constant([[[301, 301, 101, 102]]])

    @tf.function(jit_compile=True)
    def update(g, p):
        metric.update_state(g, p)

    update(gt, pred)
    update(gt, tf.constant([[[401, 401, 101, 101]]]))
    stats = {k: v.numpy() for k, v in metric.statistics().items()}
    # Image 1: 301 TP IoU 1; 101 vs 101 IoU 1/2 -> no match: FN 101, FP 101,
    # FP 102. Image 2: 301 FN, 401 FP, 101 TP.
    np.testing.assert_array_equal(stats["tp"], [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(stats["fp"], [0, 2, 0, 0, 1])
    np.testing.assert_array_equal(stats["fn"], [0, 1, 0, 1, 0])
    result = metric.result()
    # Class 1: 1 / (1 + 1 + 0.5); class 3: 1 / (1 + 0.5); class 4: 0.
    assert result["All"]["pq"] == pytest.approx((1 / 2.5 + 1 / 1.5) / 3)
    other = streaming.PanopticQuality(DESCRIPTOR)
    other.merge_state(metric.statistics())
    assert other.result() == result
    metric.reset_state()
    assert metric.result()["All"]["n"] == 0


def test_streaming_metric_sums_over_replicas():
    devices = tf.config.list_logical_devices("CPU")
    strategy = tf.distribute.MirroredStrategy(devices[:1])
    with strategy.scope():
        metric = streaming.PanopticQuality(DESCRIPTOR)
    gt = tf.constant([[[301, 301]], [[301, 301]]])
    pred = tf.constant([[[301, 301]], [[401, 401]]])
    dataset = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices((gt, pred)).batch(2))

    @tf.function
    def step(batch):
        strategy.run(metric.update_state, args=batch)

    for batch in dataset:
        step(batch)
    assert metric.statistics()["tp"].numpy()[3] == 1
    assert metric.statistics()["fn"].numpy()[3] == 1


def test_per_class_entries_carry_class_names():
    named = dataset_info.DatasetDescriptor(
        name="named", num_classes=5, ignore_label=0, label_divisor=100,
        thing_class_ids=(1, 2),
        class_names=("void", "person", "car", "sky", ""),
        category_ids=(0, 11, 12, 30, 40))
    metric = streaming.PanopticQuality(named)
    metric.update_state(tf.constant([[[301, 101, 101, 401]]]),
                        tf.constant([[[301, 101, 101, 201]]]))
    per_class = metric.result()["per_class"]
    # Keyed by category id, as the PQ command writes; every entry named.
    assert per_class["11"]["name"] == "person"
    assert per_class["11"]["isthing"] is True
    assert per_class["30"]["name"] == "sky"
    assert per_class["30"]["isthing"] is False
    assert per_class["12"]["name"] == "car"
    # A class without a name in the descriptor gets one by its id.
    assert per_class["40"]["name"] == "class_4"
    assert all("name" in entry for entry in per_class.values())

"""The trainer's PQ (streaming, on converted shards) against the PQ command
(the COCO panoptic API's rules, on the COCO JSON and PNGs) for the same
predictions on the same images.

They agree to 1e-6 when the validation shards keep crowd regions
(--notreat_crowd_as_ignore), and not with deeplab2's default, where crowd
becomes void: the README's own-data section converts val accordingly.
"""

import glob
import os

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.data import build_coco_panoptic
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.data import synthetic
from max_deeplab_tf.data import tfrecord
from max_deeplab_tf.evaluation import coco_format
from max_deeplab_tf.evaluation import panoptic_quality
from max_deeplab_tf.evaluation import streaming

NUM_IMAGES = 8
CROWD_OWN_INSTANCE = 50  # a predicted thing segment on a crowd region


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("coco_pq"))
    synthetic.generate_split(root, "val", NUM_IMAGES, image_size=65, seed=3)
    shards = {}
    for crowd_as_ignore in (False, True):
        output = os.path.join(root, f"shards_crowd_as_ignore_{crowd_as_ignore}")
        build_coco_panoptic.convert(root, "val", output, num_shards=1,
                                    treat_crowd_as_ignore=crowd_as_ignore,
                                    progress=False)
        shards[crowd_as_ignore] = output
    return root, shards


def _ground_truth(shard_dir):
    """{image name: panoptic label} as the trainer's evaluation reads it."""
    labels = {}
    for path in glob.glob(os.path.join(shard_dir, "val-*")):
        for record in tf.data.TFRecordDataset(path):
            example = tfrecord.decode_example(record)
            labels[example["image_name"].numpy().decode()] = (
                example["label"].numpy())
    return labels


def _prediction(gt, descriptor):
    """The ground truth moved by (1, 2) pixels, each crowd region predicted
    as one thing segment: matches with IoU below 1, misses, and predictions
    on crowd."""
    pred = np.roll(gt, shift=(1, 2), axis=(0, 1))
    semantic, instance = np.divmod(pred, descriptor.label_divisor)
    crowd = np.isin(semantic, descriptor.thing_class_ids) & (instance == 0)
    return np.where(crowd, pred + CROWD_OWN_INSTANCE, pred).astype(np.int32)


def _streaming_pq(labels, predictions, descriptor):
    metric = streaming.PanopticQuality(descriptor)
    names = sorted(labels)
    metric.update_state(np.stack([labels[n] for n in names]),
                        np.stack([predictions[n] for n in names]))
    return metric.result()


def test_trainer_pq_equals_the_coco_rules_when_val_keeps_crowd(
        dataset, tmp_path):
    root, shards = dataset
    descriptor = dataset_info.get_dataset_descriptor(
        build_coco_panoptic.descriptor_path(shards[False]))
    kept = _ground_truth(shards[False])
    assert len(kept) == NUM_IMAGES
    predictions = {name: _prediction(gt, descriptor)
                   for name, gt in kept.items()}
    # The data has crowd regions and the predictions cover them.
    crowd_pixels = sum(int(np.sum(
        np.isin(gt // descriptor.label_divisor, descriptor.thing_class_ids)
        & (gt % descriptor.label_divisor == 0))) for gt in kept.values())
    assert crowd_pixels > 0

    gt_json = os.path.join(root, "annotations", "panoptic_val2017.json")
    gt_dir = os.path.join(root, "annotations", "panoptic_val2017")
    writer = coco_format.CocoPanopticWriter(str(tmp_path / "pred"),
                                            descriptor)
    for name, pred in predictions.items():
        writer.add(coco_format.image_id_of(name), pred, f"{name}.png")
    command = panoptic_quality.evaluate(gt_json, gt_dir, writer.close(),
                                        writer.png_dir, workers=1)

    trainer = _streaming_pq(kept, predictions, descriptor)
    totals = {k: sum(v[k] for v in command["per_class"].values())
              for k in ("tp", "fp", "fn")}
    assert totals["tp"] > 0 and totals["fp"] > 0 and totals["fn"] > 0
    for group in ("All", "Things", "Stuff"):
        for key in ("pq", "sq", "rq"):
            assert trainer[group][key] == pytest.approx(
                command[group][key], abs=1e-6), (group, key)
    for category, values in command["per_class"].items():
        for key in ("tp", "fp", "fn"):
            assert trainer["per_class"][category][key] == values[key], (
                category, key)

    # deeplab2's default (crowd as void in the val shards) reads higher: the
    # pixels a matched prediction puts on crowd leave its union.
    voided = _ground_truth(shards[True])
    deeplab2_style = _streaming_pq(voided, predictions, descriptor)
    assert deeplab2_style["Things"]["sq"] > command["Things"]["sq"] + 1e-4

"""COCO panoptic format writer: ids, categories, crowd, areas, boxes, PNG
colour encoding, files on gfile paths."""

import json

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.evaluation import coco_format
from max_deeplab_tf.evaluation import panoptic_quality

DESCRIPTOR = dataset_info.DatasetDescriptor(
    name="coco_format_test", num_classes=4, ignore_label=0, label_divisor=256,
    thing_class_ids=(1,), class_names=("void", "person", "sky", "road"),
    category_ids=(-1, 1, 119, 149))

PANOPTIC = np.array([
    [0, 0, 257, 257, 512],
    [256, 0, 257, 258, 512],
    [256, 256, 768, 768, 512],
])


def test_panoptic_to_coco_segments():
    rgb, segments = coco_format.panoptic_to_coco(PANOPTIC, DESCRIPTOR,
                                                 ground_truth=True)
    by_id = {s["id"]: s for s in segments}
    # id = panoptic + 1; void (semantic 0) -> 0, not listed.
    assert sorted(by_id) == [257, 258, 259, 513, 769]
    # Crowd: thing (class 1) with instance 0.
    assert by_id[257] == {"id": 257, "category_id": 1, "area": 3,
                          "bbox": [0, 1, 2, 2], "iscrowd": 1}
    assert by_id[258] == {"id": 258, "category_id": 1, "area": 3,
                          "bbox": [2, 0, 2, 2], "iscrowd": 0}
    assert by_id[513]["category_id"] == 119
    assert by_id[769] == {"id": 769, "category_id": 149, "area": 2,
                          "bbox": [2, 2, 2, 1], "iscrowd": 0}
    # R + 256 G + 256^2 B: 258 = 2 + 256 * 1.
    assert rgb[0, 2].tolist() == [2, 1, 0]
    assert rgb[0, 0].tolist() == [0, 0, 0]
    # Predictions carry no crowd flag.
    _, predicted = coco_format.panoptic_to_coco(PANOPTIC, DESCRIPTOR)
    assert not any(s["iscrowd"] for s in predicted)


def test_categories_use_dataset_ids_names_and_kinds():
    categories = coco_format.categories_json(DESCRIPTOR)
    assert categories == [
        {"id": 1, "name": "person", "isthing": 1, "supercategory": "thing"},
        {"id": 119, "name": "sky", "isthing": 0, "supercategory": "stuff"},
        {"id": 149, "name": "road", "isthing": 0, "supercategory": "stuff"}]


@pytest.mark.parametrize("root", ["local", "ram://coco_format_test"])
def test_writer_round_trip(tmp_path, root):
    directory = str(tmp_path) if root == "local" else root
    writer = coco_format.CocoPanopticWriter(directory, DESCRIPTOR)
    writer.add(11, PANOPTIC)
    writer.add_batch(["b"], PANOPTIC[None, ::-1])
    with pytest.raises(ValueError, match="already written"):
        writer.add(11, PANOPTIC)
    path = writer.close()
    with tf.io.gfile.GFile(path) as f:
        data = json.load(f)
    assert [a["file_name"] for a in data["annotations"]] == ["11.png",
                                                             "b.png"]
    assert data["images"][0] == {"id": 11, "file_name": "11.png",
                                 "height": 3, "width": 5}
    ids = panoptic_quality.read_id_png(f"{writer.png_dir}/11.png")
    np.testing.assert_array_equal(
        ids, np.where(PANOPTIC // 256 == 0, 0, PANOPTIC + 1))
    flipped = panoptic_quality.read_id_png(f"{writer.png_dir}/b.png")
    np.testing.assert_array_equal(flipped, ids[::-1])


def test_evaluator_hook_writes_files_the_command_reads(tmp_path):
    hook = coco_format.save_predictions_fn(DESCRIPTOR)
    gt = np.stack([PANOPTIC, PANOPTIC])
    pred = gt.copy()
    pred[1, :, 4] = 3 * 256 + 5  # image b: sky (stuff 2) predicted as road
    hook(None, gt[:1], pred[:1], [b"dir/a.jpg"], str(tmp_path))
    hook(None, gt[1:], pred[1:], ["b.jpg"], str(tmp_path))
    root = f"{tmp_path}/coco"
    result = panoptic_quality.evaluate(
        f"{root}/groundtruth/panoptic.json", f"{root}/groundtruth/panoptic",
        f"{root}/predictions/panoptic.json", f"{root}/predictions/panoptic",
        workers=1)
    # Person instances 1 and 2 and road match with IoU 1 in both images
    # (the crowd person region is no FN); sky: TP in a, FN in b; the column
    # of b labelled road is a separate road segment (3 * 256 + 5): FP.
    # person: 4 TP -> PQ 1; sky: 1 / (1 + 0.5); road: 2 / (2 + 0.5).
    assert result["per_class"]["1"]["pq"] == pytest.approx(1.0)
    assert result["per_class"]["119"]["pq"] == pytest.approx(1 / 1.5)
    assert result["per_class"]["149"]["pq"] == pytest.approx(2 / 2.5)


def test_image_ids_are_cocos_integers_for_digit_stems(tmp_path):
    assert coco_format.image_id_of("000000000139") == 139
    assert coco_format.image_id_of("000010000001") == 10000001
    assert coco_format.image_id_of("frame_12") == "frame_12"
    assert coco_format.image_id_of("١٢") == "١٢"  # non-ASCII digits: a name
    # The evaluator's files: both sides carry the same (integer) id, so the
    # command matches them, and COCO's own ground truth would match too.
    hook = coco_format.save_predictions_fn(DESCRIPTOR)
    hook(None, PANOPTIC[None], PANOPTIC[None], [b"val/000000000139.jpg"],
         str(tmp_path))
    root = f"{tmp_path}/coco"
    for side in ("groundtruth", "predictions"):
        data = json.load(open(f"{root}/{side}/panoptic.json"))
        assert [a["image_id"] for a in data["annotations"]] == [139]
        assert data["annotations"][0]["file_name"] == "000000000139.png"
    result = panoptic_quality.evaluate(
        f"{root}/groundtruth/panoptic.json", f"{root}/groundtruth/panoptic",
        f"{root}/predictions/panoptic.json", f"{root}/predictions/panoptic",
        workers=1)
    assert result["All"]["pq"] == pytest.approx(1.0)

"""Tests for max_deeplab_tf.data.dataset_info."""

import pytest
import tensorflow as tf

from max_deeplab_tf.data import dataset_info


def _cat(cid, name, thing, color=None):
    entry = {"id": cid, "name": name, "isthing": thing}
    if color is not None:
        entry["color"] = color
    return entry


def test_descriptor_from_categories_sorts_by_id():
    categories = [_cat(31, "water", 0, [1, 2, 3]), _cat(3, "box", 1),
                  _cat(7, "cone", 1), _cat(20, "sky", 0)]
    d = dataset_info.descriptor_from_coco_categories(categories, "mine", 1000)
    # Sorted ids 3, 7, 20, 31 -> classes 1, 2, 3, 4; void 0.
    assert d.num_classes == 5
    assert d.ignore_label == 0
    assert d.label_divisor == 1000
    assert d.thing_class_ids == (1, 2)
    assert d.stuff_class_ids == (3, 4)
    assert d.class_names == ("void", "box", "cone", "sky", "water")
    assert d.category_ids == (-1, 3, 7, 20, 31)
    assert d.colormap[0] == (0, 0, 0)
    assert d.colormap[4] == (1, 2, 3)
    assert len(set(d.colormap)) == 5  # Generated colours are distinct.
    assert dataset_info.category_to_class(d) == {3: 1, 7: 2, 20: 3, 31: 4}


@pytest.mark.parametrize("categories, message", [
    ([], "non-empty"),
    ([_cat(1, "a", 1), _cat(1, "b", 0)], "duplicate category id"),
    ([{"id": 1, "name": "a"}], "lacks field 'isthing'"),
    ([_cat("x", "a", 1)], "is not an integer"),
    ([_cat(1, "a", 2)], "isthing 2"),
    ([_cat(1, "a", 1, [1, 2])], "color"),
])
def test_bad_categories_are_named(categories, message):
    with pytest.raises(ValueError, match=message) as info:
        dataset_info.descriptor_from_coco_categories(categories, "x",
                                                     source="f.json")
    assert "f.json" in str(info.value)


def test_json_round_trip_and_path_lookup(tmp_path):
    d = dataset_info.descriptor_from_coco_categories(
        [_cat(5, "a", 1), _cat(9, "b", 0)], "mine")
    assert dataset_info.DatasetDescriptor.from_json(d.to_json()) == d
    path = str(tmp_path / "descriptor.json")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(d.to_json())
    assert dataset_info.get_dataset_descriptor(path) == d


def test_ram_filesystem_descriptor():
    d = dataset_info.get_dataset_descriptor("synthetic_panoptic")
    path = "ram://dataset_info_test/descriptor.json"
    tf.io.gfile.makedirs("ram://dataset_info_test")
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(d.to_json())
    assert dataset_info.get_dataset_descriptor(path) == d


def test_unknown_name_lists_builtins():
    with pytest.raises(ValueError, match="coco_panoptic"):
        dataset_info.get_dataset_descriptor("no_such_dataset")


def test_same_classes_ignores_names_only():
    a = dataset_info.get_dataset_descriptor("synthetic_panoptic")
    import dataclasses
    assert dataset_info.same_classes(a, dataclasses.replace(a, name="b"))
    assert not dataset_info.same_classes(
        a, dataclasses.replace(a, label_divisor=1000))

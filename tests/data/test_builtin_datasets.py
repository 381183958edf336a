"""Tests for max_deeplab_tf.data.builtin_datasets."""

from max_deeplab_tf.data import builtin_datasets
from max_deeplab_tf.data import dataset_info


def test_coco_table_has_133_categories_80_things_first():
    table = builtin_datasets.COCO_CATEGORIES
    ids = [c[0] for c in table]
    assert len(table) == 133
    assert ids == sorted(ids) and len(set(ids)) == 133
    assert sum(c[2] for c in table) == 80
    # COCO numbers things 1..90 and stuff 92..200.
    assert all(c[2] == 1 for c in table[:80])
    assert all(c[2] == 0 for c in table[80:])
    assert ids[0] == 1 and ids[79] == 90 and ids[80] == 92 and ids[-1] == 200


def test_coco_descriptor_matches_deeplab2():
    coco = dataset_info.get_dataset_descriptor("coco_panoptic")
    # deeplab2's COCO_PANOPTIC_INFORMATION.
    assert coco.num_classes == 134
    assert coco.ignore_label == 0
    assert coco.label_divisor == 256
    assert coco.thing_class_ids == tuple(range(1, 81))
    assert coco.stuff_class_ids == tuple(range(81, 134))
    # deeplab2's coco_constants.get_id_mapping, a few entries by hand.
    mapping = dataset_info.category_to_class(coco)
    assert mapping[1] == 1          # person
    assert mapping[13] == 12        # stop sign (COCO has no id 12)
    assert mapping[90] == 80        # toothbrush
    assert mapping[92] == 81        # banner
    assert mapping[200] == 133      # rug-merged
    assert coco.class_names[1] == "person"
    assert coco.class_names[133] == "rug-merged"
    assert coco.colormap[0] == (0, 0, 0)
    assert coco.colormap[1] == (220, 20, 60)
    assert coco.category_ids[0] == -1


def test_synthetic_descriptor_is_small():
    synthetic = dataset_info.get_dataset_descriptor("synthetic_panoptic")
    assert synthetic.num_classes == 7
    assert synthetic.thing_class_ids == (1, 2, 3)
    assert synthetic.stuff_class_ids == (4, 5, 6)
    assert synthetic.class_names == ("void", "disc", "box", "triangle",
                                     "sky", "ground", "water")
    assert synthetic.category_ids == (-1, 1, 3, 7, 20, 25, 31)


def test_both_are_registered():
    names = dataset_info.registered_names()
    assert "coco_panoptic" in names and "synthetic_panoptic" in names


def test_no_import_circle_with_dataset_info():
    # builtin_datasets is data only; dataset_info imports it, not the
    # reverse. Checked in a fresh interpreter, in both import orders.
    import subprocess
    import sys
    code = ("import sys; from max_deeplab_tf.data import {first}; "
            "from max_deeplab_tf.data import dataset_info as d; "
            "assert 'synthetic_panoptic' in d.registered_names(); "
            "print(sorted(m for m in sys.modules if m.startswith("
            "'max_deeplab_tf')))")
    run = subprocess.run(
        [sys.executable, "-c", code.format(first="builtin_datasets")],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    run = subprocess.run(
        [sys.executable, "-c",
         "import sys; from max_deeplab_tf.data import builtin_datasets; "
         "print(sorted(m for m in sys.modules if m.startswith("
         "'max_deeplab_tf')))"],
        capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "max_deeplab_tf.data.dataset_info" not in run.stdout
    assert "tensorflow" not in run.stdout
    import ast
    with open(builtin_datasets.__file__) as f:
        tree = ast.parse(f.read())
    assert not [node for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))]

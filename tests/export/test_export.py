"""SavedModel export: geometry of the resize/pad/undo steps, and a reload in
a fresh process that does not import max_deeplab_tf."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf import export
from max_deeplab_tf.export import serving
from max_deeplab_tf.inference import post_processing
from max_deeplab_tf.data import dataset_info
from tests.export import tiny_model

MAP_KEYS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
            common.PRED_INSTANCE_KEY, common.PRED_INSTANCE_SCORES_KEY,
            common.PRED_SEMANTIC_SCORES_KEY)

RELOAD_SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
export_dir, inputs, outputs = sys.argv[1:4]
served = tf.saved_model.load(export_dir).signatures["serving_default"]
data = np.load(inputs)
result = {}
for name in data.files:
    out = served(images=tf.constant(data[name]))
    for key, value in out.items():
        result[f"{name}/{key}"] = value.numpy()
np.savez(outputs, **result)
# An editable install preloads its own finder module; only the package counts.
print(json.dumps(sorted(m for m in sys.modules if m == "max_deeplab_tf"
                        or m.startswith("max_deeplab_tf."))))
"""


def test_fit_size_keeps_aspect_ratio():
    crop = [33, 41]
    cases = {(33, 41): [33, 41], (66, 82): [33, 41], (10, 10): [33, 33],
             (100, 50): [33, 17], (20, 200): [4, 41], (1, 1000): [1, 41]}
    for (h, w), expected in cases.items():
        assert serving.fit_size(h, w, crop).numpy().tolist() == expected


def test_nearest_indices_align_corners():
    # Source 3 -> target 5: positions 0, 0.5, 1, 1.5, 2 -> 0, 1, 1, 2, 2.
    got = serving._nearest_indices(tf.constant(3), tf.constant(5))
    assert got.numpy().tolist() == [0, 1, 1, 2, 2]
    # Target 1: the first pixel.
    assert serving._nearest_indices(tf.constant(4),
                                    tf.constant(1)).numpy().tolist() == [0]


def test_resize_pad_and_undo_geometry():
    images = np.random.RandomState(0).randint(0, 256, [1, 17, 21, 3])
    padded, size = serving.resize_and_pad(tf.constant(images, tf.uint8),
                                          [33, 41])
    # scale = min(33/17, 41/21) = 1.941 -> [33, 41]; no padding needed.
    assert size.numpy().tolist() == [33, 41]
    # Corners aligned: the corner pixels are the input's.
    np.testing.assert_allclose(padded[0, 0, 0], images[0, 0, 0])
    np.testing.assert_allclose(padded[0, -1, -1], images[0, -1, -1])
    padded, size = serving.resize_and_pad(tf.constant(images[:, :, :10]),
                                          [33, 41])
    assert size.numpy().tolist() == [33, 19]
    assert np.all(padded.numpy()[:, :, 19:] == serving.PAD_VALUE)
    # Undo: maps whose value is the column index come back at the input
    # size with each input column mapped to the nearest resized column.
    maps = tf.constant(np.tile(np.arange(41), [1, 33, 1]), tf.int32)
    back = serving.crop_and_resize_back(maps, tf.constant([33, 19]),
                                        tf.constant([17, 10]))
    assert back.shape == (1, 17, 10)
    expected = np.floor(np.arange(10) * 18 / 9 + 0.5).astype(int)
    assert back.numpy()[0, 0].tolist() == expected.tolist()


COCO = dataset_info.get_dataset_descriptor("coco_panoptic")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    config = tiny_model.config()
    model = tiny_model.build(config)
    export_root = str(tmp_path_factory.mktemp("export") / "saved")
    export_dir = export.export_saved_model(model, config, export_root,
                                           global_step=5)
    return model, config, export_dir


def test_reload_in_fresh_process_matches_in_process(exported, tmp_path):
    model, config, export_dir = exported
    rng = np.random.RandomState(1)
    inputs = {
        "crop_size": rng.randint(0, 256, [2, 33, 33, 3]).astype(np.uint8),
        "larger": rng.randint(0, 256, [1, 70, 50, 3]).astype(np.uint8),
        "wide": rng.randint(0, 256, [1, 12, 90, 3]).astype(np.uint8),
    }
    np.savez(tmp_path / "in.npz", **inputs)
    script = tmp_path / "reload.py"
    script.write_text(RELOAD_SCRIPT)
    env = dict(os.environ, PYTHONPATH="")
    run = subprocess.run(
        [sys.executable, str(script), export_dir, str(tmp_path / "in.npz"),
         str(tmp_path / "out.npz")], capture_output=True, text=True,
        timeout=300, cwd=str(tmp_path), env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == []
    reloaded = np.load(tmp_path / "out.npz")

    post = post_processing.PostProcessor(config.evaluator_options, COCO,
                                         [33, 33])
    # At the crop size resizing is the identity: the export must give what
    # the model + post-processing give directly.
    direct = post(model(inputs["crop_size"].astype(np.float32),
                        training=False))
    for key in MAP_KEYS:
        got = reloaded[f"crop_size/{key}"]
        want = direct[key].numpy()
        assert got.shape == want.shape == (2, 33, 33)
        if key in (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
                   common.PRED_INSTANCE_KEY):
            np.testing.assert_array_equal(got, want, err_msg=key)
        else:
            np.testing.assert_allclose(got, want, atol=1e-5, err_msg=key)
    assert len(np.unique(reloaded["crop_size/panoptic_pred"])) > 2

    for name in ("larger", "wide"):
        image = inputs[name]
        in_process = serving.predict(model, post, tf.constant(image),
                                     [33, 33])
        got = reloaded[f"{name}/{common.PRED_PANOPTIC_KEY}"]
        assert got.shape == image.shape[:3]
        np.testing.assert_array_equal(
            got, in_process[common.PRED_PANOPTIC_KEY].numpy())
        probs = reloaded[f"{name}/{serving.PRED_TRANSFORMER_CLASS_PROBS_KEY}"]
        assert probs.shape == (1, 8, COCO.num_classes)
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_export_writes_a_version_with_descriptor_and_no_temporary(exported):
    _, _, export_dir = exported
    root = os.path.dirname(export_dir)
    assert os.path.basename(export_dir) == "5"
    assert export.load_descriptor(export_dir) == COCO
    assert export.load_descriptor(root) == COCO  # the root resolves
    assert tf.io.gfile.exists(f"{export_dir}/{export.CONFIG_FILE}")
    info = json.load(open(f"{export_dir}/{export.INFO_FILE}"))
    assert info["global_step"] == 5 and len(info["fingerprint"]) == 64
    assert tf.saved_model.contains_saved_model(export_dir)
    assert os.listdir(root) == ["5"], "temporary left behind"


def test_export_to_gfile_memory_path(exported):
    _, config, _ = exported
    model = tiny_model.mini_model()
    export_root = "ram://export_test/saved"
    export_dir = export.export_saved_model(model, config, export_root,
                                           global_step=3)
    assert export_dir == f"{export_root}/3"
    assert export.resolve_saved_model(export_root) == export_dir
    assert not [n for n in tf.io.gfile.listdir(export_root)
                if n.startswith(".tmp")], "temporary left behind"
    assert export.load_descriptor(export_dir) == COCO
    served = tf.saved_model.load(export_dir).signatures["serving_default"]
    images = np.random.RandomState(0).randint(0, 256, [1, 9, 14, 3])
    out = served(images=tf.constant(images, tf.uint8))
    assert out[common.PRED_PANOPTIC_KEY].shape == (1, 9, 14)
    post = post_processing.PostProcessor(config.evaluator_options, COCO,
                                         [33, 33])
    want = serving.predict(model, post, tf.constant(images, tf.uint8),
                           [33, 33])
    np.testing.assert_array_equal(out[common.PRED_PANOPTIC_KEY].numpy(),
                                  want[common.PRED_PANOPTIC_KEY].numpy())

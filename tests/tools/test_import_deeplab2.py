"""deeplab2 checkpoint import, end to end, against deeplab2's own numbers.

Uses ../shared/fixtures/dl2_max_s_small: a deeplab2 MaX-DeepLab-S checkpoint
(width 0.125), its config, an input image and deeplab2's raw and
post-processed outputs on it. The import goes through the command line; the
native checkpoint it writes is then loaded the way the trainer's
initial_checkpoint loads it, and the model plus our post-processing must give
deeplab2's outputs.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf.config import load_experiment
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.inference import PostProcessor
from max_deeplab_tf.model import build_model
from max_deeplab_tf.tools import import_deeplab2
from max_deeplab_tf.training import checkpoints

from tests.conftest import REPO_ROOT, SHARED_FIXTURES

FIXTURE = os.path.join(SHARED_FIXTURES, "dl2_max_s_small")
FLOAT_KEYS = (common.PRED_TRANSFORMER_CLASS_LOGITS_KEY,
              common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY,
              common.PRED_PIXEL_SPACE_NORMALIZED_FEATURE_KEY,
              common.PRED_SEMANTIC_LOGITS_KEY)
MAP_KEYS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
            common.PRED_INSTANCE_KEY)
ENV = {"TRAIN_SET": "/unused/train*", "VAL_SET": "/unused/val*"}


def require_fixture():
    if not os.path.isdir(FIXTURE):
        pytest.skip(f"deeplab2 fixture folder {FIXTURE} is absent")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    require_fixture()
    output_dir = str(tmp_path_factory.mktemp("imported"))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    subprocess.run(
        [sys.executable, "-m", "max_deeplab_tf.tools.import_deeplab2",
         f"--deeplab2_config={FIXTURE}/config.textproto",
         f"--deeplab2_checkpoint={FIXTURE}/ckpt/ckpt-0",
         f"--output_dir={output_dir}"],
        check=True, cwd=REPO_ROOT, env=env, timeout=300)
    return output_dir


def test_import_writes_config_and_native_checkpoint(imported):
    assert tf.io.gfile.exists(os.path.join(imported, "experiment.textproto"))
    assert tf.train.latest_checkpoint(imported).endswith("ckpt-0")


def test_imported_model_reproduces_deeplab2(imported):
    experiment = load_experiment(
        os.path.join(imported, "experiment.textproto"), environ=ENV)
    model = build_model(experiment)
    image = np.load(os.path.join(FIXTURE, "input.npz"))["image"]
    images = tf.constant(image[None].astype(np.float32))
    model(images, training=False)
    checkpoints.load_initial_checkpoint(
        model, tf.train.latest_checkpoint(imported), log=False)
    outputs = model(images, training=False)
    reference = np.load(os.path.join(FIXTURE, "outputs.npz"))
    for key in FLOAT_KEYS:
        expected = reference[key]
        tolerance = 1e-4 * np.abs(expected).max()
        np.testing.assert_allclose(outputs[key].numpy(), expected, rtol=0,
                                   atol=tolerance, err_msg=key)
    processor = PostProcessor(
        experiment.evaluator_options,
        dataset_info.get_dataset_descriptor("coco_panoptic"),
        list(experiment.eval_dataset_options.crop_size))
    maps = processor(outputs)
    for key in MAP_KEYS:
        agreement = np.mean(maps[key].numpy() == reference[key])
        assert agreement >= 0.999, (key, agreement)


def test_model_mismatch_stops_and_writes_nothing(tmp_path):
    require_fixture()
    config = (open(os.path.join(FIXTURE, "config.textproto")).read()
              .replace("backbone_width_multiplier: 0.125",
                       "backbone_width_multiplier: 0.25"))
    config_path = tmp_path / "wider.textproto"
    config_path.write_text(config)
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match="shape mismatches"):
        import_deeplab2.import_deeplab2(
            str(config_path), os.path.join(FIXTURE, "ckpt"), str(output_dir))
    assert not output_dir.exists()


# --- bad inputs: one line, exit code 2, nothing overwritten ---------------

def run_importer(*flags, timeout=300):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(
        [sys.executable, "-m", "max_deeplab_tf.tools.import_deeplab2",
         *flags], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
        timeout=timeout)


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    errors = [line for line in result.stderr.splitlines()
              if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


PANOPTIC_DEEPLAB_CONFIG = """\
experiment_name: "${EXPERIMENT_NAME}"
model_options {
  backbone { name: "resnet50" output_stride: 32 }
  decoder { feature_key: "res5" decoder_channels: 256 }
  panoptic_deeplab {
    low_level { feature_key: "res3" channels_project: 64 }
    semantic_head { output_channels: 134 head_channels: 256 }
  }
}
"""


def test_missing_flag_is_one_line(tmp_path):
    result = run_importer(f"--deeplab2_config={tmp_path}/c.textproto",
                          f"--output_dir={tmp_path}/out")
    assert_one_line_error(result, "--deeplab2_checkpoint is required")


def test_missing_config_and_checkpoint_are_one_line(tmp_path):
    result = run_importer(f"--deeplab2_config={tmp_path}/none.textproto",
                          f"--deeplab2_checkpoint={tmp_path}/ckpt-1",
                          f"--output_dir={tmp_path}/out")
    assert_one_line_error(result, f"{tmp_path}/none.textproto",
                          "cannot read the deeplab2 config")
    config = tmp_path / "panoptic.textproto"
    config.write_text(PANOPTIC_DEEPLAB_CONFIG)
    result = run_importer(f"--deeplab2_config={config}",
                          f"--deeplab2_checkpoint={tmp_path}/ckpt-1",
                          f"--output_dir={tmp_path}/out")
    assert_one_line_error(result, str(config),
                          "model_options.max_deeplab is not set")
    require_fixture()
    result = run_importer(f"--deeplab2_config={FIXTURE}/config.textproto",
                          f"--deeplab2_checkpoint={tmp_path}/ckpt-1",
                          f"--output_dir={tmp_path}/out")
    assert_one_line_error(result, "--deeplab2_checkpoint",
                          f"{tmp_path}/ckpt-1", "no such checkpoint")
    result = run_importer(f"--deeplab2_config={FIXTURE}/config.textproto",
                          f"--deeplab2_checkpoint={tmp_path}",
                          f"--output_dir={tmp_path}/out")
    assert_one_line_error(result, "holds no checkpoint")
    assert not (tmp_path / "out").exists()


def test_checkpoint_missing_variables_is_one_line(tmp_path):
    require_fixture()
    from tests.model.test_deeplab2_variable_map import (
        write_deeplab2_style_checkpoint)
    prefix = os.path.join(FIXTURE, "ckpt", "ckpt-0")
    reader = tf.train.load_checkpoint(prefix)
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    names = [n for n, _ in tf.train.list_variables(prefix)
             if n.endswith(suffix) and "optimizer" not in n
             and not n.startswith(("global_step", "save_counter"))]
    dropped = "semantic_last_layer/bias"
    values = {n[:-len(suffix)]: reader.get_tensor(n) for n in names
              if n[:-len(suffix)] != dropped}
    partial = write_deeplab2_style_checkpoint(values, str(tmp_path / "ckpt"))
    result = run_importer(f"--deeplab2_config={FIXTURE}/config.textproto",
                          f"--deeplab2_checkpoint={partial}",
                          f"--output_dir={tmp_path}/out")
    line = assert_one_line_error(result, partial,
                                 "1 model variable(s) not in the checkpoint",
                                 "semantic_last_layer/bias")
    assert len(line) < 2000
    assert not (tmp_path / "out").exists()


def test_foreign_output_dir_is_refused_and_kept(tmp_path):
    require_fixture()
    output = tmp_path / "precious"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    (output / "checkpoint").write_text("model_checkpoint_path: 'ckpt-9'\n")
    result = run_importer(f"--deeplab2_config={FIXTURE}/config.textproto",
                          f"--deeplab2_checkpoint={FIXTURE}/ckpt/ckpt-0",
                          f"--output_dir={output}")
    assert_one_line_error(result, "--output_dir", str(output), "notes.txt",
                          "not empty")
    assert sorted(os.listdir(output)) == ["checkpoint", "notes.txt"]
    assert (output / "notes.txt").read_text() == "mine"
    assert (output / "checkpoint").read_text() == (
        "model_checkpoint_path: 'ckpt-9'\n")


def test_earlier_import_is_replaced_and_nothing_else_is_left(imported,
                                                             tmp_path):
    # The output of the module fixture's import, imported again in place.
    import shutil
    again = tmp_path / "again"
    shutil.copytree(imported, again)
    before = sorted(os.listdir(again))
    result = import_deeplab2.import_deeplab2(
        os.path.join(FIXTURE, "config.textproto"),
        os.path.join(FIXTURE, "ckpt"), str(again))
    assert sorted(os.listdir(again)) == before
    assert not [n for n in before if n.startswith(".import-")]
    assert result.checkpoint_path == str(again / "ckpt-0")
    assert tf.train.latest_checkpoint(str(again)) == str(again / "ckpt-0")

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

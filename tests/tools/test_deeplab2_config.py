"""Tests for max_deeplab_tf.tools.deeplab2_config."""

import os
import textwrap

import pytest

from max_deeplab_tf.config import load_experiment
from max_deeplab_tf.tools import deeplab2_config

from tests.conftest import SHARED_FIXTURES

DEEPLAB2_TEXT = textwrap.dedent("""\
    experiment_name: "${EXPERIMENT_NAME}"
    model_options {
      initial_checkpoint: "${INIT_CHECKPOINT}"
      backbone { name: "max_deeplab_s" output_stride: 16 }
      decoder { feature_key: "feature_semantic" atrous_rates: 6 }
      max_deeplab {
        pixel_space_head { output_channels: 128 head_channels: 256 }
        auxiliary_semantic_head { output_channels: 134 head_channels: 256 }
      }
    }
    trainer_options {
      loss_options {
        pq_style_loss { weight: 3.0 }
        center_loss { weight: 200 }
      }
    }
    train_dataset_options {
      dataset: "coco_panoptic"
      file_pattern: "${TRAIN_SET}"
      crop_size: 641
      crop_size: 641
      use_two_frames: false
    }
    """)


def test_translation_keeps_shared_fields_and_lists_dropped_ones():
    result = deeplab2_config.translate_config_text(DEEPLAB2_TEXT, "dl2.txt")
    e = result.experiment
    assert e.model_options.backbone.name == "max_deeplab_s"
    assert e.model_options.initial_checkpoint == "${INIT_CHECKPOINT}"
    assert e.trainer_options.loss_options.pq_style_loss.weight == 3.0
    assert list(e.train_dataset_options.crop_size) == [641, 641]
    assert len(result.dropped_fields) == 1
    assert result.dropped_fields[0].startswith(
        "dl2.txt:14: trainer_options.loss_options.center_loss: unknown field")


def test_written_translation_reloads_with_our_loader(tmp_path):
    result = deeplab2_config.translate_config_text(DEEPLAB2_TEXT, "dl2.txt")
    path = tmp_path / "experiment.textproto"
    path.write_text(result.to_textproto())
    experiment = load_experiment(
        str(path), environ={"EXPERIMENT_NAME": "x", "INIT_CHECKPOINT": "",
                            "TRAIN_SET": "/d/*"})
    assert experiment.experiment_name == "x"
    assert experiment.model_options.max_deeplab.pixel_space_head == (
        result.experiment.model_options.max_deeplab.pixel_space_head)
    assert experiment.train_dataset_options.file_pattern[0] == "/d/*"
    assert "center_loss" in path.read_text()  # listed in the header comment


def test_not_a_max_deeplab_config():
    text = 'model_options { backbone { name: "resnet50" } }'
    with pytest.raises(deeplab2_config.Deeplab2ConfigError,
                       match="model_options.max_deeplab is not set"):
        deeplab2_config.translate_config_text(text, "pd.txt")


def test_syntax_error_names_file_and_line():
    with pytest.raises(deeplab2_config.Deeplab2ConfigError,
                       match=r"bad.txt:2: syntax error"):
        deeplab2_config.translate_config_text(
            'experiment_name: "a"\nmodel_options {{\n', "bad.txt")


def test_fixture_config_translates_without_dropping_anything():
    path = os.path.join(SHARED_FIXTURES, "dl2_max_s_small", "config.textproto")
    if not os.path.exists(path):
        pytest.skip(f"deeplab2 fixture folder {os.path.dirname(path)} is "
                    "absent")
    result = deeplab2_config.translate_config_file(path)
    assert result.dropped_fields == []
    assert result.experiment.model_options.backbone.stem_width_multiplier == (
        pytest.approx(0.125))

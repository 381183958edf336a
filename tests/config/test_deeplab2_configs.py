"""deeplab2's own MaX-DeepLab configs load with our loader unchanged."""

import os

import pytest

from max_deeplab_tf.config import load_experiment

from tests.conftest import SHARED_FIXTURES

ENV = {"TRAIN_SET": "/data/train*", "VAL_SET": "/data/val*"}


@pytest.mark.parametrize("fixture, backbone", [
    ("dl2_max_s_small", "max_deeplab_s"),
    ("dl2_max_l_small_structure", "max_deeplab_l"),
])
def test_deeplab2_fixture_config_loads(fixture, backbone):
    path = os.path.join(SHARED_FIXTURES, fixture, "config.textproto")
    if not os.path.exists(path):
        pytest.skip(f"deeplab2 fixture folder {os.path.dirname(path)} is "
                    "absent")
    experiment = load_experiment(path, environ=ENV)
    options = experiment.model_options
    assert options.backbone.name == backbone
    assert options.backbone.backbone_width_multiplier == pytest.approx(0.125)
    assert options.max_deeplab.pixel_space_head.output_channels == 128
    assert [low.feature_key for low in
            options.max_deeplab.auxiliary_low_level] == ["res3", "res2"]
    assert experiment.train_dataset_options.thing_id_mask_annotations
    assert experiment.evaluator_options.thing_area_limit in (100, 256)

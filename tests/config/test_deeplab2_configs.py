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


# deeplab2's published COCO configs that ours mirror, copied as data (with
# their source commit) into tests/config/data/.
DEEPLAB2_COCO = {
    "max_deeplab_s.textproto":
        "deeplab2_max_deeplab_s_os16_res641_100k.textproto",
    "max_deeplab_l.textproto":
        "deeplab2_max_deeplab_l_os16_res1025_100k.textproto",
}


def _documented_differences(experiment, ours):
    """The differences our configs' headers name, applied to deeplab2's."""
    # A fixed experiment name instead of deeplab2's ${EXPERIMENT_NAME}.
    assert experiment.experiment_name == "${EXPERIMENT_NAME}"
    experiment.experiment_name = ours.experiment_name
    # Our own field, spelled out at its default.
    assert not experiment.trainer_options.HasField("mixed_precision_policy")
    experiment.trainer_options.mixed_precision_policy = "float32"


@pytest.mark.parametrize("ours_name", sorted(DEEPLAB2_COCO))
def test_coco_configs_are_deeplab2s_field_by_field(ours_name):
    from google.protobuf import text_format

    from max_deeplab_tf.config import textproto
    from max_deeplab_tf.protos import config_pb2
    from max_deeplab_tf.tools import deeplab2_config
    from tests.conftest import REPO_ROOT

    theirs_path = os.path.join(os.path.dirname(__file__), "data",
                               DEEPLAB2_COCO[ours_name])
    with open(theirs_path) as f:
        translated = deeplab2_config.translate_config_text(f.read(),
                                                           theirs_path)
    assert translated.dropped_fields == []
    ours_path = os.path.join(REPO_ROOT, "configs", ours_name)
    ours = config_pb2.ExperimentOptions()
    with open(ours_path) as f:
        parsed = textproto.parse(f.read(), ours, ours_path)
    assert parsed.complete and not parsed.problems, parsed.problems
    expected = translated.experiment
    _documented_differences(expected, ours)
    # Field by field, with presence: a field set in one and left at its
    # default in the other counts as a difference too.
    assert text_format.MessageToString(ours) == text_format.MessageToString(
        expected)
    assert ours == expected
    # The two settings issue #15 was about.
    assert ours.model_options.initial_checkpoint == "${INIT_CHECKPOINT}"
    if "_l" in ours_name:
        assert (ours.train_dataset_options.augmentations
                .autoaugment_policy_name == "simple_classification_policy")

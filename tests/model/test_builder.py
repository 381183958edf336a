"""Tests for max_deeplab_tf.model.builder (config -> model)."""

import json

import keras
import pytest
import tensorflow as tf

import max_deeplab_tf
from max_deeplab_tf.model import builder
from tests.model import helpers


def test_config_options_reach_the_model():
    config = helpers.tiny_config(
        "model_options { backbone { drop_path_keep_prob: 0.6 "
        "drop_path_schedule: 'constant' } max_deeplab { num_mask_slots: 5 } }",
        "trainer_options { solver_options { batchnorm_momentum: 0.9 "
        "batchnorm_epsilon: 0.01 use_sync_batchnorm: false } }")
    encoder = builder.encoder_config_from_options(config)
    assert encoder["num_mask_slots"] == 5
    assert encoder["batch_norm_config"] == {
        "momentum": pytest.approx(0.9), "epsilon": pytest.approx(0.01),
        "synchronized": False}
    head = builder.head_config_from_options(config, encoder)
    assert head["num_classes"] == 134
    # COCO's ignore label 0 is a class index, so the 134 outputs already
    # include void (predicted by the last one).
    assert head["num_transformer_classes"] == 134
    # ASPP image pooling over the 65x65 training crop's stride-16 feature.
    assert head["decoder_config"]["pool_size"] == (5, 5)
    model = max_deeplab_tf.build_model(config)
    model.build((None, 33, 33, 3))
    block = model.encoder._stage5._block1
    assert block.drop_path_keep_prob == pytest.approx(0.6)
    assert model.encoder.memory_feature.shape == (1, 5, 64)
    assert block._conv1_bn_act._batch_norm.momentum == pytest.approx(0.9)
    assert not block._conv1_bn_act._batch_norm.synchronized


def test_void_class_is_added_when_the_ignore_label_is_not_a_class(tmp_path):
    descriptor = {"name": "cityscapes_like", "num_classes": 19,
                  "ignore_label": 255, "label_divisor": 1000,
                  "thing_class_ids": list(range(11, 19))}
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps(descriptor))
    config = helpers.tiny_config(
        f"train_dataset_options {{ dataset: '{path}' }}",
        f"eval_dataset_options {{ dataset: '{path}' }}",
        "model_options { max_deeplab { auxiliary_semantic_head { "
        "output_channels: 19 } } }")
    encoder = builder.encoder_config_from_options(config)
    head = builder.head_config_from_options(config, encoder)
    assert (head["num_classes"], head["num_transformer_classes"]) == (19, 20)


@pytest.mark.parametrize("override,message", [
    ("model_options { backbone { name: 'resnet50' } }", "backbone.name"),
    ("model_options { backbone { use_squeeze_and_excite: true } }",
     "use_squeeze_and_excite"),
    ("model_options { backbone { use_sac_beyond_stride: 16 } }",
     "use_sac_beyond_stride"),
    ("model_options { backbone { output_stride: 8 } }", "output_stride"),
    ("model_options { max_deeplab { auxiliary_semantic_head { "
     "output_channels: 20 } } }", "differs from the 134 classes"),
    ("model_options { max_deeplab { pixel_space_head { output_channels: 0 } "
     "} }", "pixel_space_head"),
])
def test_bad_options_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        max_deeplab_tf.build_model(helpers.tiny_config(override))


def test_max_deeplab_l_has_no_auxiliary_semantic_decoder():
    with open(f"{helpers.REPO_ROOT}/configs/max_deeplab_l.textproto") as f:
        text = f.read().replace("${TRAIN_SET}", "t").replace("${VAL_SET}", "v")
    config = helpers.parse_config(text)
    encoder = builder.encoder_config_from_options(config)
    head = builder.head_config_from_options(config, encoder)
    assert head["decoder_config"] is None
    assert head["num_transformer_classes"] == 134


def test_build_for_input_size_creates_the_weights_a_forward_pass_creates():
    # Symbolic build of our model: the same variables (paths and shapes) as
    # one eager forward pass on zeros.
    config = helpers.tiny_config()
    built = max_deeplab_tf.build_model(config)
    builder.build_for_input_size(built, 33, 33)
    called = max_deeplab_tf.build_model(config)
    called(tf.zeros([1, 33, 33, 3]), training=False)
    assert built.built and len(built.weights) == len(called.weights) > 0
    assert ([(v.path, tuple(v.shape)) for v in built.weights]
            == [(v.path, tuple(v.shape)) for v in called.weights])


class _OwnModel(keras.Model):
    """A user's model without a build(): Keras builds it by a symbolic
    call."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3)
        self.norm = keras.layers.BatchNormalization()

    def call(self, images, training=False):
        return self.norm(self.conv(images), training=training)


class _ValueDependentModel(keras.Model):
    """A model whose call needs values (Python control flow on a tensor): a
    symbolic pass fails, so one forward pass on zeros builds it."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(2, 1)

    def call(self, images, training=False):
        if float(tf.reduce_max(images)) > 1e6:
            images = images / 255.0
        return self.conv(images)


def test_build_for_input_size_builds_other_models():
    own = _OwnModel()
    builder.build_for_input_size(own, 9, 11)
    assert [tuple(v.shape) for v in own.trainable_weights] == [
        (3, 3, 3, 4), (4,), (4,), (4,)]
    value_dependent = _ValueDependentModel()
    builder.build_for_input_size(value_dependent, 5, 5)
    assert value_dependent.built
    assert [tuple(v.shape) for v in value_dependent.weights] == [
        (1, 1, 3, 2), (2,)]

"""model_options.initial_checkpoint from deeplab2's checkpoints: its
ImageNet-pretrained backbones and its full MaX-DeepLab checkpoints, read
directly (no import step).

Uses ../shared/fixtures/dl2_max_s_small (a deeplab2 MaX-DeepLab-S checkpoint,
width 0.125, written by deeplab2's trainer, with deeplab2's outputs). A
backbone checkpoint is written from its encoder variables under the names
deeplab2's backbone checkpoints use: deeplab2 reads them
(trainer/runner_utils.maybe_load_checkpoint) as `encoder/...` or, from TF
Model Garden's trainer, `backbone/_encoder/...`; they hold the encoder of
`max_deeplab_s_backbone` (MaX-DeepLab-S in classification mode, without
transformers), whose attribute paths are the full encoder's minus the
'transformer', 'extra' and 'memory_feature' ones
(runner_utils.check_if_variable_in_backbone).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import cli
from max_deeplab_tf import common
from max_deeplab_tf.checkpoint_keys import NON_MODEL_PREFIXES
from max_deeplab_tf.checkpoint_keys import VALUE_SUFFIX
from max_deeplab_tf.config import load_experiment
from max_deeplab_tf.model import build_model
from max_deeplab_tf.model import deeplab2_variable_map as dvm
from max_deeplab_tf.model import max_deeplab
from max_deeplab_tf.training import checkpoints

from tests.conftest import SHARED_FIXTURES
from tests.model.test_deeplab2_variable_map import (
    write_deeplab2_style_checkpoint)

FIXTURE = os.path.join(SHARED_FIXTURES, "dl2_max_s_small")
PREFIX = os.path.join(FIXTURE, "ckpt", "ckpt-0")
ENV = {"TRAIN_SET": "/unused/train*", "VAL_SET": "/unused/val*",
       "INIT_CHECKPOINT": ""}
NOT_PRETRAINED_WORDS = ("transformer", "extra", "memory_feature")


@pytest.fixture(scope="module")
def experiment():
    if not os.path.isdir(FIXTURE):
        pytest.skip(f"deeplab2 fixture folder {FIXTURE} is absent")
    return load_experiment(os.path.join(FIXTURE, "config.textproto"),
                           environ=ENV)


def fresh_model(experiment):
    model = build_model(experiment)
    model(tf.zeros([1, 129, 129, 3]), training=False)
    return model


@pytest.fixture(scope="module")
def fixture_tensors(experiment):
    """The fixture's model tensors: deeplab2 key -> array."""
    reader = tf.train.load_checkpoint(PREFIX)
    return {name[:-len(VALUE_SUFFIX)]: reader.get_tensor(name)
            for name, _ in tf.train.list_variables(PREFIX)
            if name.endswith(VALUE_SUFFIX)
            and not name.startswith(NON_MODEL_PREFIXES)}


@pytest.fixture(scope="module")
def backbone_tensors(fixture_tensors):
    """What deeplab2's max_deeplab_s_backbone checkpoint holds: the encoder
    minus transformers, 'extra' layers and the memory feature."""
    selected = {key: value for key, value in fixture_tensors.items()
                if key.startswith("encoder/")
                and not any(w in key for w in NOT_PRETRAINED_WORDS)}
    assert 100 < len(selected) < len(fixture_tensors)
    return selected


def test_backbone_keys_are_those_of_the_classification_backbone(
        experiment, backbone_tensors):
    # Our classification-mode backbone (deeplab2's max_deeplab_s_backbone:
    # same encoder, no transformers) has exactly these variables, by name.
    from max_deeplab_tf.model import builder
    config = dict(builder.encoder_config_from_options(experiment))
    config.update(classification_mode=True,
                  backbone_use_transformer_beyond_stride=0,
                  extra_decoder_use_transformer_beyond_stride=0)
    backbone = max_deeplab.MaXDeepLabBackbone(config)
    backbone(tf.zeros([1, 129, 129, 3]), training=False)
    keys = set(dvm.deeplab2_variable_map(backbone))
    assert keys == set(backbone_tensors)
    assert all(dvm.is_backbone_key(k) for k in keys)


@pytest.mark.parametrize("layout", ["encoder/", "backbone/_encoder/"])
def test_imagenet_backbone_checkpoint_fills_the_backbone(
        experiment, backbone_tensors, layout, tmp_path):
    values = {layout + key[len("encoder/"):]: value
              for key, value in backbone_tensors.items()}
    # Model Garden checkpoints also hold their classification head.
    extra = {"head/dense/kernel": np.ones([4, 3], np.float32)} if (
        layout != "encoder/") else None
    prefix = write_deeplab2_style_checkpoint(values, str(tmp_path / "bb"),
                                             extra)
    model = fresh_model(experiment)
    mapping = dvm.deeplab2_variable_map(model)
    before = {key: v.numpy().copy() for key, v in mapping.items()}
    report = checkpoints.load_initial_checkpoint(model, prefix, log=False)
    assert report.source_format == "deeplab2 backbone"
    assert sorted(report.loaded) == sorted(backbone_tensors)
    assert not report.missing and not report.shape_mismatch
    assert len(report.loaded) + len(report.not_pretrained) == len(mapping)
    for key, variable in mapping.items():
        if key in backbone_tensors:
            np.testing.assert_array_equal(variable.numpy(),
                                          backbone_tensors[key], err_msg=key)
        else:  # transformers, memory, heads: as initialised
            np.testing.assert_array_equal(variable.numpy(), before[key],
                                          err_msg=key)
    if extra:
        assert report.unused == ["head/dense/kernel"]
    assert f"loaded {len(backbone_tensors)} model variable(s)" in (
        report.summary())
    # The trainer's learning-rate split agrees on what the backbone is.
    trainable_backbone = {id(v) for v in model.backbone_variables}
    assert trainable_backbone == {
        id(mapping[k]) for k in backbone_tensors if mapping[k].trainable}


def test_missing_backbone_variable_fails_naming_it(experiment,
                                                   backbone_tensors,
                                                   tmp_path):
    dropped = sorted(backbone_tensors)[7]
    values = {k: v for k, v in backbone_tensors.items() if k != dropped}
    prefix = write_deeplab2_style_checkpoint(values, str(tmp_path / "bb"))
    model = fresh_model(experiment)
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(cli.UserError) as error:
        checkpoints.load_initial_checkpoint(model, prefix, log=False)
    message = str(error.value)
    assert message.startswith(f"model_options.initial_checkpoint {prefix}:")
    assert "1 model variable(s) missing" in message and dropped in message
    # Nothing was loaded.
    for old, variable in zip(before, model.weights):
        np.testing.assert_array_equal(old, variable.numpy())


def test_backbone_of_another_width_fails(experiment, backbone_tensors,
                                         tmp_path):
    key = next(k for k in sorted(backbone_tensors) if k.endswith("/kernel"))
    values = dict(backbone_tensors)
    values[key] = np.zeros([d + 1 for d in values[key].shape], np.float32)
    prefix = write_deeplab2_style_checkpoint(values, str(tmp_path / "bb"))
    with pytest.raises(cli.UserError, match="of another shape"):
        checkpoints.load_initial_checkpoint(fresh_model(experiment), prefix,
                                            log=False)


def test_full_deeplab2_checkpoint_reproduces_deeplab2(experiment):
    # A deeplab2 trainer checkpoint as initial_checkpoint, without import.
    model = fresh_model(experiment)
    report = checkpoints.load_initial_checkpoint(model, PREFIX, log=False)
    assert report.source_format == "deeplab2"
    assert len(report.loaded) == len(model.weights)
    assert not report.unused and not report.not_pretrained
    image = np.load(os.path.join(FIXTURE, "input.npz"))["image"]
    outputs = model(tf.constant(image[None].astype(np.float32)),
                    training=False)
    reference = np.load(os.path.join(FIXTURE, "outputs.npz"))
    key = common.PRED_TRANSFORMER_CLASS_LOGITS_KEY
    expected = reference[key]
    np.testing.assert_allclose(outputs[key].numpy(), expected, rtol=0,
                               atol=1e-4 * np.abs(expected).max())


def test_full_checkpoint_with_exclusions_keeps_the_heads(experiment):
    model = fresh_model(experiment)
    head = model.checkpoint_items["semantic_last_layer"].variables
    before = [v.numpy().copy() for v in head]
    report = checkpoints.load_initial_checkpoint(
        model, PREFIX, exclude_variables=head, log=False)
    assert sorted(report.excluded) == ["semantic_last_layer/bias",
                                       "semantic_last_layer/kernel"]
    for old, variable in zip(before, head):
        np.testing.assert_array_equal(old, variable.numpy())


def test_our_checkpoint_lacking_a_backbone_variable_fails(experiment,
                                                          tmp_path):
    source = fresh_model(experiment)
    prefix = tf.train.Checkpoint(
        model=checkpoints.model_view(source)).write(str(tmp_path / "ours"))
    model = fresh_model(experiment)
    report = checkpoints.load_initial_checkpoint(model, prefix, log=False)
    assert report.source_format == "ours"
    assert len(report.loaded) == len(model.weights)
    # The same checkpoint, minus one stem variable.
    reader = tf.train.load_checkpoint(prefix)
    keys = [k for k, _ in tf.train.list_variables(prefix)
            if k.startswith("model/_encoder/_stem/")]
    dropped = keys[0]
    values = {k[:-len(VALUE_SUFFIX)]: reader.get_tensor(k)
              for k, _ in tf.train.list_variables(prefix)
              if k.endswith(VALUE_SUFFIX) and k != dropped}
    partial = write_deeplab2_style_checkpoint(values, str(tmp_path / "part"))
    with pytest.raises(cli.UserError, match="backbone variable"):
        checkpoints.load_initial_checkpoint(fresh_model(experiment), partial,
                                            log=False)


def test_unreadable_paths_are_user_errors(tmp_path):
    with pytest.raises(cli.UserError, match="holds no checkpoint"):
        checkpoints.load_initial_checkpoint(None, str(tmp_path))
    with pytest.raises(cli.UserError, match="no such checkpoint"):
        checkpoints.load_initial_checkpoint(None, str(tmp_path / "nope"))
    # A file that is not a checkpoint.
    (tmp_path / "bad.index").write_bytes(b"not a checkpoint")
    with pytest.raises(cli.UserError, match="cannot read"):
        checkpoints.load_initial_checkpoint(None, str(tmp_path / "bad"))

"""Tests for max_deeplab_tf.model.deeplab2_variable_map."""

import numpy as np
import pytest
import tensorflow as tf

import max_deeplab_tf
from max_deeplab_tf.model import deeplab2_variable_map as dvm
from tests.model import helpers


def tiny_model():
    model = max_deeplab_tf.build_model(helpers.tiny_config())
    model.build((None, 33, 33, 3))
    return model


def write_deeplab2_style_checkpoint(values, prefix, extra=None):
    """A checkpoint keyed like deeplab2's: nested objects along each key."""
    root = tf.Module()
    for key, value in list(values.items()) + list((extra or {}).items()):
        node = root
        parts = key.split("/")
        for part in parts[:-1]:
            if not hasattr(node, part):
                setattr(node, part, tf.Module())
            node = getattr(node, part)
        setattr(node, parts[-1], tf.Variable(value))
    items = {name: getattr(root, name) for name in vars(root)
             if not name.startswith("_tf") and isinstance(
                 getattr(root, name), tf.Module)}
    return tf.train.Checkpoint(**items).write(prefix)


@pytest.fixture(scope="module")
def mapping():
    return dvm.deeplab2_variable_map(tiny_model())


def test_mapping_covers_every_weight_once_with_deeplab2_names(mapping):
    keys = list(mapping)
    assert len(set(keys)) == len(keys)
    assert len({id(v) for v in mapping.values()}) == len(keys)
    assert "encoder/memory_feature" in mapping
    assert ("encoder/_stage5/_block1/_attention/_height_axis/qkv_kernel"
            in mapping)
    assert ("encoder/_stage5/_block1_transformer/_memory_attention/"
            "_batch_norm_similarity/gamma" in mapping)
    assert "semantic_last_layer/kernel" in mapping
    assert ("pixel_space_head/conv_block/_conv1_bn_act/_depthwise/"
            "_depthwise_conv/depthwise_kernel" in mapping)
    assert "transformer_class_head/_conv/bias" in mapping
    assert not [k for k in keys if "_kernel" in k.rsplit("/", 1)[-1]
                and not k.endswith("qkv_kernel")
                and not k.endswith("depthwise_kernel")]


def test_load_fills_every_variable(mapping, tmp_path):
    rng = np.random.RandomState(0)
    values = {key: rng.normal(size=tuple(v.shape)).astype(np.float32)
              for key, v in mapping.items()}
    prefix = write_deeplab2_style_checkpoint(
        values, str(tmp_path / "ckpt"),
        extra={"optimizer/_iterations": np.int64(3)})
    model = tiny_model()
    report = dvm.load_deeplab2_checkpoint(model, prefix)
    assert report.complete and len(report.loaded) == len(model.weights)
    assert any("optimizer" in key for key in report.ignored_keys)
    loaded = dvm.deeplab2_variable_map(model)
    for key, value in values.items():
        np.testing.assert_array_equal(loaded[key].numpy(), value)


def test_strict_load_lists_unmatched_keys(mapping, tmp_path):
    rng = np.random.RandomState(1)
    values = {key: rng.normal(size=tuple(v.shape)).astype(np.float32)
              for key, v in mapping.items()}
    missing_key = "encoder/memory_feature"
    del values[missing_key]
    bad_key = "transformer_class_head/_conv/bias"
    values[bad_key] = np.zeros([3], np.float32)
    prefix = write_deeplab2_style_checkpoint(
        values, str(tmp_path / "ckpt"),
        extra={"encoder/_unknown/kernel": np.zeros([2], np.float32)})
    model = tiny_model()
    with pytest.raises(ValueError) as error:
        dvm.load_deeplab2_checkpoint(model, prefix)
    text = str(error.value)
    assert missing_key in text and "encoder/_unknown/kernel" in text
    assert bad_key in text
    report = dvm.load_deeplab2_checkpoint(model, prefix, strict=False)
    assert report.missing_model_keys == [missing_key]
    assert report.unused_checkpoint_keys == ["encoder/_unknown/kernel"]
    assert len(report.shape_mismatches) == 1


def test_unbuilt_model_is_rejected():
    model = max_deeplab_tf.build_model(helpers.tiny_config())
    with pytest.raises(ValueError, match="build the model"):
        dvm.deeplab2_variable_map(model)


def test_model_garden_layout_is_deeplab2s():
    # deeplab2 reads TF Model Garden backbones under 'backbone/_encoder/'.
    assert dvm.normalize_checkpoint_key(
        "backbone/_encoder/_stem/_conv1_bn_act/_conv/kernel") == (
            "encoder/_stem/_conv1_bn_act/_conv/kernel")
    assert dvm.normalize_checkpoint_key("encoder/_stage2/x") == (
        "encoder/_stage2/x")
    assert dvm.normalize_checkpoint_key("head/dense/kernel") == (
        "head/dense/kernel")


def test_backbone_keys_follow_deeplab2s_rule(mapping):
    # deeplab2's check_if_variable_in_backbone, written out by hand.
    for key in mapping:
        expected = key.startswith("encoder/") and not any(
            word in key for word in ("transformer", "extra", "memory_feature"))
        assert dvm.is_backbone_key(key) == expected, key
    assert not dvm.is_backbone_key("encoder/memory_feature")
    assert dvm.is_backbone_key("encoder/_stem/_conv1_bn_act/_conv/kernel")


def test_backbone_keys_are_the_models_backbone_variables():
    # The trainer's 0.1x learning-rate split and the backbone checkpoint
    # loader agree: trainable backbone keys are model.backbone_variables.
    model = tiny_model()
    mapping = dvm.deeplab2_variable_map(model)
    by_key = {id(v) for k, v in mapping.items()
              if dvm.is_backbone_key(k) and v.trainable}
    assert by_key == {id(v) for v in model.backbone_variables}
    assert any(dvm.is_backbone_key(k) and not v.trainable
               for k, v in mapping.items())  # batch-norm statistics

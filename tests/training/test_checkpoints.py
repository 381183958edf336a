"""Checkpoint keys, the Keras-3-aware model view, initial checkpoints."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.training import checkpoints


class Block(keras.layers.Layer):
    """Sub-layers as an attribute, in a list and in a dict."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = keras.layers.Conv2D(4, 3, padding="same")
        self.norm = keras.layers.BatchNormalization()
        self.stack = [keras.layers.Conv2D(4, 1), keras.layers.Conv2D(4, 1)]
        self.named = {"mix.out": keras.layers.Conv2D(4, 1)}

    def call(self, x, training=False):
        x = self.norm(self.conv(x), training=training)
        for layer in self.stack:
            x = layer(x)
        return self.named["mix.out"](x)


class Net(keras.Model):
    def __init__(self, classes=3, **kwargs):
        super().__init__(**kwargs)
        self.encoder = Block()
        self.head = keras.layers.Dense(classes)

    def call(self, x, training=False):
        return self.head(self.encoder(x, training=training))


def built(model):
    model(tf.zeros([1, 6, 6, 3]))
    for v in model.variables:
        v.assign(tf.random.normal(v.shape))
    return model


def values(variables):
    return [v.numpy() for v in variables]


def test_plain_checkpoint_misses_listed_layers_and_model_view_does_not(
        tmp_path):
    # Keras 3 wraps lists/dicts of layers in types tf.train.Checkpoint does
    # not follow: their weights would silently be missing.
    model = built(Net())
    plain = tf.train.Checkpoint(model=model).save(str(tmp_path / "plain"))
    plain_keys = {k for k, _ in tf.train.list_variables(plain)}
    assert not any("stack" in k for k in plain_keys)

    prefix = tf.train.Checkpoint(model=checkpoints.model_view(model)).save(
        str(tmp_path / "view"))
    saved = {k for k, _ in tf.train.list_variables(prefix)
             if k.startswith("model/")}
    expected = {"model/" + k for k in checkpoints.variable_keys(model)}
    assert saved == expected
    assert len(expected) == len(model.variables) == 14
    assert "model/encoder/stack/1/_kernel/.ATTRIBUTES/VARIABLE_VALUE" in saved
    assert "model/encoder/named/mix..out/bias/.ATTRIBUTES/VARIABLE_VALUE" in (
        saved)

    other = built(Net())
    tf.train.Checkpoint(model=checkpoints.model_view(other)).restore(
        prefix).assert_consumed()
    for a, b in zip(values(model.variables), values(other.variables)):
        np.testing.assert_array_equal(a, b)


def test_full_initial_checkpoint_with_optimizer(tmp_path):
    # Keras optimizers track the variables they update, so in a trainer
    # checkpoint many weights are stored under optimizer/... keys.
    model = built(Net())
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    prefix = tf.train.Checkpoint(model=checkpoints.model_view(model),
                                 optimizer=optimizer).save(
                                     str(tmp_path / "ckpt"))
    assert any(k.startswith("optimizer/_trainable_variables")
               for k, _ in tf.train.list_variables(prefix))
    target = built(Net())
    report = checkpoints.load_initial_checkpoint(target, str(tmp_path))
    assert len(report.loaded) == 14
    assert not (report.missing or report.unused or report.shape_mismatch)
    for a, b in zip(values(model.variables), values(target.variables)):
        np.testing.assert_array_equal(a, b)


def test_backbone_checkpoint_lines_up_under_the_encoder(tmp_path):
    backbone = Block()
    backbone(tf.zeros([1, 6, 6, 3]))
    for v in backbone.variables:
        v.assign(tf.random.normal(v.shape))
    prefix = tf.train.Checkpoint(model=checkpoints.model_view(backbone)).save(
        str(tmp_path / "backbone"))
    target = built(Net())
    head_before = values(target.head.variables)
    report = checkpoints.load_initial_checkpoint(target, prefix)
    assert (report.checkpoint_prefix, report.model_prefix) == ("model/",
                                                               "encoder/")
    assert len(report.loaded) == 12
    assert sorted(report.missing) == [
        "head/_kernel/.ATTRIBUTES/VARIABLE_VALUE",
        "head/bias/.ATTRIBUTES/VARIABLE_VALUE"]
    for a, b in zip(values(backbone.variables),
                    values(target.encoder.variables)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(head_before, values(target.head.variables)):
        np.testing.assert_array_equal(a, b)
    assert "not in checkpoint: head/bias" in report.summary()


def test_shape_mismatch_and_exclusions_are_reported(tmp_path):
    source = built(Net(classes=3))
    prefix = tf.train.Checkpoint(model=checkpoints.model_view(source)).save(
        str(tmp_path / "ckpt"))
    target = built(Net(classes=5))
    report = checkpoints.load_initial_checkpoint(
        target, prefix, exclude_patterns=[r"encoder/norm/moving_"])
    assert [k for k, _, _ in report.shape_mismatch] == [
        "head/_kernel/.ATTRIBUTES/VARIABLE_VALUE",
        "head/bias/.ATTRIBUTES/VARIABLE_VALUE"]
    assert report.shape_mismatch[0][1:] == ((4, 5), (4, 3))
    assert len(report.excluded) == 2
    assert len(report.loaded) == 14 - 2 - 2
    assert len(report.unused) == 4
    np.testing.assert_array_equal(target.encoder.conv.kernel.numpy(),
                                  source.encoder.conv.kernel.numpy())
    assert not np.array_equal(target.encoder.norm.moving_mean.numpy(),
                              source.encoder.norm.moving_mean.numpy())


def test_unrelated_or_missing_checkpoint_is_an_error(tmp_path):
    other = tf.train.Checkpoint(v=tf.Variable([1.0, 2.0])).save(
        str(tmp_path / "other"))
    with pytest.raises(ValueError, match="none of the model.s 14 variables"):
        checkpoints.load_initial_checkpoint(built(Net()), other)
    with pytest.raises(ValueError, match="cannot read"):
        checkpoints.load_initial_checkpoint(built(Net()),
                                            str(tmp_path / "nothing-1"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        checkpoints.load_initial_checkpoint(built(Net()),
                                            str(tmp_path / "empty"))


def test_ram_filesystem_round_trip():
    model = built(Net())
    prefix = tf.train.Checkpoint(model=checkpoints.model_view(model)).save(
        "ram://checkpoint_test/ckpt")
    target = built(Net())
    checkpoints.load_initial_checkpoint(target, "ram://checkpoint_test")
    for a, b in zip(values(model.variables), values(target.variables)):
        np.testing.assert_array_equal(a, b)
    assert prefix.startswith("ram://")

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


def test_stale_temporaries_of_a_killed_write_are_removed(tmp_path):
    # What TensorFlow's saver leaves when killed between writing the
    # shards and merging them: MODEL_DIR/ckpt-N_temp/part-*.
    stale = tmp_path / "ckpt-5_temp"
    stale.mkdir()
    (stale / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    # Only that exact shape of name, only folders, only in MODEL_DIR.
    keep = [tmp_path / "ckpt-5_temp_notes", tmp_path / "myckpt-5_temp",
            tmp_path / "ckpt-x_temp", tmp_path / "eval" / "ckpt-3_temp"]
    for path in keep:
        path.mkdir(parents=True)
    (tmp_path / "ckpt-6_temp").write_text("a user's file")
    (tmp_path / "ckpt-5.index").write_bytes(b"")
    removed = checkpoints.remove_stale_temporaries(str(tmp_path))
    assert removed == [f"{tmp_path}/ckpt-5_temp"]
    assert not stale.exists()
    assert all(path.is_dir() for path in keep)
    assert (tmp_path / "ckpt-6_temp").read_text() == "a user's file"
    assert (tmp_path / "ckpt-5.index").exists()
    assert checkpoints.remove_stale_temporaries(str(tmp_path / "none")) == []


def test_manager_refuses_to_write_non_finite_values(tmp_path):
    weights = tf.Variable([1.0, 2.0], name="weights")
    counter = tf.Variable(0, dtype=tf.int64, name="counter")
    step = tf.Variable(0, dtype=tf.int64)
    manager = checkpoints.CheckpointManager(
        tf.train.Checkpoint(w=weights, c=counter), str(tmp_path),
        guarded_variables=[weights, counter], max_to_keep=5,
        step_counter=step, checkpoint_interval=2)
    assert manager.save(checkpoint_number=0).endswith("ckpt-0")
    step.assign(1)
    weights.assign([np.inf, 1.0])
    # Within the interval: nothing to write, nothing checked.
    assert manager.save(checkpoint_number=1) is None
    step.assign(2)
    with pytest.raises(checkpoints.NonFiniteCheckpointError,
                       match=r"1 variable\(s\) hold NaN or infinity.*weights"):
        manager.save(checkpoint_number=2)
    weights.assign([np.nan, 1.0])
    with pytest.raises(checkpoints.NonFiniteCheckpointError):
        manager.save(checkpoint_number=2, check_interval=False)
    assert sorted(p.name for p in tmp_path.iterdir()
                  if p.name.endswith(".index")) == ["ckpt-0.index"]
    weights.assign([3.0, 4.0])
    assert manager.save(checkpoint_number=2).endswith("ckpt-2")


def test_model_only_checkpoint_reads_a_training_checkpoint_quietly(
        tmp_path, caplog):
    import gc
    weights = tf.Variable([1.0, 2.0])
    slot = tf.Variable([5.0, 6.0])
    tf.train.Checkpoint(model=tf.train.Checkpoint(w=weights),
                        optimizer=tf.train.Checkpoint(m=slot)).write(
                            str(tmp_path / "ckpt"))
    fresh = tf.Variable([0.0, 0.0])
    with caplog.at_level("WARNING"):
        checkpoints.ModelOnlyCheckpoint(
            model=tf.train.Checkpoint(w=fresh)).restore(
                str(tmp_path / "ckpt"))
        gc.collect()
    np.testing.assert_array_equal(fresh.numpy(), [1.0, 2.0])
    assert not [r for r in caplog.records if "could not be found"
                in r.getMessage() or "Unresolved" in r.getMessage()]
    # The plain Checkpoint warns about the same restore (the check above
    # can fail).
    with caplog.at_level("WARNING"):
        tf.train.Checkpoint(model=tf.train.Checkpoint(w=fresh)).restore(
            str(tmp_path / "ckpt"))
        gc.collect()
    assert [r for r in caplog.records if "could not be found"
            in r.getMessage() or "Unresolved" in r.getMessage()]

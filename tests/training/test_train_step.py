"""The train step: non-finite guard, loss scaling, XLA, global-batch scaling.

Runs in-process on one device with a small stand-in model (the mechanics do
not depend on the architecture; tests/trainer/test_integration.py runs
the real model).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf import optimizers
from max_deeplab_tf.protos import trainer_pb2
from max_deeplab_tf.training import train_step as train_step_lib
from tests.trainer import standins


def make_step(jit_compile=False, policy="float32", limit=3, lr=0.05,
              optimizer="adam", lookahead=0, model_class=None):
    keras.utils.set_random_seed(1)
    model = (model_class or standins.StandinModel)()
    model(tf.zeros([1, standins.SIZE, standins.SIZE, 3]))
    solver = trainer_pb2.SolverOptions(
        optimizer=optimizer, base_learning_rate=lr,
        training_number_of_steps=100, lookahead_sync_period=lookahead,
        lookahead_slow_step_size=0.5)
    model_optimizer = optimizers.ModelOptimizer(
        solver, model.trainable_variables, gradients_aggregated=True)
    model_optimizer.build()
    step = train_step_lib.TrainStep(
        model, standins.StandinLoss(), model_optimizer, global_batch_size=4,
        mixed_precision_policy=policy, max_consecutive_nonfinite_steps=limit,
        jit_compile=jit_compile)
    return model, model_optimizer, step


def batch(seed=0, poison=False):
    data = standins.make_examples(4, seed)
    if poison:
        data[common.IMAGE][1, 2, 3, 0] = np.nan
    return {k: tf.constant(v) for k, v in data.items()}


def snapshot(model):
    return [v.numpy().copy() for v in model.variables]


def test_loss_is_global_batch_mean():
    model, _, step = make_step()
    inputs = batch()
    losses = standins.StandinLoss()(inputs, model(inputs[common.IMAGE],
                                                  training=True))
    expected = float(tf.reduce_mean(losses[common.TOTAL_LOSS]))
    # Same statistics in the step's forward pass (BN in training mode).
    result = tf.function(step.replica_step)(inputs)
    assert float(result[common.TOTAL_LOSS]) == pytest.approx(expected,
                                                             rel=1e-5)


def test_nonfinite_step_is_skipped_and_state_kept():
    model, model_optimizer, step = make_step()
    run = tf.function(step.replica_step)
    run(batch(0))
    before = snapshot(model)
    iterations = int(model_optimizer.iterations.numpy())
    result = run(batch(1, poison=True))
    assert float(result["step_skipped"]) == 1.0
    assert not np.isfinite(float(result[common.TOTAL_LOSS]))
    after = snapshot(model)
    # Weights AND batch-norm moving statistics are untouched.
    for b, a in zip(before, after):
        np.testing.assert_array_equal(a, b)
    assert int(model_optimizer.iterations.numpy()) == iterations
    assert int(step.consecutive_nonfinite.numpy()) == 1
    # A good step applies and resets the run of bad ones.
    result = run(batch(2))
    assert float(result["step_skipped"]) == 0.0
    assert int(step.consecutive_nonfinite.numpy()) == 0
    assert int(step.total_nonfinite.numpy()) == 1
    assert int(model_optimizer.iterations.numpy()) == iterations + 1
    assert any(np.abs(a - b).max() > 0 for a, b in zip(after,
                                                       snapshot(model)))


def all_variables(model, model_optimizer, step):
    """Name -> value of every variable a step can write."""
    values = {f"model/{v.path}": v.numpy().copy() for v in model.variables}
    values.update({f"optimizer/{i}/{v.path}": np.array(v.numpy())
                   for i, v in enumerate(model_optimizer.variables)})
    values.update({f"step/{k}": v.numpy().copy()
                   for k, v in step.checkpoint_items().items()})
    return values


@pytest.mark.parametrize("optimizer,lookahead,jit", [
    ("adam", 0, False), ("radam", 2, False), ("sgd", 0, True)])
def test_nonfinite_learning_rate_skips_the_update(optimizer, lookahead, jit):
    # A finite loss and finite gradients, but an infinite learning rate: the
    # update would make the weights (and the slow weights) infinite, so it
    # is not made; slots, slow weights and step counters stay as they were.
    model, model_optimizer, step = make_step(
        lr=float("inf"), optimizer=optimizer, lookahead=lookahead,
        jit_compile=jit, limit=10)
    assert len(model_optimizer.variables) > 2
    run = tf.function(step.replica_step)
    before = all_variables(model, model_optimizer, step)
    for seed in range(3):
        result = run(batch(seed))
        assert np.isfinite(float(result[common.TOTAL_LOSS]))
        assert float(result["step_skipped"]) == 1.0
    after = all_variables(model, model_optimizer, step)
    assert set(after) == set(before)
    for name, value in after.items():
        if name.startswith("step/"):
            continue
        np.testing.assert_array_equal(value, before[name], err_msg=name)
        assert np.isfinite(value).all(), name
    # Counted like a non-finite loss.
    assert int(step.consecutive_nonfinite.numpy()) == 3
    assert int(step.total_nonfinite.numpy()) == 3


def test_guard_spares_good_steps():
    # At a sane learning rate the same step updates weights, slots and the
    # step counter.
    model, model_optimizer, step = make_step(optimizer="radam", lookahead=2)
    run = tf.function(step.replica_step)
    before = all_variables(model, model_optimizer, step)
    result = run(batch(0))
    assert float(result["step_skipped"]) == 0.0
    after = all_variables(model, model_optimizer, step)
    changed = [n for n in before
               if not np.array_equal(before[n], after[n])]
    assert any(n.startswith("model/") for n in changed)
    assert any(n.startswith("optimizer/") for n in changed)
    assert int(model_optimizer.iterations.numpy()) == 1


def test_stops_after_limit_in_a_row():
    _, _, step = make_step(limit=3)
    run = tf.function(step.replica_step)
    run(batch(0))
    run(batch(1, poison=True))
    run(batch(2, poison=True))
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="3 consecutive steps had a non-finite loss"):
        run(batch(3, poison=True))
    assert int(step.consecutive_nonfinite.numpy()) == 3
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        step.check_nonfinite_limit()


def test_float16_overflow_halves_scale_without_counting():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model, model_optimizer, step = make_step(policy="mixed_float16")
        run = tf.function(step.replica_step)
        scale = float(step.loss_scale.numpy())
        # Loss finite, gradients overflow float16 at this scale.
        step.loss_scale.assign(2.0 ** 60)
        before = snapshot(model)
        result = run(batch(0))
        assert float(result["step_skipped"]) == 1.0
        assert np.isfinite(float(result[common.TOTAL_LOSS]))
        assert float(step.loss_scale.numpy()) == 2.0 ** 59
        assert int(step.consecutive_nonfinite.numpy()) == 0
        for b, a in zip(before, snapshot(model)):
            np.testing.assert_array_equal(a, b)
        step.loss_scale.assign(scale)
        result = run(batch(1))
        assert float(result["step_skipped"]) == 0.0
        assert int(model_optimizer.iterations.numpy()) == 1
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_jit_compile_step_matches_and_is_compiled():
    model_a, _, eager_step = make_step(optimizer="sgd")
    model_b, _, jit_step = make_step(jit_compile=True, optimizer="sgd")
    inputs = batch(0)
    # The forward/backward pass is an XLA computation.
    hlo = jit_step._forward_backward.experimental_get_compiler_ir(
        inputs, tf.constant(1.0))(stage="hlo")
    assert "HloModule" in hlo
    a = tf.function(eager_step.replica_step)(inputs)
    b = tf.function(jit_step.replica_step)(inputs)
    assert float(b[common.TOTAL_LOSS]) == pytest.approx(
        float(a[common.TOTAL_LOSS]), rel=1e-5)
    for va, vb in zip(model_a.variables, model_b.variables):
        np.testing.assert_allclose(vb.numpy(), va.numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_rejects_unknown_precision_policy():
    model = standins.StandinModel()
    with pytest.raises(ValueError, match="mixed_precision_policy"):
        train_step_lib.TrainStep(model, standins.StandinLoss(), None, 4,
                                 mixed_precision_policy="float16")


class StatefulStandin(standins.StandinModel):
    """The stand-in plus a statistic its training pass writes that the loss
    does not see: the log of the smallest pixel, -inf where a pixel is 0."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.smallest_log = self.add_weight(
            shape=(3,), initializer="zeros", trainable=False,
            name="smallest_log")

    def call(self, images, training=False):
        if training:
            self.smallest_log.assign(
                tf.fill([3], tf.math.log(tf.reduce_min(images))))
        return super().call(images, training=training)


def test_nonfinite_state_at_a_finite_loss_skips_and_restores():
    # Loss and gradients finite, but the forward pass wrote an infinity into
    # model state: the step is skipped and every variable, the written
    # statistic and the batch-norm statistics included, keeps its value.
    model, model_optimizer, step = make_step(model_class=StatefulStandin)
    run = tf.function(step.replica_step)
    assert float(run(batch(0))["step_skipped"]) == 0.0
    before = all_variables(model, model_optimizer, step)
    assert np.isfinite(before["model/stateful_standin/smallest_log"]).all()
    poisoned = batch(1)
    image = poisoned[common.IMAGE].numpy()
    image[2, 0, 0, 1] = 0.0
    poisoned[common.IMAGE] = tf.constant(image)
    result = run(poisoned)
    assert np.isfinite(float(result[common.TOTAL_LOSS]))
    assert np.isfinite(float(result["gradient_norm"]))
    assert float(result["step_skipped"]) == 1.0
    after = all_variables(model, model_optimizer, step)
    for name, value in after.items():
        if not name.startswith("step/"):
            np.testing.assert_array_equal(value, before[name], err_msg=name)
    assert int(step.consecutive_nonfinite.numpy()) == 1
    # The same batch without the zero pixel is applied, statistic written.
    result = run(batch(1))
    assert float(result["step_skipped"]) == 0.0
    written = model.smallest_log.numpy()
    expected = np.log(batch(1)[common.IMAGE].numpy().min())
    np.testing.assert_allclose(written, [expected] * 3, rtol=1e-6)


@pytest.mark.parametrize("values,expected", [
    ([], True),
    ([np.ones([3], np.float32), np.zeros([2, 2], np.float32)], True),
    ([np.ones([3], np.float32), np.array([[1.0, np.nan]], np.float32)],
     False),
    ([np.array(7.0, np.float32), np.array(-np.inf, np.float32)], False),
    ([np.ones([2], np.float32), np.array([np.inf], np.float16)], False),
    # Not cast: 1e300 is finite in float64 (float32 would call it inf).
    ([np.array([1e300], np.float64), np.ones([2], np.float32)], True),
    ([np.array([1e300, np.inf], np.float64), np.ones([2], np.float32)],
     False),
    # Integers are always finite.
    ([np.array([2 ** 40], np.int64), np.ones([2], np.float32)], True),
])
def test_all_finite_matches_numpy(values, expected):
    tensors = [tf.constant(v) for v in values]
    assert bool(train_step_lib._all_finite(tensors)) is expected  # pylint: disable=protected-access
    assert bool(tf.function(train_step_lib._all_finite)(tensors)) is expected  # pylint: disable=protected-access
    assert expected == all(np.isfinite(v).all() for v in values
                           if np.issubdtype(v.dtype, np.floating))

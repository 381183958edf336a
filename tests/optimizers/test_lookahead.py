"""Lookahead against Zhang et al. (2019)'s Algorithm 1, written out in numpy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.optimizers import SGD
from max_deeplab_tf.optimizers import Lookahead
from max_deeplab_tf.optimizers import RAdam

from tests.optimizers.test_radam import radam_reference


def lookahead_reference(w0, grads, inner_step, k, alpha):
    """Outer loop of Lookahead: k fast steps, then phi += alpha (theta - phi).

    inner_step(theta, g, t) returns the fast weights after inner step t
    (1-based), so that stateful inner optimizers can keep their own state.
    """
    phi = np.array(w0, np.float64)
    theta = phi.copy()
    history = []
    for t, g in enumerate(grads, start=1):
        theta = inner_step(theta, np.asarray(g, np.float64), t)
        if t % k == 0:
            phi = phi + alpha * (theta - phi)
            theta = phi.copy()
        history.append(theta.copy())
    return history


GRADS = np.random.RandomState(1).normal(size=(11, 3)).astype(np.float32)
W0 = np.array([1.0, -2.0, 0.5], np.float32)


def apply_all(optimizer, w, grads, use_function=True):
    def step(g):
        optimizer.apply([g], [w])

    if use_function:
        step = tf.function(step)
    history = []
    for g in grads:
        step(tf.constant(g))
        history.append(w.numpy().copy())
    return history


@pytest.mark.parametrize("k,alpha", [(3, 0.5), (5, 0.8), (1, 0.3)])
def test_over_sgd(k, alpha):
    lr = 0.1
    expected = lookahead_reference(W0, GRADS, lambda w, g, t: w - lr * g,
                                   k, alpha)
    w = keras.Variable(W0)
    got = apply_all(Lookahead(SGD(learning_rate=lr), k, alpha), w, GRADS)
    for step, (g, e) in enumerate(zip(got, expected), start=1):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6,
                                   err_msg=f"step {step}")


def test_over_radam_keeps_inner_state_across_syncs():
    # RAdam's moments keep running through synchronisations (the paper
    # resets only the weights); replay its trajectory on the fast weights.
    lr, k, alpha = 0.05, 4, 0.5
    state = {}

    def radam_step(theta, g, t):
        state.setdefault("grads", []).append(g)
        # One more RAdam step from theta with the full moment history.
        history, _ = radam_reference(np.zeros_like(theta), state["grads"], lr)
        previous = history[-2] if len(history) > 1 else np.zeros_like(theta)
        return theta + (history[-1] - previous)

    expected = lookahead_reference(W0, GRADS, radam_step, k, alpha)
    w = keras.Variable(W0)
    got = apply_all(Lookahead(RAdam(learning_rate=lr), k, alpha), w, GRADS)
    np.testing.assert_allclose(got[-1], expected[-1], rtol=2e-5, atol=1e-6)
    assert np.abs(np.asarray(expected[-1]) -
                  np.asarray(radam_reference(W0, GRADS, lr)[0][-1])).max() > 1e-4


def test_slow_weights_start_from_weights_at_first_apply():
    # Weights loaded after build (an initial checkpoint) are phi_0.
    lr, k, alpha = 0.1, 2, 0.5
    w = keras.Variable(np.zeros(3, np.float32))
    optimizer = Lookahead(SGD(learning_rate=lr), k, alpha)
    optimizer.build([w])
    w.assign(W0)
    got = apply_all(optimizer, w, GRADS[:4], use_function=False)
    expected = lookahead_reference(W0, GRADS[:4], lambda w, g, t: w - lr * g,
                                   k, alpha)
    np.testing.assert_allclose(got[-1], expected[-1], rtol=1e-5, atol=1e-6)


def test_checkpoint_restores_slow_weights_and_counters(tmp_path):
    lr, k, alpha = 0.1, 3, 0.5
    w = keras.Variable(W0)
    optimizer = Lookahead(SGD(learning_rate=lr), k, alpha)
    apply_all(optimizer, w, GRADS[:4])
    prefix = tf.train.Checkpoint(w=w, optimizer=optimizer).save(
        str(tmp_path / "ckpt"))
    apply_all(optimizer, w, GRADS[4:8])
    reference = w.numpy()

    w2 = keras.Variable(np.zeros(3, np.float32))
    optimizer2 = Lookahead(SGD(learning_rate=lr), k, alpha)
    optimizer2.build([w2])
    tf.train.Checkpoint(w=w2, optimizer=optimizer2).restore(
        prefix).assert_consumed()
    assert int(optimizer2.iterations.numpy()) == 4
    apply_all(optimizer2, w2, GRADS[4:8])
    np.testing.assert_allclose(w2.numpy(), reference, rtol=1e-6)


def test_rejects_bad_hyper_parameters():
    with pytest.raises(ValueError, match="sync_period"):
        Lookahead(SGD(), sync_period=0)
    with pytest.raises(ValueError, match="slow_step_size"):
        Lookahead(SGD(), slow_step_size=1.5)


def test_config_round_trip():
    optimizer = Lookahead(RAdam(learning_rate=0.003), 7, 0.25)
    clone = Lookahead.from_config(optimizer.get_config())
    assert isinstance(clone.inner_optimizer, RAdam)
    assert (clone.sync_period, clone.slow_step_size) == (7, 0.25)

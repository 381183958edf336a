"""RAdam against the update rule of Liu et al. (2019), written out in numpy."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.optimizers import RAdam


def radam_reference(w0, grads, lr, beta_1=0.9, beta_2=0.999, eps=1e-7,
                    threshold=5.0, weight_decay=0.0):
    """Algorithm 2 of the RAdam paper, one scalar step at a time (float64).

    Returns the weights after every step and the rho_t of every step.
    """
    w = np.array(w0, np.float64)
    m = np.zeros_like(w)
    v = np.zeros_like(w)
    rho_inf = 2.0 / (1.0 - beta_2) - 1.0
    history, rhos = [], []
    for t, g in enumerate(grads, start=1):
        g = np.asarray(g, np.float64)
        w = w - lr * weight_decay * w  # Decoupled decay (Loshchilov & Hutter).
        m = beta_1 * m + (1.0 - beta_1) * g
        v = beta_2 * v + (1.0 - beta_2) * g * g
        m_hat = m / (1.0 - beta_1 ** t)
        rho_t = rho_inf - 2.0 * t * beta_2 ** t / (1.0 - beta_2 ** t)
        rhos.append(rho_t)
        if rho_t >= threshold:
            l_t = math.sqrt(1.0 - beta_2 ** t) / (np.sqrt(v) + eps)
            r_t = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf /
                            ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            w = w - lr * r_t * m_hat * l_t
        else:
            w = w - lr * m_hat
        history.append(w.copy())
    return history, rhos


def run_optimizer(optimizer, w0, grads, use_function):
    w = keras.Variable(np.asarray(w0, np.float32), name="kernel")

    def step(g):
        optimizer.apply([g], [w])

    if use_function:
        step = tf.function(step)
    history = []
    for g in grads:
        step(tf.constant(g, tf.float32))
        history.append(w.numpy().copy())
    return history


GRADS = np.random.RandomState(0).normal(size=(20, 4)).astype(np.float32)
W0 = np.array([0.5, -1.0, 2.0, 0.0], np.float32)


@pytest.mark.parametrize("use_function", [False, True])
def test_matches_paper_update_rule_both_branches(use_function):
    expected, rhos = radam_reference(W0, GRADS, lr=0.01)
    # The first steps take the un-rectified branch, later ones the rectified.
    assert rhos[4] < 5.0 <= rhos[5]
    got = run_optimizer(RAdam(learning_rate=0.01), W0, GRADS, use_function)
    for step, (g, e) in enumerate(zip(got, expected), start=1):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=1e-6,
                                   err_msg=f"step {step}")


def test_paper_threshold_four_switches_one_step_earlier():
    expected4, rhos = radam_reference(W0, GRADS[:8], lr=0.01, threshold=4.0)
    expected5, _ = radam_reference(W0, GRADS[:8], lr=0.01, threshold=5.0)
    assert 4.0 < rhos[4] < 5.0
    got = run_optimizer(RAdam(learning_rate=0.01, rectification_threshold=4.0),
                        W0, GRADS[:8], use_function=True)
    np.testing.assert_allclose(got[-1], expected4[-1], rtol=2e-5, atol=1e-6)
    assert np.abs(expected4[-1] - expected5[-1]).max() > 1e-4


def test_decoupled_weight_decay():
    lr, wd = 0.05, 0.1
    expected, _ = radam_reference(W0, GRADS[:10], lr=lr, weight_decay=wd)
    no_decay, _ = radam_reference(W0, GRADS[:10], lr=lr)
    got = run_optimizer(RAdam(learning_rate=lr, weight_decay=wd), W0,
                        GRADS[:10], use_function=True)
    np.testing.assert_allclose(got[-1], expected[-1], rtol=2e-5, atol=1e-6)
    assert np.abs(expected[-1] - no_decay[-1]).max() > 1e-3


def test_weight_decay_pattern_selects_variables():
    lr, wd = 0.05, 0.1
    optimizer = RAdam(learning_rate=lr, weight_decay=wd,
                      weight_decay_pattern=r"kernel$")
    kernel = keras.Variable(W0, name="kernel")
    bias = keras.Variable(W0, name="bias")
    for g in GRADS[:5]:
        optimizer.apply([tf.constant(g), tf.constant(g)], [kernel, bias])
    decayed, _ = radam_reference(W0, GRADS[:5], lr=lr, weight_decay=wd)
    plain, _ = radam_reference(W0, GRADS[:5], lr=lr)
    np.testing.assert_allclose(kernel.numpy(), decayed[-1], rtol=2e-5,
                               atol=1e-6)
    np.testing.assert_allclose(bias.numpy(), plain[-1], rtol=2e-5, atol=1e-6)


def test_minimises_a_quadratic():
    target = np.array([1.0, -3.0, 0.5], np.float32)
    w = keras.Variable(np.zeros(3, np.float32))
    optimizer = RAdam(learning_rate=0.1)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum((w - target) ** 2)
        optimizer.apply(tape.gradient(loss, [w]), [w])

    for _ in range(300):
        step()
    np.testing.assert_allclose(w.numpy(), target, atol=0.05)


def test_config_round_trip():
    optimizer = RAdam(learning_rate=0.002, beta_2=0.99,
                      rectification_threshold=4.0, weight_decay=0.01,
                      gradients_aggregated=True)
    clone = RAdam.from_config(optimizer.get_config())
    assert clone.beta_2 == 0.99
    assert clone.rectification_threshold == 4.0
    assert clone.gradients_aggregated
    assert clone.weight_decay == pytest.approx(0.01)

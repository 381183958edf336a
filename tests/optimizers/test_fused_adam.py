"""The fused Adam update (ResourceApplyAdam) against the Adam update rule.

Truths: the rule written out in numpy (Kingma & Ba, with Keras' epsilon
placement), and keras.optimizers.Adam's own update on the same inputs.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf.optimizers import base


def numpy_adam(weights, grads, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    m = np.zeros_like(weights)
    v = np.zeros_like(weights)
    w = weights.astype(np.float64)
    for t, g in enumerate(grads, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        alpha = lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        w = w - alpha * m / (np.sqrt(v) + epsilon)
    return w


def run(optimizer, weights, grads, use_function):
    variables = [keras.Variable(w) for w in weights]
    optimizer.build(variables)

    def step(gs):
        optimizer.apply(gs, variables)

    if use_function:
        step = tf.function(step)
    for gs in grads:
        step([tf.constant(g) for g in gs])
    return [v.numpy() for v in variables], optimizer


def problem(seed=0, steps=5):
    rng = np.random.default_rng(seed)
    weights = [rng.normal(size=(3, 4)).astype(np.float32),
               rng.normal(size=(7,)).astype(np.float32)]
    grads = [[rng.normal(scale=s, size=w.shape).astype(np.float32)
              for w, s in zip(weights, (1.0, 1e-3))] for _ in range(steps)]
    return weights, grads


@pytest.mark.parametrize("use_function", [False, True])
def test_matches_the_update_rule_and_keras_adam(use_function):
    weights, grads = problem()
    fused, optimizer = run(base.Adam(learning_rate=0.01), weights, grads,
                           use_function)
    reference, _ = run(keras.optimizers.Adam(learning_rate=0.01), weights,
                       grads, use_function)
    for i, (f, r) in enumerate(zip(fused, reference)):
        expected = numpy_adam(weights[i], [g[i] for g in grads], 0.01)
        np.testing.assert_allclose(f, expected, rtol=2e-6, atol=1e-7)
        # Keras' unfused float32 ops round differently: it is itself up to
        # 1e-6 from the float64 rule after 20 steps (the kernel 5e-7).
        np.testing.assert_allclose(f, r, rtol=0, atol=1e-6)
        # The update moved the weights (not a vacuous comparison).
        assert np.abs(f - weights[i]).max() > 1e-3
    assert int(optimizer.iterations.numpy()) == len(grads)
    # The slots hold Adam's first and second moments.
    g0 = np.stack([g[1] for g in grads])
    m = np.zeros_like(g0[0])
    for g in g0:
        m = 0.9 * m + 0.1 * g
    np.testing.assert_allclose(optimizer._momentums[1].numpy(), m,
                               rtol=1e-5, atol=1e-10)


def test_schedule_and_adamw_weight_decay():
    weights, grads = problem(seed=1, steps=4)
    schedule = keras.optimizers.schedules.PolynomialDecay(0.02, 10, 0.001)
    fused, _ = run(base.AdamW(learning_rate=schedule, weight_decay=0.1),
                   weights, grads, True)
    reference, _ = run(
        keras.optimizers.AdamW(learning_rate=schedule, weight_decay=0.1),
        weights, grads, True)
    for f, r, w in zip(fused, reference, weights):
        np.testing.assert_allclose(f, r, rtol=0, atol=1e-6)
        assert np.abs(f - w).max() > 1e-3


def test_amsgrad_keeps_keras_update():
    weights, grads = problem(seed=2, steps=3)
    fused, _ = run(base.Adam(learning_rate=0.01, amsgrad=True), weights,
                   grads, True)
    reference, _ = run(keras.optimizers.Adam(learning_rate=0.01,
                                             amsgrad=True), weights, grads,
                       True)
    for f, r in zip(fused, reference):
        np.testing.assert_array_equal(f, r)


def test_under_mirrored_strategy_every_copy_follows_the_rule():
    # Under MirroredStrategy the kernel must update each replica's copy of
    # the weights and slots (the handles of the copy being updated).
    script = textwrap.dedent("""
        import numpy as np
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import keras
        from max_deeplab_tf.optimizers import base
        from tests.optimizers import test_fused_adam as t
        weights, grads = t.problem(seed=3, steps=3)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            variables = [keras.Variable(w) for w in weights]
            optimizer = base.Adam(learning_rate=0.01,
                                  gradients_aggregated=True)
            optimizer.build(variables)

        @tf.function
        def step(gs):
            strategy.run(lambda: optimizer.apply(gs, variables))

        for gs in grads:
            step([tf.constant(g) for g in gs])
        for i, v in enumerate(variables):
            expected = t.numpy_adam(weights[i], [g[i] for g in grads], 0.01)
            copies = strategy.experimental_local_results(v.value)
            assert len(copies) == 2
            for copy in copies:
                np.testing.assert_allclose(copy.numpy(), expected,
                                           rtol=2e-6, atol=1e-7)
        print("OK")
        """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    result = subprocess.run([sys.executable, "-c", script], cwd=root,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and "OK" in result.stdout, (
        result.stdout[-2000:] + result.stderr[-4000:])

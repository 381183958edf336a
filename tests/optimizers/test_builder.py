"""Optimizers built from SolverOptions: kinds, backbone multiplier, clipping."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import optimizers
from max_deeplab_tf.protos import trainer_pb2


def solver(**fields):
    options = trainer_pb2.SolverOptions(training_number_of_steps=1000)
    for name, value in fields.items():
        setattr(options, name, value)
    return options


@pytest.mark.parametrize("kind,cls", [
    ("adam", optimizers.Adam), ("adamw", optimizers.AdamW),
    ("sgd", optimizers.SGD), ("radam", optimizers.RAdam)])
def test_kinds(kind, cls):
    optimizer = optimizers.build_optimizer(solver(optimizer=kind))
    assert isinstance(optimizer, cls)
    wrapped = optimizers.build_optimizer(
        solver(optimizer=kind, lookahead_sync_period=6,
               lookahead_slow_step_size=0.5))
    assert isinstance(wrapped, optimizers.Lookahead)
    assert isinstance(wrapped.inner_optimizer, cls)
    assert wrapped.sync_period == 6


def test_unknown_optimizer_names_the_field():
    with pytest.raises(ValueError, match="solver_options.optimizer"):
        optimizers.build_optimizer(solver(optimizer="adagrad"))


@pytest.mark.parametrize("kind", ["adam", "adamw", "radam"])
def test_adam_epsilon_must_be_positive(kind):
    with pytest.raises(ValueError, match="solver_options.adam_epsilon must "
                       "be positive, got 0.0"):
        optimizers.build_optimizer(solver(optimizer=kind, adam_epsilon=0.0))


def test_adam_hyper_parameters_come_from_the_config():
    optimizer = optimizers.build_optimizer(
        solver(adam_beta_1=0.8, adam_beta_2=0.99, adam_epsilon=1e-6))
    assert optimizer.beta_1 == pytest.approx(0.8)
    assert optimizer.beta_2 == pytest.approx(0.99)
    assert optimizer.epsilon == pytest.approx(1e-6)


def test_backbone_multiplier_scales_the_backbone_step():
    # Plain SGD's first step is -lr * g (momentum starts at zero).
    backbone = keras.Variable(np.ones(3, np.float32), name="kernel")
    head = keras.Variable(np.ones(2, np.float32), name="kernel")
    options = solver(optimizer="sgd", base_learning_rate=0.5,
                     backbone_learning_rate_multiplier=0.1)
    model_optimizer = optimizers.ModelOptimizer(
        options, [head, backbone], is_backbone=lambda v: v is backbone)
    model_optimizer.build()
    assert model_optimizer.num_backbone_variables == 1
    # Start after the (empty) warmup, at step 0 of the poly decay.
    g_head, g_backbone = tf.constant([1.0, 2.0]), tf.constant([1.0, -1.0, 4.0])
    model_optimizer.apply([g_head, g_backbone])
    np.testing.assert_allclose(head.numpy(), 1 - 0.5 * g_head.numpy(),
                               rtol=1e-6)
    np.testing.assert_allclose(backbone.numpy(),
                               1 - 0.05 * g_backbone.numpy(), rtol=1e-6)
    assert set(model_optimizer.checkpoint_items()) == {
        "optimizer", "backbone_optimizer"}


def test_multiplier_without_backbone_predicate_is_an_error():
    with pytest.raises(ValueError, match="backbone"):
        optimizers.ModelOptimizer(
            solver(backbone_learning_rate_multiplier=0.1),
            [keras.Variable(1.0)])


def test_global_norm_clipping():
    a = keras.Variable(np.zeros(2, np.float32))
    b = keras.Variable(np.zeros(1, np.float32))
    model_optimizer = optimizers.ModelOptimizer(
        solver(use_gradient_clipping=True, clip_gradient_norm=1.0), [a, b])
    grads = [tf.constant([3.0, 0.0]), tf.constant([4.0])]  # norm 5
    clipped, norm = model_optimizer.clip(grads)
    assert float(norm) == pytest.approx(5.0)
    np.testing.assert_allclose(clipped[0].numpy(), [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(clipped[1].numpy(), [0.8], rtol=1e-6)
    unclipped, _ = optimizers.ModelOptimizer(solver(), [a, b]).clip(grads)
    np.testing.assert_allclose(unclipped[1].numpy(), [4.0])


def test_weight_decay_only_on_kernels_by_default():
    # AdamW's first step: w - lr*wd*w - lr * m_hat / (sqrt(v_hat) + eps)
    # = w - lr*wd*w - lr * sign(g) (up to eps).
    kernel = keras.Variable(np.full(2, 2.0, np.float32), name="kernel")
    bias = keras.Variable(np.full(2, 2.0, np.float32), name="bias")
    options = solver(optimizer="adamw", weight_decay=0.1,
                     base_learning_rate=0.01)
    model_optimizer = optimizers.ModelOptimizer(options, [kernel, bias])
    g = tf.constant([1.0, -1.0])
    model_optimizer.apply([g, g])
    step = -0.01 * np.sign(g.numpy())
    np.testing.assert_allclose(kernel.numpy(), 2.0 - 0.01 * 0.1 * 2.0 + step,
                               rtol=1e-5)
    np.testing.assert_allclose(bias.numpy(), 2.0 + step, rtol=1e-5)

"""Tests of gradient_registrations: a traced step's custom gradients leave
TensorFlow's gradient registry once its gradients are built, and the step
can then be freed."""

import gc
import os
import subprocess
import sys
import textwrap
import weakref

import keras
import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf import optimizers
from max_deeplab_tf.protos import trainer_pb2
from max_deeplab_tf.training import gradient_registrations
from max_deeplab_tf.training import train_step as train_step_lib
from tests.trainer import standins


def _custom_gradient_entries():
    registry = gradient_registrations._registry()  # pylint: disable=protected-access
    return {name for name in registry if name.startswith("CustomGradient-")}


@tf.custom_gradient
def _value_with_gradient_three(x):
    """x, with the gradient 3 (instead of 1)."""
    return tf.identity(x), lambda upstream: 3.0 * upstream


def test_registry_is_the_dict_the_scope_edits():
    # The TensorFlow this project pins: if this fails, the scope has become
    # a no-op and traced steps leak again.
    assert gradient_registrations.available()


def test_entries_of_the_traced_graph_leave_after_the_gradients():
    def forward_backward(x, scoped):
        def compute():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = _value_with_gradient_three(x) * x
            return tape.gradient(y, x)
        if not scoped:
            return compute()
        with gradient_registrations.released_after_gradients():
            return compute()

    x = tf.constant([1.0, -2.0, 0.5])
    for scoped, new_entries in ((False, 1), (True, 0)):
        before = _custom_gradient_entries()
        gradient = tf.function(lambda t, s=scoped: forward_backward(t, s))(x)
        # d/dx [f(x) * x] with f(x) = x and f' taken as 3: 3x + x.
        np.testing.assert_allclose(gradient.numpy(), 4.0 * x.numpy())
        assert len(_custom_gradient_entries() - before) == new_entries


def test_entries_of_a_nested_function_graph_stay():
    # A nested tf.function keeps its graph in its own cache, and a later
    # trace may differentiate it again: its entry must stay.
    @tf.function
    def inner(x):
        return _value_with_gradient_three(x)

    @tf.function
    def outer(x, power):
        with gradient_registrations.released_after_gradients():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = inner(x) * x ** power
            return tape.gradient(y, x)

    x = tf.constant([2.0, 3.0])
    before = _custom_gradient_entries()
    # d/dx [f(x) * x^p] with f(x) = x and f' taken as 3: 3x^p + p x^p.
    np.testing.assert_allclose(outer(x, 1).numpy(), 4.0 * x.numpy())
    new = _custom_gradient_entries() - before
    assert len(new) == 1
    inner_graph = inner.get_concrete_function(x).graph
    names = {op.get_attr("_gradient_op_type").decode()
             for op in inner_graph.get_operations() if op.type == "IdentityN"}
    assert new <= names
    # Another trace of `outer` (a new Python argument) calls the same
    # traced `inner` and differentiates it again.
    np.testing.assert_allclose(outer(x, 2).numpy(), 5.0 * x.numpy() ** 2)
    assert _custom_gradient_entries() - before == new


def test_eager_scope_changes_nothing():
    before = _custom_gradient_entries()
    with gradient_registrations.released_after_gradients():
        x = tf.constant(2.0)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = _value_with_gradient_three(x)
        assert float(tape.gradient(y, x)) == 3.0
    assert _custom_gradient_entries() == before


def traced_step_graph(jit_compile, strategy=None):
    """Builds a TrainStep over the stand-in model (Keras's synchronised
    batch norm: tf.distribute all-reduces inside the forward pass) under
    `strategy` (the default one if None), traces and runs one step; returns
    a weak reference to the step's graph."""
    strategy = strategy or tf.distribute.get_strategy()
    keras.utils.set_random_seed(1)
    with strategy.scope():
        model = standins.StandinModel()
        model(tf.zeros([1, standins.SIZE, standins.SIZE, 3]))
        solver = trainer_pb2.SolverOptions(base_learning_rate=0.05,
                                           training_number_of_steps=100)
        model_optimizer = optimizers.ModelOptimizer(
            solver, model.trainable_variables, gradients_aggregated=True)
        model_optimizer.build()
        step = train_step_lib.TrainStep(
            model, standins.StandinLoss(), model_optimizer,
            global_batch_size=4, jit_compile=jit_compile)
    examples = standins.make_examples(4, 0)
    dataset = tf.data.Dataset.from_tensor_slices(examples).batch(4)
    batch = next(iter(strategy.experimental_distribute_dataset(dataset)))

    @tf.function
    def run(inputs):
        return strategy.run(step.replica_step, args=(inputs,))

    result = run(batch)
    skipped = strategy.experimental_local_results(result["step_skipped"])
    losses = strategy.experimental_local_results(result[common.TOTAL_LOSS])
    assert all(float(value) == 0.0 for value in skipped)
    assert all(np.isfinite(float(value)) for value in losses)
    return weakref.ref(run.get_concrete_function(batch).graph)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_deleted_train_step_frees_its_graph(jit_compile):
    # Before: the all-reduces' registered gradients kept every traced step,
    # its model's variables and the optimizer's slots, for the life of the
    # process.
    graph = traced_step_graph(jit_compile)
    gc.collect()
    assert graph() is None


def test_deleted_train_step_frees_its_graph_across_replicas():
    # Two replicas (two logical CPUs, MirroredStrategy) trace the step in
    # threads of their own; the cross-replica sums of the batch norm and the
    # gradients are real all-reduces with gradients.
    script = textwrap.dedent("""
        import gc
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from tests.training import test_gradient_registrations as tests
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        graph = tests.traced_step_graph(False, strategy)
        gc.collect()
        print("FREED" if graph() is None else "ALIVE")
    """)
    root = os.path.dirname(os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run([sys.executable, "-c", script], env=env,
                            capture_output=True, text=True, timeout=300)
    assert "FREED" in result.stdout, result.stdout + result.stderr

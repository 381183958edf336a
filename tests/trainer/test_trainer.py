"""The orbit Trainer: its log line (the ETA leaves out the first loop) and
the graph optimiser setting its loops run under."""

import types

import pytest
import tensorflow as tf

from trainer import trainer as trainer_lib


def test_eta_is_measured_after_the_first_loop():
    # The first loop (tracing) took 100 s for 10 steps; later loops run at
    # 1 step/s. The ETA must use the latter: 80 steps left -> 80 s.
    state = types.SimpleNamespace(_timing_origin=None, _total_steps=100)
    first = trainer_lib.Trainer._eta(state, step=10, now=100.0)
    assert "next loop" in first
    assert trainer_lib.Trainer._eta(state, step=20, now=110.0) == "1m20s"
    assert trainer_lib.Trainer._eta(state, step=60, now=150.0) == "0m40s"


def test_format_duration():
    assert trainer_lib.format_duration(3725) == "1h02m05s"
    assert trainer_lib.format_duration(59.6) == "1m00s"
    assert trainer_lib.format_duration(-3) == "0m00s"


def _recording_step(optimize_graph):
    """A stand-in TrainStep whose loss records, when traced, whether
    grappler is switched off (tracing happens in the function's first
    run)."""
    from max_deeplab_tf import optimizers
    from max_deeplab_tf.protos import trainer_pb2
    from max_deeplab_tf.training import train_step as train_step_lib
    from tests.trainer import standins

    seen = []

    class RecordingLoss(standins.StandinLoss):
        def __call__(self, inputs, outputs):
            seen.append(tf.config.optimizer.get_experimental_options().get(
                "disable_meta_optimizer", False))
            return super().__call__(inputs, outputs)

    model = standins.StandinModel()
    model(tf.zeros([1, standins.SIZE, standins.SIZE, 3]))
    model_optimizer = optimizers.ModelOptimizer(
        trainer_pb2.SolverOptions(training_number_of_steps=10),
        model.trainable_variables, gradients_aggregated=True)
    model_optimizer.build()
    step = train_step_lib.TrainStep(
        model, RecordingLoss(), model_optimizer, global_batch_size=2,
        optimize_graph=optimize_graph)
    return step, seen


@pytest.mark.parametrize("optimize_graph", [False, True])
def test_train_loop_runs_under_the_steps_graph_optimizer_setting(
        optimize_graph):
    from tests.trainer import standins

    step, seen = _recording_step(optimize_graph)
    strategy = tf.distribute.get_strategy()
    examples = standins.make_examples(4, 0)

    def dataset_fn(input_context=None):
        return tf.data.Dataset.from_tensor_slices(examples).repeat().batch(2)

    global_step = tf.Variable(0, dtype=tf.int64)
    trainer = trainer_lib.Trainer(
        strategy, dataset_fn, step, global_step, global_batch_size=2,
        total_steps=4, loss_names=standins.StandinLoss.loss_terms)
    trainer.train(tf.constant(2))
    assert int(global_step.numpy()) == 2
    assert seen and all(s == (not optimize_graph) for s in seen)
    # Put back for whatever runs next (the evaluator's functions).
    assert not tf.config.optimizer.get_experimental_options().get(
        "disable_meta_optimizer", False)

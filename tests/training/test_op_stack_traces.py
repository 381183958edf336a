"""Stack traces recorded on graph ops: library frames dropped in the scope
and in the train step, the user's frames kept, the enclosing filter back on
exit."""

import contextlib
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.framework import ops as tf_ops

from max_deeplab_tf import common
from max_deeplab_tf.training import op_stack_traces
from tests.training import test_train_step

THIS_FILE = os.path.abspath(__file__)
# Independent of the module's own list: where the packages live on disk.
LIBRARY_DIRS = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep
                     for m in (tf, keras, np, contextlib))
# TensorFlow's op creation: the module keeps its frames (TensorFlow drops
# the innermost ones by count).
OP_CREATION_FILE = os.path.abspath(tf_ops.__file__)
STANDINS_FILE = os.path.abspath(
    sys.modules["tests.trainer.standins"].__file__)

pytestmark = pytest.mark.skipif(
    not op_stack_traces.available(),
    reason="this TensorFlow has no tf_stack.StackTraceFilter")


def frame_files(op):
    return [os.path.abspath(frame.filename) for frame in op.traceback]


def is_library(path):
    if path == OP_CREATION_FILE:
        return False
    return path.startswith(LIBRARY_DIRS) or path.startswith("<frozen")


def dense_ops(scoped):
    """Ops of a Keras Dense layer traced in a tf.function, created inside the
    scope or not."""
    layer = keras.layers.Dense(3)
    layer.build((None, 4))

    @tf.function(autograph=False)
    def fn(x):
        scope = (op_stack_traces.library_frames_dropped() if scoped
                 else contextlib.nullcontext())
        with scope:
            return layer(x)  # the user's line

    graph = fn.get_concrete_function(tf.TensorSpec([2, 4])).graph
    return [op for op in graph.get_operations()
            if op.type in ("MatMul", "BiasAdd")]


def test_scope_keeps_only_user_frames():
    ops = dense_ops(scoped=True)
    assert len(ops) == 2
    for op in ops:
        files = frame_files(op)
        assert THIS_FILE in files, files
        assert not [f for f in files if is_library(f)], files
        # The innermost kept frame is the user's line calling the layer, not
        # dropped with TensorFlow's own innermost frames.
        user = [frame for frame in op.traceback
                if os.path.abspath(frame.filename) == THIS_FILE]
        assert user[-1].name == "fn"


def test_without_scope_library_frames_are_recorded():
    # The control: the same ops record Keras and TensorFlow frames.
    for op in dense_ops(scoped=False):
        files = frame_files(op)
        assert THIS_FILE in files
        assert any(f.startswith(LIBRARY_DIRS[1]) for f in files), files
        assert any(f.startswith(LIBRARY_DIRS[0]) for f in files), files


def test_enclosing_filter_is_back_after_the_scope_and_an_error():
    graph = tf.Graph()
    with graph.as_default():
        with pytest.raises(RuntimeError):
            with op_stack_traces.library_frames_dropped():
                tf.constant(1.0, name="inside")
                raise RuntimeError("boom")
        outside = keras.ops.add(tf.constant(1.0), 2.0)
    inside = graph.get_operation_by_name("inside")
    assert not [f for f in frame_files(inside) if is_library(f)]
    assert any(is_library(f) for f in frame_files(outside.op))


def test_library_files_cover_the_libraries_not_the_user():
    files = op_stack_traces.library_files()
    assert sys.modules[keras.layers.Dense.__module__].__file__ in files
    assert os.path.abspath(contextlib.__file__) in files
    assert os.path.abspath(op_stack_traces.__file__) not in files
    assert THIS_FILE not in files


def test_train_step_ops_record_no_library_frames():
    _, _, step = test_train_step.make_step()
    inputs = test_train_step.batch()
    graph = tf.function(step.replica_step).get_concrete_function(
        inputs).graph
    ops = graph.get_operations()
    # Only what tf.function's tracing adds around the step (its inputs'
    # placeholders, the outputs' identities, the control no-op) is made
    # outside the scope.
    with_library = [(op.name, op.type) for op in ops
                    if any(is_library(f) for f in frame_files(op))]
    assert with_library
    assert {t for _, t in with_library} <= {"Placeholder", "Identity",
                                            "NoOp"}, with_library[:10]
    assert len(with_library) < 30, with_library
    # The model's ops still name the user's model code (the stand-in model),
    # and the guard's ops this package's train step.
    files = {f for op in ops for f in frame_files(op)}
    assert STANDINS_FILE in files
    assert os.path.abspath(sys.modules[
        "max_deeplab_tf.training.train_step"].__file__) in files
    # And the step still computes what it did.
    assert np.isfinite(float(
        tf.function(step.replica_step)(inputs)[common.TOTAL_LOSS]))


def test_evaluator_step_ops_record_no_library_frames(tmp_path):
    from tests.trainer import standins
    from trainer import evaluator as evaluator_lib

    model = standins.StandinModel()
    examples = standins.make_examples(2, seed=3)
    model(tf.constant(examples[common.IMAGE]))
    evaluator = evaluator_lib.Evaluator(
        tf.distribute.get_strategy(),
        lambda *_: tf.data.Dataset.from_tensor_slices(examples).batch(2),
        model, standins.StandinLoss(),
        standins.eval_hooks(None, None), tf.Variable(0, dtype=tf.int64),
        str(tmp_path), standins.COLOURS.astype(np.uint8),
        standins.LABEL_DIVISOR)
    inputs = {k: tf.constant(v) for k, v in examples.items()}
    ops = tf.function(evaluator._replica_step).get_concrete_function(
        inputs).graph.get_operations()
    with_library = [(op.name, op.type) for op in ops
                    if any(is_library(f) for f in frame_files(op))]
    assert {t for _, t in with_library} <= {"Placeholder", "Identity",
                                            "NoOp"}, with_library[:10]
    files = {f for op in ops for f in frame_files(op)}
    assert STANDINS_FILE in files  # the model's and the hooks' ops

"""training.graph_optimizer: grappler off for the train step on CPU only.

Whether grappler ran is read from TensorFlow itself: with
TF_DUMP_GRAPH_PREFIX set and meta_optimizer's log on, grappler writes an
`after_MetaOptimizer_*.pbtxt` for every graph it optimises.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import tensorflow as tf

from max_deeplab_tf.training import graph_optimizer
from max_deeplab_tf.training import train_step as train_step_lib
from tests.training import test_train_step

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
_KEY = "disable_meta_optimizer"


def _disabled():
    return bool(tf.config.optimizer.get_experimental_options().get(_KEY,
                                                                   False))


def test_scope_sets_and_puts_back_the_switch():
    assert not _disabled()
    with graph_optimizer.enabled(False):
        assert _disabled()
        with graph_optimizer.enabled(True):
            assert not _disabled()
        assert _disabled()
    assert not _disabled()
    with pytest.raises(RuntimeError):
        with graph_optimizer.enabled(False):
            raise RuntimeError("boom")
    assert not _disabled()


def test_scope_keeps_a_users_global_setting():
    tf.config.optimizer.set_experimental_options({_KEY: True})
    try:
        with graph_optimizer.enabled(False):
            assert _disabled()
        assert _disabled()
        with graph_optimizer.enabled(True):
            assert not _disabled()
        assert _disabled()
    finally:
        tf.config.optimizer.set_experimental_options({_KEY: False})


def _graphs_optimised(tmp_path, body):
    """Runs `body` (after `import tensorflow as tf` and graph_optimizer) in
    a fresh process; returns how many graphs grappler optimised, read from
    its dumps, for each printed marker."""
    script = textwrap.dedent("""
        import os, sys
        import tensorflow as tf
        from max_deeplab_tf.training import graph_optimizer
        dump = os.environ["TF_DUMP_GRAPH_PREFIX"]
        def optimised():
            return len([n for n in os.listdir(dump)
                        if n.startswith("after_MetaOptimizer")])
    """) + textwrap.dedent(body)
    env = dict(os.environ, TF_DUMP_GRAPH_PREFIX=str(tmp_path),
               TF_CPP_VMODULE="meta_optimizer=1", TF_CPP_MIN_LOG_LEVEL="0",
               PYTHONPATH=REPO_ROOT)
    out = subprocess.run([sys.executable, "-c", script], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(line.split()[1:] for line in out.stdout.splitlines()
                if line.startswith("COUNT"))


def test_functions_run_in_the_scope_are_not_optimised(tmp_path):
    counts = _graphs_optimised(tmp_path, """
        def make():
            @tf.function
            def f(x):
                return tf.reduce_sum(x * 2.0 + tf.constant(1.0) * 3.0)
            return f
        x = tf.ones([4])
        inside, outside = make(), make()
        with graph_optimizer.enabled(False):
            inside(x)
            inside(x)
        print("COUNT after_inside", optimised())
        outside(x)
        print("COUNT after_outside", optimised())
        with graph_optimizer.enabled(False):
            inside(x)  # the same function again: not prepared again
        print("COUNT after_inside_again", optimised())
        with graph_optimizer.enabled(True):
            make()(x)
        print("COUNT after_enabled", optimised())
    """)
    assert counts == {"after_inside": "0", "after_outside": "1",
                      "after_inside_again": "1", "after_enabled": "2"}


def test_off_only_where_no_gpu_or_tpu(monkeypatch):
    devices = {"GPU": [], "TPU": []}
    monkeypatch.setattr(tf.config, "list_logical_devices",
                        lambda kind=None: devices[kind])
    assert graph_optimizer.pays_off_for_training() is False
    devices["GPU"] = [tf.config.LogicalDevice("/device:GPU:0", "GPU")]
    assert graph_optimizer.pays_off_for_training() is True
    devices["GPU"], devices["TPU"] = [], ["tpu"]
    assert graph_optimizer.pays_off_for_training() is True


def test_train_step_follows_the_device_unless_told(monkeypatch):
    monkeypatch.setattr(graph_optimizer, "pays_off_for_training",
                        lambda: False)
    _, _, step = test_train_step.make_step()
    assert step.optimize_graph is False
    with step.graph_optimizer_scope():
        assert _disabled()
    assert not _disabled()
    monkeypatch.setattr(graph_optimizer, "pays_off_for_training",
                        lambda: True)
    _, _, step = test_train_step.make_step()
    assert step.optimize_graph is True
    with step.graph_optimizer_scope():
        assert not _disabled()


def test_explicit_setting_wins(monkeypatch):
    monkeypatch.setattr(graph_optimizer, "pays_off_for_training",
                        lambda: False)
    _, model_optimizer, step = test_train_step.make_step()
    explicit = train_step_lib.TrainStep(
        step.model, step.loss_fn, model_optimizer, global_batch_size=4,
        optimize_graph=True)
    assert explicit.optimize_graph is True

"""Distribution and fault tolerance in real processes.

- A 2-process MultiWorkerMirroredStrategy run on 127.0.0.1 ends with
  identical weights on both workers.
- A run killed with SIGKILL mid-training and restarted with the same command
  resumes from its last checkpoint and ends exactly where an uninterrupted
  run ends.

These use the stand-in model and data (tests/trainer/standins.py, with a
synchronised batch norm and a layer kept in a list): they test the trainer's
strategy, all-reduce and checkpoint machinery, which does not depend on the
architecture, in seconds rather than minutes. test_integration.py runs the
real model (MirroredStrategy over 2 logical CPUs against one device there).
"""

import json
import os
import signal

import numpy as np
import tensorflow as tf

from tests.trainer import subprocesses as sp

SEED = "trainer_options { random_seed: 7 }"


def assert_same_weights(a, b, atol):
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=atol,
                                   err_msg=key)


def test_multi_worker_mirrored_two_processes(tmp_path):
    ports = sp.free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    model_dir = tmp_path / "model"
    processes = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster,
                                "task": {"type": "worker", "index": index}})
        prefix = str(tmp_path / f"worker{index}")
        command = sp.driver_command(
            f"--model_dir={model_dir}", f"--dump={prefix}",
            f"--config_override={SEED}",
            "--config_override=trainer_options { solver_options { "
            "training_number_of_steps: 4 } }")
        processes.append((sp.start(command, prefix + ".log",
                                   TF_CONFIG=tf_config), prefix))
    try:
        for process, prefix in processes:
            sp.finish(process, prefix + ".log", timeout=240)
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    (w0, r0), (w1, r1) = [sp.load_dump(p) for _, p in processes]
    assert r0["global_step"] == r1["global_step"] == 4
    assert_same_weights(w0, w1, atol=0)
    # The chief (worker 0) owns the model directory; the other worker's
    # private checkpoints are cleaned up.
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-4")
    assert not (model_dir / "worker_tmp" / "worker_1").exists()


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
    # One batch of data, so the input position cannot matter: the resumed
    # run must end bit-for-bit where an uninterrupted one ends.
    steps = 1500
    args = [f"--config_override={SEED}", "--num_train_examples=4",
            "--config_override=trainer_options { steps_per_loop: 25 "
            "save_checkpoints_steps: 100 solver_options { "
            f"training_number_of_steps: {steps} }} }}"]
    reference = str(tmp_path / "reference")
    sp.run(sp.driver_command(f"--model_dir={tmp_path}/reference_model",
                             f"--dump={reference}", *args),
           reference + ".log", timeout=240)

    model_dir = tmp_path / "model"
    resumed = str(tmp_path / "resumed")
    command = sp.driver_command(f"--model_dir={model_dir}",
                                f"--dump={resumed}", *args)
    process = sp.start(command, resumed + "-killed.log")
    try:
        # Strike once at least two checkpoints exist, mid-run.
        assert sp.wait_for(
            lambda: len(list(model_dir.glob("ckpt-*.index"))) >= 2, 180), (
                sp.tail(resumed + "-killed.log"))
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    latest = tf.train.latest_checkpoint(str(model_dir))
    assert latest is not None
    killed_at = int(latest.rsplit("-", 1)[1])
    assert 0 < killed_at < steps
    # The checkpoint the index names is complete and readable.
    tf.train.load_checkpoint(latest).get_variable_to_shape_map()

    sp.run(command, resumed + ".log", timeout=240)
    with open(resumed + ".log") as f:
        log = f.read()
    assert f"Restored {latest} (step {killed_at})" in log
    w_ref, r_ref = sp.load_dump(reference)
    w_res, r_res = sp.load_dump(resumed)
    assert r_res["global_step"] == r_ref["global_step"] == steps
    assert_same_weights(w_ref, w_res, atol=1e-6)


def assert_checkpoints_sound(model_dir):
    """Every checkpoint the index lists reads back and holds only finite
    values; no unfinished write is left in the folder."""
    state = tf.train.get_checkpoint_state(str(model_dir))
    assert state is not None and state.all_model_checkpoint_paths
    for path in state.all_model_checkpoint_paths:
        reader = tf.train.load_checkpoint(path)
        for key in reader.get_variable_to_shape_map():
            value = reader.get_tensor(key)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                assert np.isfinite(value).all(), (path, key)
    return state


def test_sigkill_during_a_checkpoint_write_then_resume(tmp_path):
    # 64 MB of model state make each write last long enough to strike
    # while TensorFlow's saver holds its ckpt-N_temp/ folder.
    steps = 20
    model_dir = tmp_path / "model"
    log = str(tmp_path / "killed.log")
    command = sp.driver_command(
        f"--model_dir={model_dir}", "--ballast_mb=64",
        f"--config_override={SEED}",
        "--config_override=trainer_options { steps_per_loop: 5 "
        "save_checkpoints_steps: 10 num_checkpoints_to_keep: 10 "
        f"solver_options {{ training_number_of_steps: {steps} }} }}")
    process = sp.start(command, log)
    try:
        def writing():
            return any(name.endswith("_temp") and name.startswith("ckpt-")
                       for name in (os.listdir(model_dir)
                                    if model_dir.exists() else ()))
        # A tight poll: the folder lives for a fraction of a second.
        assert sp.wait_for(writing, 180, interval=0.001), sp.tail(log)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert process.returncode == -signal.SIGKILL
    stale = sorted(p.name for p in model_dir.glob("ckpt-*_temp"))
    assert stale, "the kill did not land inside a write"
    written = (assert_checkpoints_sound(model_dir).all_model_checkpoint_paths
               if tf.train.get_checkpoint_state(str(model_dir)) else [])
    # The interrupted checkpoint is not one the index names.
    assert not any(path.endswith(name[:-len("_temp")]) for path in written
                   for name in stale)

    resumed = str(tmp_path / "resumed")
    sp.run(command + [f"--dump={resumed}"], resumed + ".log", timeout=240)
    _, result = sp.load_dump(resumed)
    assert result["global_step"] == steps
    # Removed at start-up by the trainer, not merely reused by the saver when
    # it writes the same step again.
    with open(resumed + ".log") as f:
        assert (f"Removed {len(stale)} unfinished checkpoint write(s)"
                in f.read()), sp.tail(resumed + ".log")
    assert not list(model_dir.glob("ckpt-*_temp"))
    state = assert_checkpoints_sound(model_dir)
    assert state.model_checkpoint_path.endswith(f"ckpt-{steps}")


def test_nonfinite_learning_rate_skips_under_mirrored_strategy_two_cpus(
        tmp_path):
    # An infinite learning rate under MirroredStrategy (the merge-call path
    # of the guard): every update is skipped on both replicas.
    model_dir = tmp_path / "model"
    out = str(tmp_path / "mirrored")
    sp.run(sp.driver_command(
        f"--model_dir={model_dir}", f"--dump={out}", "--num_cpu_devices=2",
        f"--config_override={SEED}",
        "--config_override=trainer_options { steps_per_loop: 4 "
        "save_checkpoints_steps: 4 max_consecutive_nonfinite_steps: 100 "
        "solver_options { base_learning_rate: inf "
        "training_number_of_steps: 4 } }"), out + ".log", timeout=240)
    weights, result = sp.load_dump(out)
    assert result["global_step"] == 4
    assert result["train"]["skipped_nonfinite_steps"] == 4
    assert np.isfinite(result["train"]["losses/total_loss"])
    for key, value in weights.items():
        assert np.isfinite(value).all(), key
    assert_checkpoints_sound(model_dir)

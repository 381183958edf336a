"""run_experiment's modes, files and error paths, with stand-in pieces.

Everything (model_dir, checkpoints, summaries, metrics, exports) lives on
TensorFlow's in-memory ram:// filesystem here, which goes only through
tf.io.gfile; a stray os/open path would fail.
"""

import json
import uuid

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import common
from max_deeplab_tf.training import checkpoints
from tests.trainer import standins
from trainer import train_lib


def examples(poison_from=None):
    data = {"train": standins.make_examples(32, 0),
            "val": standins.make_examples(6, 1)}
    if poison_from is not None:
        data["train"][common.IMAGE][poison_from:, 0, 0, 0] = np.nan
    return data


def ram_dir():
    return f"ram://trainer-test-{uuid.uuid4().hex}"


def read_json(path):
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def summary_tags(directory):
    tags = set()
    for name in tf.io.gfile.listdir(directory):
        if name.startswith("events.out.tfevents"):
            for event in tf.compat.v1.train.summary_iterator(
                    f"{directory}/{name}"):
                tags.update(v.tag for v in event.summary.value)
    return tags


def test_train_and_eval_on_ram_then_resume_eval_and_export():
    model_dir = ram_dir()
    config = standins.config(
        "evaluator_options { save_predictions: true }",
        "trainer_options { export_after_training: true }")
    pieces = standins.components(examples())
    result = train_lib.run_experiment("train_and_eval", config, model_dir,
                                      components=pieces)
    assert result["global_step"] == 8
    names = tf.io.gfile.listdir(model_dir)
    assert "checkpoint" in names and "ckpt-8.index" in names
    # Two evaluations (eval_interval 4), each with its own metrics file.
    eval_files = tf.io.gfile.listdir(f"{model_dir}/eval")
    assert {"metrics-4.json", "metrics-8.json", "metrics-latest.json"} <= set(
        eval_files)
    assert any(n.startswith("events.out.tfevents") for n in eval_files)
    assert any(n.startswith("events.out.tfevents")
               for n in tf.io.gfile.listdir(f"{model_dir}/train"))
    # TensorBoard: every loss term, the learning rate, PQ/SQ/RQ overall,
    # things and stuff, and prediction images.
    assert {"losses/total_loss", "losses/semantic_loss", "losses/logit_l2",
            "learning_rate", "images_per_second"} <= summary_tags(
                f"{model_dir}/train")
    eval_tags = summary_tags(f"{model_dir}/eval")
    for metric in ("PQ", "SQ", "RQ"):
        for suffix in ("", "_things", "_stuff"):
            assert f"panoptic_quality/{metric}{suffix}" in eval_tags
    assert {"losses/total_loss",
            "predictions/image_gt_prediction"} <= eval_tags
    latest = read_json(f"{model_dir}/eval/metrics-latest.json")
    assert latest == read_json(f"{model_dir}/eval/metrics-8.json")
    assert latest["step"] == 8 and latest["num_images"] == 6
    assert set(latest["All"]) == {"pq", "sq", "rq", "n"}
    assert {"Things", "Stuff", "per_class", "losses"} <= set(latest)
    assert set(latest["losses"]) == {"total_loss", "semantic_loss",
                                     "logit_l2"}
    # Prediction panels: image | ground truth | prediction.
    pngs = tf.io.gfile.listdir(f"{model_dir}/vis")
    assert len([p for p in pngs if p.endswith("_step-8.png")]) == 2
    panel = tf.io.decode_png(tf.io.gfile.GFile(
        f"{model_dir}/vis/{sorted(pngs)[-1]}", "rb").read())
    assert panel.shape == (standins.SIZE, 3 * standins.SIZE, 3)
    # The SavedModel was exported and serves.
    export_dir = f"{model_dir}/export/8"
    assert result["export_dir"] == export_dir
    served = tf.saved_model.load(export_dir).signatures["serving_default"](
        tf.zeros([1, standins.SIZE, standins.SIZE, 3], tf.uint8))
    assert served["semantic"].shape == (1, standins.SIZE, standins.SIZE)

    # The same command with more steps resumes from ckpt-8 (on ram://).
    longer = standins.config(
        "trainer_options { solver_options { training_number_of_steps: 12 } }")
    result = train_lib.run_experiment("train", longer, model_dir,
                                      components=pieces)
    assert result["global_step"] == 12
    assert "ckpt-12.index" in tf.io.gfile.listdir(model_dir)

    # Eval mode restores the latest checkpoint (step 12).
    result = train_lib.run_experiment("eval", config, model_dir,
                                      components=pieces)
    assert result["eval"]["step"] == 12
    assert read_json(f"{model_dir}/eval/metrics-12.json")["step"] == 12


def test_nonfinite_losses_stop_training_with_a_clear_message():
    model_dir = ram_dir()
    # Batches from the third on are poisoned: steps 3, 4, 5 are non-finite.
    config = standins.config(
        "trainer_options { max_consecutive_nonfinite_steps: 3 "
        "steps_per_loop: 8 save_checkpoints_steps: 100 }")
    with pytest.raises(train_lib.TrainingStopped) as error:
        train_lib.run_experiment("train", config, model_dir,
                                 components=standins.components(
                                     examples(poison_from=8)))
    message = str(error.value)
    assert "3 consecutive steps had a non-finite loss" in message
    assert "Stopped at step 5" in message
    assert "max_consecutive_nonfinite_steps" in message


def test_isolated_nonfinite_steps_are_skipped_and_counted():
    model_dir = ram_dir()
    data = examples()
    data["train"][common.IMAGE][8:12, 0, 0, 0] = np.nan  # Step 3 only.
    config = standins.config(
        "trainer_options { max_consecutive_nonfinite_steps: 2 "
        "steps_per_loop: 4 }")
    result = train_lib.run_experiment("train", config, model_dir,
                                      components=standins.components(data))
    assert result["global_step"] == 8
    assert result["train"]["skipped_nonfinite_steps"] == 0.0  # Second loop.
    # (tf.train.load_checkpoint takes any ram:// prefix for a directory.)
    state = tf.compat.v1.train.NewCheckpointReader(f"{model_dir}/ckpt-8")
    assert int(state.get_tensor(
        "train_step/total_nonfinite_steps/.ATTRIBUTES/VARIABLE_VALUE")) == 1
    weights = [state.get_tensor(key)
               for _, (key, _) in checkpoints.checkpoint_variable_paths(
                   state).items()]
    assert len(weights) == 8
    assert all(np.isfinite(w).all() for w in weights)


def test_initial_checkpoint_is_loaded_when_model_dir_is_empty():
    source_dir = ram_dir()
    pieces = standins.components(examples())
    train_lib.run_experiment("train", standins.config(), source_dir,
                             components=pieces)
    captured = {}

    def factory():
        captured["model"] = standins.StandinModel()
        return captured["model"]

    config = standins.config(
        f"model_options {{ initial_checkpoint: '{source_dir}/ckpt-8' }}")
    result = train_lib.run_experiment(
        "eval", config, ram_dir(),
        components=standins.components(examples(), model_factory=factory))
    assert result["eval"]["step"] == 0
    state = tf.compat.v1.train.NewCheckpointReader(f"{source_dir}/ckpt-8")
    paths = checkpoints.checkpoint_variable_paths(state)
    key = "model/encoder/_kernel/.ATTRIBUTES/VARIABLE_VALUE"
    np.testing.assert_array_equal(
        captured["model"].encoder.kernel.numpy(),
        state.get_tensor(paths[key][0]))


def test_eval_without_any_checkpoint_is_an_error():
    with pytest.raises(ValueError, match="holds no checkpoint"):
        train_lib.run_experiment("eval", standins.config(), ram_dir(),
                                 components=standins.components(examples()))


def test_export_and_continuous_eval_modes():
    model_dir = ram_dir()
    pieces = standins.components(examples())
    train_lib.run_experiment("train", standins.config(), model_dir,
                             components=pieces)
    result = train_lib.run_experiment("export", standins.config(), model_dir,
                                      components=pieces)
    assert result["export_dir"] == f"{model_dir}/export/8"
    assert tf.io.gfile.exists(f"{model_dir}/export/8/saved_model.pb")
    # Evaluates the latest checkpoint, then gives up waiting after 1 s.
    config = standins.config("evaluator_options { continuous_eval_timeout: 1 }")
    result = train_lib.run_experiment("continuous_eval", config, model_dir,
                                      components=pieces)
    assert result["eval"]["step"] == 8


def test_use_xla_compiles_the_step_on_one_device(caplog):
    config = standins.config("trainer_options { use_xla: true }")
    with caplog.at_level("WARNING"):
        result = train_lib.run_experiment(
            "train", config, ram_dir(),
            components=standins.components(examples()))
    assert result["jit_compile"] is True
    # On a machine without a GPU the user is told that XLA costs time here.
    if not tf.config.list_logical_devices("GPU"):
        assert "compiling the step for the CPU" in caplog.text
    assert result["global_step"] == 8
    assert np.isfinite(result["train"]["losses/total_loss"])


@pytest.mark.parametrize("machine,mkl,env,devices,expected", [
    ("x86_64", False, None, [], True),      # e.g. an AMD EPYC with AVX2
    ("AMD64", False, None, [], True),
    ("x86_64", True, None, [], False),      # oneDNN on by default
    ("x86_64", False, "0", [], False),      # the user chose
    ("x86_64", True, "1", [], False),
    ("aarch64", False, None, [], False),    # not an x86 CPU
    ("x86_64", False, None, ["GPU"], False),
])
def test_onednn_hint_only_where_tensorflow_left_it_off(
        machine, mkl, env, devices, expected, monkeypatch):
    monkeypatch.setattr(train_lib.platform, "machine", lambda: machine)
    monkeypatch.setattr(train_lib._pywrap_util_port, "IsMklEnabled",
                        lambda: mkl)
    monkeypatch.setattr(
        train_lib.tf.config, "list_logical_devices",
        lambda kind=None: ["device"] if kind in devices else [])
    if env is None:
        monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    else:
        monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", env)
    assert train_lib._onednn_left_off() is expected


def test_global_batch_must_divide_over_replicas():
    class FakeStrategy:
        num_replicas_in_sync = 3

    config = standins.config()
    with pytest.raises(ValueError, match=r"train_dataset_options.batch_size 4"
                       r" .* divisible by the 3 replicas"):
        train_lib.run_experiment("train", config, ram_dir(),
                                 components=standins.components(examples()),
                                 strategy=FakeStrategy())


def checkpoint_values(model_dir):
    """Every floating tensor of every checkpoint the index lists."""
    state = tf.train.get_checkpoint_state(model_dir)
    values = {}
    for path in state.all_model_checkpoint_paths:
        reader = tf.compat.v1.train.NewCheckpointReader(path)
        for key in reader.get_variable_to_shape_map():
            value = reader.get_tensor(key)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f":
                values[(path, key)] = value
    return values


def test_infinite_learning_rate_is_rolled_back_and_checkpoints_stay_finite():
    # Config validation refuses inf; here the config bypasses it to reach
    # the step's guard: every update makes the weights non-finite.
    model_dir = ram_dir()
    config = standins.config(
        "trainer_options { max_consecutive_nonfinite_steps: 6 "
        "steps_per_loop: 2 save_checkpoints_steps: 2 "
        "solver_options { base_learning_rate: inf } }")
    captured = {}

    def factory():
        captured["model"] = standins.StandinModel()
        return captured["model"]

    with pytest.raises(train_lib.TrainingStopped) as error:
        train_lib.run_experiment(
            "train", config, model_dir,
            components=standins.components(examples(),
                                           model_factory=factory))
    assert "6 consecutive steps" in str(error.value)
    assert "Stopped at step 6" in str(error.value)
    values = checkpoint_values(model_dir)
    # ckpt-2 and ckpt-4 (the run stopped inside the third loop).
    assert len({path for path, _ in values}) == 2
    assert all(np.isfinite(v).all() for v in values.values())
    # Every update was skipped before it was made (no step was good), so
    # every checkpoint and the model hold the same (initial) weights.
    model = captured["model"]
    last = tf.compat.v1.train.NewCheckpointReader(f"{model_dir}/ckpt-4")
    paths = checkpoints.checkpoint_variable_paths(last)
    for key, variable in checkpoints.variable_keys(model).items():
        np.testing.assert_array_equal(
            variable.numpy(), last.get_tensor(paths[f"model/{key}"][0]),
            err_msg=key)
        assert np.isfinite(variable.numpy()).all(), key


@pytest.mark.parametrize("optimizer", ["sgd", "radam"])
def test_huge_learning_rate_keeps_checkpoints_finite(optimizer):
    # 1e30 is finite: the first updates give huge weights, the next losses
    # overflow; whatever the run does, no checkpoint holds NaN or inf.
    model_dir = ram_dir()
    config = standins.config(
        "trainer_options { max_consecutive_nonfinite_steps: 100 "
        "steps_per_loop: 2 save_checkpoints_steps: 2 "
        f"solver_options {{ base_learning_rate: 1e30 optimizer: "
        f"'{optimizer}' use_gradient_clipping: false }} }}")
    result = train_lib.run_experiment(
        "train", config, model_dir, components=standins.components(
            examples()))
    assert result["global_step"] == 8
    values = checkpoint_values(model_dir)
    assert values and all(np.isfinite(v).all() for v in values.values())
    skipped = sum(h["skipped_nonfinite_steps"]
                  for h in result["train_history"])
    assert skipped > 0


def test_logs_of_a_loop_without_an_applied_step_show_nan():
    # Steps 5-8 see NaN images: the second loop applies no step, and its
    # line must say nan, not 0.
    config = standins.config(
        "trainer_options { max_consecutive_nonfinite_steps: 100 "
        "steps_per_loop: 4 }")
    result = train_lib.run_experiment(
        "train", config, ram_dir(),
        components=standins.components(examples(poison_from=16)))
    first, second = result["train_history"]
    assert first["skipped_nonfinite_steps"] == 0
    assert np.isfinite(first["losses/total_loss"])
    assert second["skipped_nonfinite_steps"] == 4
    assert np.isnan(second["losses/total_loss"])
    assert np.isnan(second["losses/semantic_loss"])
    assert not np.isfinite(second["gradient_norm"])


def test_eval_and_export_restore_without_optimizer_warnings(caplog):
    import gc
    model_dir = ram_dir()
    pieces = standins.components(examples())
    train_lib.run_experiment("train", standins.config(), model_dir,
                             components=pieces)
    with caplog.at_level("WARNING"):
        result = train_lib.run_experiment("eval", standins.config(),
                                          model_dir, components=pieces)
        gc.collect()
    assert result["eval"]["step"] == 8
    unresolved = [r.getMessage() for r in caplog.records
                  if "could not be found" in r.getMessage()
                  or "Unresolved object" in r.getMessage()]
    assert not unresolved, unresolved[:3]


def test_bad_inputs_are_user_errors_naming_the_field(tmp_path):
    from max_deeplab_tf import cli
    pieces = standins.components(examples())
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(cli.UserError, match=r"model_dir .*a_file/model"):
        train_lib.run_experiment("train", standins.config(),
                                 f"{blocker}/model", components=pieces)
    with pytest.raises(cli.UserError, match="--mode=eval: .* no checkpoint"):
        train_lib.run_experiment("eval", standins.config(), ram_dir(),
                                 components=pieces)
    with pytest.raises(cli.UserError, match="--mode 'serve'"):
        train_lib.run_experiment("serve", standins.config(), ram_dir(),
                                 components=pieces)


def test_export_of_an_empty_model_dir_names_the_unset_initial_checkpoint():
    from max_deeplab_tf import cli
    config = standins.config(
        "model_options { initial_checkpoint: '${INIT_CHECKPOINT}' }")
    with pytest.raises(cli.UserError,
                       match=r"initial_checkpoint: '\$\{INIT_CHECKPOINT\}'"):
        train_lib.run_experiment("export", config, ram_dir(),
                                 components=standins.components(examples()))


def test_record_experiment_writes_ours_and_keeps_a_foreign_file(tmp_path):
    from google.protobuf import text_format
    from max_deeplab_tf.protos import config_pb2

    config = config_pb2.ExperimentOptions(experiment_name="first")
    path = train_lib.record_experiment(config, str(tmp_path))
    assert path == f"{tmp_path}/experiment.textproto"
    written = (tmp_path / "experiment.textproto").read_text()
    assert written.startswith(train_lib.EXPERIMENT_HEADER)
    assert text_format.Parse(written, config_pb2.ExperimentOptions()) == config
    # A later run replaces the trainer's own record.
    config.experiment_name = "second"
    train_lib.record_experiment(config, str(tmp_path))
    assert 'experiment_name: "second"' in (
        tmp_path / "experiment.textproto").read_text()
    # Never a file it did not write (the importer's, say).
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "experiment.textproto").write_text('experiment_name: "mine"\n')
    assert train_lib.record_experiment(config, str(foreign)) is None
    assert (foreign / "experiment.textproto").read_text() == (
        'experiment_name: "mine"\n')
    assert [p.name for p in foreign.iterdir()] == ["experiment.textproto"]


@pytest.mark.parametrize("mkl,expected", [
    (True, "with oneDNN on, as here, the compiled MaX-DeepLab-S step "
           "measured 1.05-1.16 times slower"),
    (False, "with oneDNN off, as here, the compiled MaX-DeepLab-S step "
            "measured 0.89-0.96 times"),
])
def test_xla_on_cpu_message_follows_the_kernels_in_use(mkl, expected,
                                                       monkeypatch):
    # The measured figures differ with oneDNN's kernels and Eigen's
    # (benchmarks/README.md); the warning quotes the one that applies.
    monkeypatch.setattr(train_lib._pywrap_util_port, "IsMklEnabled",
                        lambda: mkl)
    message = train_lib._xla_on_cpu_message()
    assert message.startswith("use_xla: compiling the step for the CPU")
    assert expected in message

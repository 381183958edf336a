"""The command line: flags and the errors a user sees."""

import subprocess
import sys
import time

from tests.conftest import REPO_ROOT
from tests.trainer import subprocesses as sp


def main(*args, timeout=120):
    return subprocess.run(
        [sys.executable, "-m", "trainer.main", *args], cwd=REPO_ROOT,
        env=sp.environment(), capture_output=True, text=True,
        timeout=timeout)


def test_bad_config_lists_its_problems_and_exits_2(tmp_path):
    config = tmp_path / "bad.textproto"
    config.write_text('experiment_name: "x"\n'
                      'trainer_options { solver_options { optimzer: "adam" '
                      '} }\n')
    result = main(f"--config_file={config}", f"--model_dir={tmp_path}/m")
    assert result.returncode == 2, result.stderr
    assert f"{config}:2" in result.stderr
    assert "optimzer" in result.stderr


def test_model_dir_is_required_without_a_config_default():
    result = main(
        "--config_file=configs/max_deeplab_s.textproto",
        "--config_override=train_dataset_options.file_pattern: 'a'",
        "--config_override=eval_dataset_options.file_pattern: 'b'",
        "--config_override=model_options.initial_checkpoint: ''")
    assert result.returncode != 0
    assert "--model_dir is required" in result.stderr


def test_config_file_is_required():
    result = main()
    assert result.returncode != 0
    assert "--config_file is required" in result.stderr


TINY = "configs/testing/tiny.textproto"


def start_main(tmp_path, name, *args):
    log = tmp_path / f"{name}.log"
    command = [sys.executable, "-m", "trainer.main", *args]
    return sp.start(command, str(log)), log


def test_bad_inputs_exit_2_with_one_line_each(tmp_path):
    """Each bad input, as a user would make it, in its own process (run
    side by side): exit code 2, one line naming the file, field or flag, no
    traceback, in well under a minute."""
    inf_config = tmp_path / "inf.textproto"
    text = open(f"{REPO_ROOT}/{TINY}").read()
    assert "base_learning_rate: 0.001" in text
    inf_config.write_text(text.replace("base_learning_rate: 0.001",
                                       "base_learning_rate: inf"))
    line = 1 + text.splitlines().index("    base_learning_rate: 0.001")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "train-00000-of-00001.tfrecord").write_bytes(b"")
    train_pattern = "--config_override=train_dataset_options.file_pattern: "
    cases = {
        # A non-finite number in the config file.
        "inf": ([f"--config_file={inf_config}", f"--model_dir={tmp_path}/m1",
                 "--mode=train"],
                [f"{inf_config}:{line}",
                 "trainer_options.solver_options.base_learning_rate",
                 "inf is not a finite number"]),
        # A model_dir under a regular file.
        "model_dir": ([f"--config_file={TINY}", "--mode=train",
                       f"--model_dir={blocker}/model",
                       train_pattern + f"'{empty}/train-*'"],
                      ["model_dir", f"{blocker}/model",
                       "expected a writable directory"]),
        # A pattern that matches nothing.
        "no_match": ([f"--config_file={TINY}", "--mode=train",
                      f"--model_dir={tmp_path}/m3",
                      train_pattern + f"'{tmp_path}/nothing-*'"],
                     ["train_dataset_options.file_pattern",
                      f"{tmp_path}/nothing-*"]),
        # Shards without a single example: would spin forever.
        "empty": ([f"--config_file={TINY}", "--mode=train",
                   f"--model_dir={tmp_path}/m4",
                   train_pattern + f"'{empty}/train-*'"],
                  ["train_dataset_options.file_pattern", str(empty)]),
        # A global batch the replicas do not divide.
        "batch": ([f"--config_file={TINY}", "--mode=train",
                   "--num_cpu_devices=2", f"--model_dir={tmp_path}/m5",
                   "--config_override=train_dataset_options.batch_size: 3",
                   train_pattern + f"'{empty}/train-*'"],
                  ["train_dataset_options.batch_size 3",
                   "divisible by the 2 replicas"]),
        # --verbose: the same line, after the traceback.
        "verbose": ([f"--config_file={tmp_path}/missing.textproto",
                     f"--model_dir={tmp_path}/m6", "--verbose"],
                    ["cannot read the config file"]),
    }
    started = time.time()
    processes = {name: start_main(tmp_path, name, *args)
                 for name, (args, _) in cases.items()}
    try:
        for name, (process, log) in processes.items():
            process.wait(timeout=max(1, 150 - (time.time() - started)))
    finally:
        for process, _ in processes.values():
            if process.poll() is None:
                process.kill()
                process.wait()
    for name, (process, log) in processes.items():
        output = log.read_text()
        errors = [l for l in output.splitlines() if l.startswith("error: ")]
        assert process.returncode == 2, (name, output[-3000:])
        assert len(errors) == 1, (name, output[-3000:])
        for words in cases[name][1]:
            assert words in errors[0], (name, errors[0])
        assert ("Traceback" in output) == (name == "verbose"), (
            name, output[-3000:])
    # Every case failed at start-up (the empty dataset did not hang).
    assert time.time() - started < 150

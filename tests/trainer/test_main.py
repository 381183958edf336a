"""The command line: flags and the errors a user sees."""

import subprocess
import sys

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
        "--config_override=eval_dataset_options.file_pattern: 'b'")
    assert result.returncode != 0
    assert "--model_dir is required" in result.stderr


def test_config_file_is_required():
    result = main()
    assert result.returncode != 0
    assert "--config_file is required" in result.stderr

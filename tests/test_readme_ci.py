"""The README's two commands and .ci/run stay in sync."""

import os
import re

from tests.conftest import REPO_ROOT


def read(*parts):
    with open(os.path.join(REPO_ROOT, *parts)) as f:
        return f.read()


def readme_commands():
    """The shell commands in the README's fenced ```bash blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", read("README.md"), re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    ci_lines = [line for line in read(".ci", "run").splitlines()
                if line and not line.startswith("#")]
    test_command = next(c for c in readme_commands() if "pytest" in c)
    assert ci_lines[-1] == test_command


def test_readme_has_two_self_contained_commands():
    commands = readme_commands()
    assert len(commands) == 2, commands
    for command in commands:
        # Each one creates the environment and installs before it runs.
        assert command.startswith("python3 -m venv .venv && "), command
        assert 'pip install -q -e ".[test]"' in command or (
            "pip install -q -e ." in command), command


def test_readme_layer_example_runs_and_reloads(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", read("README.md"), re.S)
    example = next(b for b in blocks if "layers.AxialBlock" in b)
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert (tmp_path / "classifier.keras").exists()
    model = namespace["model"]
    import numpy as np

    outputs = model(np.zeros((1, 65, 65, 3), "float32"))
    assert tuple(outputs.shape) == (1, 10)

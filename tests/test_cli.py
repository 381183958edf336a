"""Tests of max_deeplab_tf.cli: one-line errors, exit codes, --verbose, progress."""

import io
import subprocess
import sys
import textwrap

import pytest

from max_deeplab_tf import cli

_SCRIPT = textwrap.dedent("""
    import sys
    from max_deeplab_tf import cli

    def main(argv):
        kind = sys.argv[1]
        if kind == "user":
            raise cli.UserError("--images: 'x/*.jpg' matches no file")
        if kind == "multi":
            raise cli.UserError("two problems:\\n  a: bad\\n  b: worse")
        if kind == "bug":
            raise KeyError("boom")
        return 0

    cli.run_main(main)
""")


def _run(*args):
    return subprocess.run([sys.executable, "-c", _SCRIPT, *args],
                          capture_output=True, text=True, timeout=60)


def test_user_error_is_one_line_with_exit_2():
    result = _run("user")
    assert result.returncode == 2
    assert result.stderr == "error: --images: 'x/*.jpg' matches no file\n"


def test_multi_line_message_is_folded_onto_one_line():
    result = _run("multi")
    assert result.returncode == 2
    assert result.stderr == "error: two problems: a: bad; b: worse\n"


def test_verbose_adds_the_traceback():
    result = _run("user", "--verbose")
    assert result.returncode == 2
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().endswith(
        "error: --images: 'x/*.jpg' matches no file")


def test_a_bug_is_an_internal_error_with_exit_1():
    result = _run("bug")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("internal error: KeyError: 'boom'")
    assert "--verbose" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_success_exits_0_and_prints_nothing():
    result = _run("ok")
    assert (result.returncode, result.stderr) == (0, "")


def test_config_error_counts_as_user_error():
    from max_deeplab_tf.config import ConfigError
    assert cli.is_user_error(ConfigError("c.textproto", ["c:1: x: bad"]))
    assert not cli.is_user_error(ValueError("x"))


@pytest.mark.parametrize("argv,expected", [
    (["--verbose"], True), (["--verbose=true"], True), (["-v"], False),
    (["--verbose=false"], False), (["--", "--verbose"], False), ([], False)])
def test_wants_traceback(argv, expected):
    assert cli.wants_traceback(argv) is expected


def test_progress_writes_plain_lines_when_not_a_terminal():
    stream = io.StringIO()
    with cli.Progress(total=5, desc="convert", every=2,
                      stream=stream) as progress:
        for _ in range(5):
            progress.update()
    lines = stream.getvalue().splitlines()
    # Every second item and the last: 2, 4, 5.
    assert [line.split(",")[0] for line in lines] == [
        "convert: 2/5 images", "convert: 4/5 images", "convert: 5/5 images"]


def test_progress_disabled_writes_nothing():
    stream = io.StringIO()
    with cli.Progress(total=3, desc="x", stream=stream,
                      enabled=False) as progress:
        progress.update(3)
    assert stream.getvalue() == ""


def test_tensorflow_import_drops_only_the_cuda_probe_error():
    # The filter keeps every other line a captured body writes to fd 2.
    script = textwrap.dedent("""
        import os
        from max_deeplab_tf import cli
        with cli.without_cuda_probe_error():
            os.write(2, b"E cuda_platform.cc:51] failed call to cuInit: x\\n")
            os.write(2, b"W something else\\n")
        tf = cli.import_tensorflow_quietly()
        print(tf.__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "tensorflow\n"
    assert "cuInit" not in result.stderr
    assert "W something else\n" in result.stderr


def _make_package(root, name):
    package = root / name
    package.mkdir()
    (package / "__init__.py").write_text("VALUE = 1\n")


def test_optional_keras_packages_refused_only_inside_the_scope(
        tmp_path, monkeypatch):
    # Packages made here, so that the test does not depend on what is
    # installed: one imported before the scope, one not.
    for name in ("optional_before", "optional_inside"):
        _make_package(tmp_path, name)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "KERAS_OPTIONAL_PACKAGES",
                        ("optional_before", "optional_inside"))
    import optional_before  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    try:
        with cli.without_optional_keras_packages():
            with pytest.raises(ModuleNotFoundError):
                import optional_inside  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
            # Already imported: left as it was.
            assert sys.modules["optional_before"].VALUE == 1
        # After the scope the package imports normally.
        import optional_inside  # noqa: F401,F811  pylint: disable=import-outside-toplevel
        assert optional_inside.VALUE == 1
    finally:
        for name in ("optional_before", "optional_inside"):
            sys.modules.pop(name, None)


@pytest.mark.parametrize("start", [
    "from trainer import main; main._start_tensorflow(1, 0)",
    "cli.import_tensorflow()",
    "from max_deeplab_tf.tools import import_deeplab2",
])
def test_optional_keras_packages_not_loaded_by_tensorflow_or_trainer(start):
    # How the trainer starts (TensorFlow, its Keras, orbit's tf_keras) and
    # how the other commands import TensorFlow load none of the optional
    # packages, and Keras then runs without its pandas integration, as
    # where pandas is not installed; the packages still import afterwards.
    script = textwrap.dedent(f"""
        import importlib.util, sys
        from max_deeplab_tf import cli
        {start}
        tf = cli.import_tensorflow_quietly()
        loaded = [n for n in cli.KERAS_OPTIONAL_PACKAGES if n in sys.modules]
        from keras.src.trainers.data_adapters import array_slicing
        installed = [n for n in cli.KERAS_OPTIONAL_PACKAGES
                     if importlib.util.find_spec(n) is not None]
        if "pandas" in installed:
            import pandas
            assert pandas.DataFrame is not None
        print(loaded, array_slicing.pandas is None)
    """)
    result = subprocess.run([sys.executable, "-c", script],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[] True"

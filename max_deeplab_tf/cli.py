"""How every command of the project reports a failure: one line, exit code 2.

Every command (the trainer, the converter, predict, the PQ command, the
importer, the synthetic-data maker) runs its main function through
`run_main`. A bad input (a missing or malformed file, a config field, a flag)
raises `UserError` (or `ConfigError`, which is one) with a message naming the
file, field or flag and what was expected; `run_main` prints it as one line
on stderr, `error: <message>`, and exits with code 2. A traceback is printed
only when the command line has `--verbose`. Anything else that escapes is a
bug of ours: it is reported the same way (`internal error: ...`, exit 1), with
the traceback under `--verbose`.

    from max_deeplab_tf import cli

    def main(argv):
        if not path.exists():
            raise cli.UserError(f"--images: {pattern!r} matches no file")
        ...

    if __name__ == "__main__":
        cli.run_main(main)                 # argparse commands: main(argv)
        cli.run_absl_main(main)            # absl commands: app.run(main)

This module imports neither TensorFlow nor anything heavy, so that light
commands (the PQ command) stay light.
"""

import contextlib
import os
import re
import sys
import tempfile
import traceback
from typing import Callable, Optional, Sequence

EXIT_USAGE = 2
EXIT_INTERNAL = 1

# The flag that turns tracebacks on. Commands declare it in their own parser
# (argparse: `cli.add_verbose_flag(parser)`; absl: `cli.define_verbose_flag()`)
# so that it shows in --help; `wants_traceback` reads the command line itself
# so that an error raised while parsing flags is still reported correctly.
VERBOSE_FLAG = "--verbose"
VERBOSE_HELP = "Print the Python traceback of an error (default: one line)."


class UserError(ValueError):
    """A bad input: the message names the file, field or flag and what was
    expected. Reported as one line with exit code 2."""


def wants_traceback(argv: Optional[Sequence[str]] = None) -> bool:
    """True when the command line asks for tracebacks (`--verbose`)."""
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:
        if arg == "--":
            break
        if arg in (VERBOSE_FLAG, f"{VERBOSE_FLAG}=true", f"{VERBOSE_FLAG}=1",
                   f"{VERBOSE_FLAG}=True"):
            return True
    return False


def add_verbose_flag(parser) -> None:
    """Declares --verbose on an argparse parser."""
    parser.add_argument(VERBOSE_FLAG, action="store_true", help=VERBOSE_HELP)


def define_verbose_flag() -> None:
    """Declares --verbose as an absl flag (once per process)."""
    from absl import flags
    if "verbose" not in flags.FLAGS:
        flags.DEFINE_boolean("verbose", False, VERBOSE_HELP)


def one_line(message: str) -> str:
    """Folds a message onto one line (config errors list several problems;
    they stay readable as '; '-joined parts)."""
    parts = [part.strip() for part in str(message).splitlines()]
    folded = ""
    for part in filter(None, parts):
        if folded:
            folded += " " if folded.endswith(":") else "; "
        folded += part
    return folded


def is_user_error(error: BaseException) -> bool:
    """Whether an exception is a bad input (exit 2) rather than a bug."""
    if isinstance(error, UserError):
        return True
    # ConfigError lives in max_deeplab_tf.config, which needs protobuf; look
    # it up by name so that this module imports nothing heavy.
    return any(cls.__name__ == "ConfigError" for cls in type(error).__mro__)


def report(error: BaseException, argv: Optional[Sequence[str]] = None) -> int:
    """Prints `error` as one line (and its traceback under --verbose) and
    returns the exit code for it."""
    if wants_traceback(argv):
        traceback.print_exception(type(error), error, error.__traceback__,
                                  file=sys.stderr)
    user = is_user_error(error)
    prefix = "error" if user else "internal error"
    message = one_line(str(error)) or type(error).__name__
    if not user:
        message = f"{type(error).__name__}: {message}"
        if not wants_traceback(argv):
            message += f" (rerun with {VERBOSE_FLAG} for the traceback)"
    print(f"{prefix}: {message}", file=sys.stderr, flush=True)
    return EXIT_USAGE if user else EXIT_INTERNAL


def run_main(main: Callable[[Optional[Sequence[str]]], Optional[int]],
             argv: Optional[Sequence[str]] = None) -> None:
    """Runs an argparse-style `main(argv) -> exit code` and exits.

    argparse's own usage errors already exit 2 with one line.
    """
    try:
        code = main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    except SystemExit:
        raise
    except Exception as error:  # pylint: disable=broad-except
        code = report(error, argv)
    sys.exit(code or 0)


def run_absl_main(main: Callable[[Sequence[str]], Optional[int]]) -> None:
    """`absl.app.run(main)` with the project's error reporting.

    absl's `app.UsageError` (a missing required flag, say) is reported as a
    `UserError` would be.
    """
    from absl import app

    def wrapped(argv):
        try:
            return main(argv)
        except app.UsageError as error:
            sys.exit(report(UserError(str(error))))
        except SystemExit:
            raise
        except Exception as error:  # pylint: disable=broad-except
            sys.exit(report(error))

    define_verbose_flag()
    app.run(wrapped)


class Progress:
    """Progress of a long command on stderr: a tqdm bar in a terminal, a
    plain line every `every` items (and at the end) when stderr is a file or
    a pipe, so that logs stay readable.

        with cli.Progress(total=len(images), desc="predict") as progress:
            for image in images:
                ...
                progress.update()
    """

    def __init__(self, total: Optional[int], desc: str, unit: str = "image",
                 every: int = 100, enabled: bool = True, stream=None):
        self._stream = stream or sys.stderr
        self._total = total
        self._desc = desc
        self._unit = unit
        self._every = max(1, every)
        self._done = 0
        self._bar = None
        self._enabled = enabled
        self._start = None
        if enabled and _isatty(self._stream):
            import tqdm  # pylint: disable=import-outside-toplevel
            self._bar = tqdm.tqdm(total=total, desc=desc, unit=unit,
                                  file=self._stream, dynamic_ncols=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def update(self, count: int = 1) -> None:
        import time  # pylint: disable=import-outside-toplevel
        if self._start is None:
            self._start = time.time()
        before = self._done
        self._done += count
        if self._bar is not None:
            self._bar.update(count)
        elif self._enabled and (self._done // self._every
                                > before // self._every
                                or self._done == self._total):
            self._line(time.time() - self._start)

    def _line(self, elapsed: float) -> None:
        total = f"/{self._total}" if self._total is not None else ""
        print(f"{self._desc}: {self._done}{total} {self._unit}s, "
              f"{elapsed:.1f}s", file=self._stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def reject_arguments(argv: Sequence[str]) -> None:
    """Raises UserError when an absl command got positional arguments
    (`main(argv)` receives the program name first): every input of our
    commands is a --flag, so a stray word is a typo, e.g. a missing '='."""
    if len(argv) > 1:
        raise UserError(f"unexpected argument(s) {list(argv[1:])}; every "
                        "input is a --flag (e.g. --output_dir=DIR)")


# What TensorFlow's CUDA platform prints, at ERROR level (so past
# TF_CPP_MIN_LOG_LEVEL=2), when it probes for GPUs on a host with CUDA
# libraries but no usable GPU: expected on a CPU-only run.
_CUDA_PROBE_ERROR = re.compile(r"failed call to cuInit")


@contextlib.contextmanager
def without_cuda_probe_error(enabled: bool = True):
    """Runs the body (TensorFlow's import and device start) with file
    descriptor 2 captured, then writes back every captured line but the CUDA
    probe's expected error. TensorFlow's C++ logging writes to the
    descriptor directly, below Python's sys.stderr."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines(
                    keepends=True):
                if not _CUDA_PROBE_ERROR.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


# Packages that Keras 3 (which `import tensorflow` imports) and tf_keras
# (which orbit imports) import at their own import whenever they are
# installed, for integrations no command of ours uses: pandas data frames in
# `fit` and `predict`, scikit-learn estimator wrappers, OpenCV box drawing and
# matplotlib image galleries. tf-models-official installs all four, and they
# cost every command process about 145 MiB of resident memory (739 against
# 595 MiB after importing TensorFlow, orbit and the trainer; issue 14,
# benchmarks/README.md).
KERAS_OPTIONAL_PACKAGES = ("pandas", "sklearn", "cv2", "matplotlib")


@contextlib.contextmanager
def without_optional_keras_packages():
    """Within the scope, importing a package of `KERAS_OPTIONAL_PACKAGES`
    fails with ModuleNotFoundError, as if it were not installed; wrap the
    import of TensorFlow (and of orbit, which imports tf_keras) in it. Keras
    and tf_keras then leave those integrations off, as they do where the
    packages are absent.

    Only imports made inside the scope are refused: a package imported
    before it stays as it is, and after it every package imports normally
    (official.vision's AutoAugment module imports matplotlib later, when a
    config asks for AutoAugment).
    """
    refused = [name for name in KERAS_OPTIONAL_PACKAGES
               if name not in sys.modules]
    for name in refused:
        # Python's documented way to make an import fail: a None entry.
        sys.modules[name] = None
    try:
        yield
    finally:
        for name in refused:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]


def import_tensorflow():
    """Imports TensorFlow, the way commands do: without Keras's optional
    packages (`without_optional_keras_packages`); returns the module. Where
    TensorFlow is already imported this only returns it. Measured on
    TensorFlow alone: 592 against 752 MiB resident after the import; on
    TensorFlow and orbit: 2.8-3.3 against 3.7-4.1 s (benchmarks/README.md)."""
    with without_optional_keras_packages():
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
    return tf


def import_tensorflow_quietly():
    """Imports TensorFlow (`import_tensorflow`) and lists its devices (where
    the CUDA probe runs) without the probe's expected error line; returns
    the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with without_cuda_probe_error():
        tf = import_tensorflow()
        tf.config.list_physical_devices()
    return tf

"""Shorter Python stack traces on the graph ops a step creates.

TensorFlow records the Python stack of every op it adds to a function graph,
so that a runtime error can name the line that defined the failing op. The
first time the function runs, graph partitioning turns every recorded stack
into strings (the whole stack and, again, its non-TensorFlow frames) and
keeps them as long as the function lives. The MaX-DeepLab-S train step has
about 21,400 ops with a median of 40 recorded frames each (up to 97), nearly
all of them in Keras, TensorFlow and the Python standard library: 270 MiB of
frozen frames at the step's peak memory (memray's native high-water mark;
75 MiB with this scope), and the process's peak RSS 200-214 MiB higher
(3 alternating pairs, benchmarks/README.md, issue 14).

`library_frames_dropped()` is a scope within which the stacks recorded for new
ops leave out the frames of those libraries (TensorFlow, Keras, orbit, absl,
the standard library and the other packages in `LIBRARY_PACKAGES`). What
stays is the frames of this package and of the user's own code: the lines an
error message needs ("defined at ... max_deeplab_tf/layers/...").

TensorFlow has no public switch for this; the scope uses its stack-trace
filter (`tensorflow.python.util.tf_stack.StackTraceFilter`, the mechanism
AutoGraph uses to hide its own frames). Where that is missing, the scope
changes nothing.
"""

import contextlib
import sys
from typing import FrozenSet, Iterator

from absl import logging

try:
    from tensorflow.python.framework import ops as _tf_ops
    from tensorflow.python.util import tf_stack as _tf_stack
    _FILTER_BASE = getattr(_tf_stack, "StackTraceFilter", None)
    # TensorFlow drops the innermost frames of each recorded stack (its own
    # op-creation calls: tf_stack.extract_stack, ops._create_c_op, ...)
    # after filtering, by count; these files stay so that what it drops is
    # still its own frames and not the user's.
    _KEPT_FILES = frozenset({_tf_stack.__file__, _tf_ops.__file__})
except ImportError:  # pragma: no cover - depends on the TensorFlow build
    _FILTER_BASE = None
    _KEPT_FILES = frozenset()

# Top-level packages whose frames are dropped, besides the standard library.
LIBRARY_PACKAGES = frozenset({
    "tensorflow", "keras", "tf_keras", "orbit", "official", "absl", "numpy",
    "tree", "optree", "google",
})


def library_files() -> FrozenSet[str]:
    """The source files of the loaded modules of `LIBRARY_PACKAGES` and of
    the standard library, as Python names them in stack frames, but for the
    two TensorFlow files of op creation (see `_KEPT_FILES`)."""
    stdlib = sys.stdlib_module_names
    files = set()
    for name, module in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top not in LIBRARY_PACKAGES and top not in stdlib:
            continue
        path = getattr(module, "__file__", None)
        if path:
            files.add(path)
        # Modules frozen into the interpreter (runpy, os, ...) name their
        # frames like this.
        files.add(f"<frozen {name}>")
    return frozenset(files - _KEPT_FILES)


def available() -> bool:
    """Whether this TensorFlow has the stack-trace filter the scope uses."""
    return _FILTER_BASE is not None


if _FILTER_BASE is not None:

    class _LibraryFrameFilter(_FILTER_BASE):
        """Drops the frames of `library_files()` (and whatever the enclosing
        filter drops)."""

        def __init__(self, files: FrozenSet[str]):
            super().__init__()
            self._files = files

        def get_filtered_filenames(self):
            # `parent` is the filter that was in effect on entry.
            return self._files | self.parent.get_filtered_filenames()


@contextlib.contextmanager
def library_frames_dropped() -> Iterator[None]:
    """Within the scope (on this thread), ops created in a graph record only
    the stack frames outside `LIBRARY_PACKAGES` and the standard library.

    Enter it inside the function being traced (each replica of a distributed
    step traces on its own thread).
    """
    if _FILTER_BASE is None:
        logging.log_first_n(
            logging.WARNING, "This TensorFlow has no tf_stack."
            "StackTraceFilter: ops keep their whole stack traces.", 1)
        yield
        return
    with _LibraryFrameFilter(library_files()):
        yield

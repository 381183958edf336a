"""Versioned export folders, laid out as TF Serving reads them.

An export root holds one SavedModel per exported global step:

    EXPORT_DIR/
      1500/                      saved_model.pb, variables/, assets.extra/
      3000/
      .tmp-4500-<32 hex digits>/ a version being written

A version is written under a temporary name inside the root (never a number,
so TF Serving and `resolve_saved_model` skip it) and renamed into place, so a
reader never sees a half-written version. Nothing here removes a file it did
not create.

    check_export_root(path)      refuses a folder that is not an export root
    resolve_saved_model(path)    root -> newest version; version -> itself
"""

import re
import uuid
from typing import List

import tensorflow as tf

from max_deeplab_tf import cli

SAVED_MODEL_FILE = "saved_model.pb"
# What tf.saved_model.save writes into a SavedModel folder (plus our
# assets.extra): a numeric folder holding only these is a version of ours
# whose copy onto an object store was interrupted before saved_model.pb.
_SAVED_MODEL_PARTS = frozenset({
    SAVED_MODEL_FILE, "saved_model.pbtxt", "fingerprint.pb", "variables",
    "assets", "assets.extra"})
_TEMP_PREFIX = ".tmp-"
_TEMP_NAME = re.compile(r"^\.tmp-\d+-[0-9a-f]{32}$")
_VERSION_NAME = re.compile(r"^[0-9]+$")


def temporary_name(global_step: int) -> str:
    """A fresh temporary folder name for the version of `global_step`."""
    return f"{_TEMP_PREFIX}{int(global_step)}-{uuid.uuid4().hex}"


def is_temporary_name(name: str) -> bool:
    return bool(_TEMP_NAME.match(name))


def is_version_name(name: str) -> bool:
    return bool(_VERSION_NAME.match(name))


def _entries(directory: str) -> List[str]:
    # Object stores list folders with a trailing slash.
    return sorted({name.rstrip("/") for name in tf.io.gfile.listdir(directory)})


def _join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}"


def is_saved_model(path: str) -> bool:
    """Whether `path` is a SavedModel folder (holds saved_model.pb)."""
    return tf.io.gfile.exists(_join(path, SAVED_MODEL_FILE))


def _is_our_version(path: str) -> bool:
    if is_saved_model(path):
        return True
    return (tf.io.gfile.isdir(path)
            and set(_entries(path)) <= _SAVED_MODEL_PARTS)


def list_versions(export_dir: str) -> List[int]:
    """The complete versions (numeric folders with a saved_model.pb) of an
    export root, ascending."""
    if not tf.io.gfile.isdir(export_dir):
        return []
    return sorted(int(name) for name in _entries(export_dir)
                  if is_version_name(name)
                  and is_saved_model(_join(export_dir, name)))


def check_export_root(export_dir: str) -> None:
    """Accepts a missing or empty folder, or an export root of ours.

    An export root of ours holds only numeric version folders (SavedModels)
    and our temporary names.

    Raises:
      cli.UserError: naming the path and what it holds instead.
    """
    if not tf.io.gfile.exists(export_dir):
        return
    if not tf.io.gfile.isdir(export_dir):
        raise cli.UserError(
            f"export_dir {export_dir}: is a file; expected a folder for "
            "versioned SavedModels (EXPORT_DIR/<global_step>/)")
    foreign = [name for name in _entries(export_dir)
               if not is_temporary_name(name)
               and not (is_version_name(name)
                        and _is_our_version(_join(export_dir, name)))]
    if not foreign:
        return
    if SAVED_MODEL_FILE in foreign:
        what = ("holds an unversioned SavedModel (saved_model.pb at its top, "
                "the layout of older exports)")
    else:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        what = f"holds {shown}, which is not an export of ours"
    raise cli.UserError(
        f"export_dir {export_dir}: {what}; an export root holds only numeric "
        "version folders with a saved_model.pb. Choose a new or empty folder "
        "(nothing was written or removed)")


def _looks_like_model_dir(path: str) -> bool:
    return (tf.io.gfile.exists(_join(path, "checkpoint"))
            or bool(tf.io.gfile.glob(_join(path, "ckpt-*.index"))))


def resolve_saved_model(path: str) -> str:
    """The SavedModel folder that `path` names.

    Args:
      path: a SavedModel folder (a version folder, or an unversioned export),
        or an export root (its newest version is taken).

    Returns:
      The SavedModel folder (holding saved_model.pb).

    Raises:
      cli.UserError: one line naming the path when it is neither; pointed at
        a trainer's model_dir, the message names its export folder.
    """
    path = path.rstrip("/") or "/"
    if is_saved_model(path):
        return path
    if not tf.io.gfile.exists(path):
        raise cli.UserError(f"{path}: no such SavedModel or export folder")
    if not tf.io.gfile.isdir(path):
        raise cli.UserError(
            f"{path}: is a file; expected a SavedModel folder or an export "
            "folder of numeric versions")
    found = list_versions(path)
    if found:
        return _join(path, str(found[-1]))
    if _looks_like_model_dir(path):
        export = _join(path, "export")
        if tf.io.gfile.exists(export):
            raise cli.UserError(
                f"{path} is not a SavedModel; the export is in {export}")
        raise cli.UserError(
            f"{path} is not a SavedModel but a model_dir without an export; "
            "write one with `python -m trainer.main --mode=export` or use "
            "Predictor.from_checkpoint")
    raise cli.UserError(
        f"{path}: not a SavedModel (no {SAVED_MODEL_FILE}) nor an export "
        "folder (no numeric version folder holding one)")


def version_dir(export_dir: str, global_step: int) -> str:
    """EXPORT_DIR/<global_step>."""
    if int(global_step) < 0:
        raise ValueError(f"global_step must be >= 0, got {global_step}")
    return _join(export_dir, str(int(global_step)))


def stale_temporaries(export_dir: str) -> List[str]:
    """Temporary folders left in an export root by an interrupted export."""
    if not tf.io.gfile.isdir(export_dir):
        return []
    return [name for name in _entries(export_dir) if is_temporary_name(name)]

"""Atomic file writes through tf.io.gfile (local, gs://, ram://)."""

import json
import uuid

import tensorflow as tf


def write_atomically(path: str, data, binary: bool = False,
                     overwrite: bool = True) -> bool:
    """Writes `data` to a temporary file beside `path`, then renames it.

    Readers see either the old file or the complete new one.

    Args:
      overwrite: False: an existing `path` is never replaced (nor one that
        appears while writing); the temporary file is then removed.

    Returns:
      Whether `path` was written.
    """
    if not overwrite and tf.io.gfile.exists(path):
        return False
    directory = path.rsplit("/", 1)[0] if "/" in path else "."
    tf.io.gfile.makedirs(directory)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(temporary, "wb" if binary else "w") as f:
        f.write(data)
    try:
        tf.io.gfile.rename(temporary, path, overwrite=overwrite)
    except tf.errors.AlreadyExistsError:
        tf.io.gfile.remove(temporary)  # ours, written just above
        return False
    return True


def write_json(path: str, value) -> None:
    """Writes `value` as indented JSON, atomically."""
    write_atomically(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def read_json(path: str):
    with tf.io.gfile.GFile(path, "r") as f:
        return json.loads(f.read())

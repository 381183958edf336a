"""Atomic file writes through tf.io.gfile (local, gs://, ram://)."""

import json
import uuid

import tensorflow as tf


def write_atomically(path: str, data, binary: bool = False) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it.

    Readers see either the old file or the complete new one.
    """
    directory = path.rsplit("/", 1)[0] if "/" in path else "."
    tf.io.gfile.makedirs(directory)
    temporary = f"{path}.tmp-{uuid.uuid4().hex}"
    with tf.io.gfile.GFile(temporary, "wb" if binary else "w") as f:
        f.write(data)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def write_json(path: str, value) -> None:
    """Writes `value` as indented JSON, atomically."""
    write_atomically(path, json.dumps(value, indent=1, sort_keys=True) + "\n")


def read_json(path: str):
    with tf.io.gfile.GFile(path, "r") as f:
        return json.loads(f.read())

"""Atomic JSON/bytes writes through tf.io.gfile."""

import uuid

import tensorflow as tf

from max_deeplab_tf.training import files


def test_json_round_trip_and_replace_on_ram():
    path = f"ram://files-test-{uuid.uuid4().hex}/eval/metrics.json"
    files.write_json(path, {"b": 1, "a": [1.5, None]})
    assert files.read_json(path) == {"a": [1.5, None], "b": 1}
    files.write_json(path, {"c": 2})
    assert files.read_json(path) == {"c": 2}
    # No temporary file is left beside the target.
    assert tf.io.gfile.listdir(path.rsplit("/", 1)[0]) == ["metrics.json"]


def test_binary_write(tmp_path):
    path = str(tmp_path / "deep" / "x.bin")
    files.write_atomically(path, b"\x00\xff", binary=True)
    with open(path, "rb") as f:
        assert f.read() == b"\x00\xff"
    assert sorted(p.name for p in (tmp_path / "deep").iterdir()) == ["x.bin"]

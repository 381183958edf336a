"""Tests for max_deeplab_tf.data.shards, and the input pipeline's use of it:
which files a pattern reads, corrupt and empty shards."""

import logging
import os
import threading
import time

import numpy as np
import pytest
import tensorflow as tf

from max_deeplab_tf import cli
from max_deeplab_tf import common
from max_deeplab_tf.data import build_coco_panoptic
from max_deeplab_tf.data import input_pipeline
from max_deeplab_tf.data import shards
from max_deeplab_tf.data import synthetic
from max_deeplab_tf.protos import dataset_pb2


def _write(path, records):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in records:
            writer.write(record)
    return str(path)


def _set(folder, prefix="train", total=3, records=2, suffix=".tfrecord"):
    os.makedirs(folder, exist_ok=True)
    return [_write(os.path.join(folder, f"{prefix}-{i:05d}-of-{total:05d}"
                                        f"{suffix}"),
                   [b"r%d-%d" % (i, k) for k in range(records)])
            for i in range(total)]


def _user_error(patterns):
    with pytest.raises(cli.UserError) as info:
        shards.resolve(patterns)
    return str(info.value)


def test_complete_set_is_read_with_sizes(tmp_path):
    paths = _set(tmp_path)
    files = shards.resolve([str(tmp_path / "train-*")])
    assert [f.path for f in files] == sorted(paths)
    assert [f.size for f in files] == [os.path.getsize(p) for p in paths]


def test_missing_shard_is_named(tmp_path):
    paths = _set(tmp_path, total=4)
    os.remove(paths[2])
    message = _user_error([str(tmp_path / "train-*")])
    assert "train-*" in message
    assert "1 of its 4 shards are missing" in message
    assert "train-00002-of-00004.tfrecord" in message


def test_part_of_a_set_on_purpose(tmp_path):
    # A pattern (or a literal path) that picks shards reads just those.
    paths = _set(tmp_path)
    assert [f.path for f in shards.resolve(
        [str(tmp_path / "train-00001-*")])] == [paths[1]]
    assert [f.path for f in shards.resolve([paths[2]])] == [paths[2]]


def test_two_sets_in_one_pattern(tmp_path):
    _set(tmp_path, total=2)
    _set(tmp_path, total=3)
    message = _user_error([str(tmp_path / "train-*")])
    assert "2 sets" in message
    assert "train-*-of-00002.tfrecord (2 file(s))" in message
    assert "train-*-of-00003.tfrecord (3 file(s))" in message


def test_other_files_in_the_pattern(tmp_path):
    _set(tmp_path)
    (tmp_path / "dataset_descriptor.json").write_text("{}")
    message = _user_error([str(tmp_path / "*")])
    assert "dataset_descriptor.json" in message


def test_no_match_and_missing_folder(tmp_path):
    message = _user_error([str(tmp_path / "val-*")])
    assert f"file_pattern '{tmp_path}/val-*': matches no file" in message
    assert "does not exist" not in message
    message = _user_error([str(tmp_path / "nope" / "val-*")])
    assert "folder" in message and "does not exist" in message
    os.makedirs(tmp_path / "val-dir")
    assert "matches no file" in _user_error([str(tmp_path / "val-*")])
    assert "no tfrecord file pattern" in _user_error([])


def test_partial_and_hidden_files_are_skipped(tmp_path, caplog):
    paths = _set(tmp_path, total=2)
    # What converters before the hidden partial folder left beside shards.
    _write(str(tmp_path / "train-00001-of-00002.tfrecord.tmp-99-0123abcd"),
           [b"partial"])
    _write(str(tmp_path / ".train-00001-of-00002.tfrecord"), [b"hidden"])
    with caplog.at_level(logging.WARNING):
        files = shards.resolve([str(tmp_path / "train-*"),
                                str(tmp_path / "*train-*")])
    assert [f.path for f in files] == sorted(paths)
    assert "partial" in caplog.text


def test_count_records_agrees_with_tfrecord_dataset(tmp_path):
    rng = np.random.default_rng(0)
    paths = [_write(tmp_path / f"x-{i:05d}-of-00003",
                    [rng.bytes(int(n)) for n in rng.integers(0, 300, count)])
             for i, count in enumerate((5, 0, 7))]
    files = shards.resolve([str(tmp_path / "x-*")])
    truth = sum(1 for p in paths for _ in tf.data.TFRecordDataset(p))
    assert truth == 12
    assert shards.count_records(files, 100) == 12
    assert shards.count_records(files, 6) == 6
    # A frame that runs past the end: the file is named.
    data = open(paths[2], "rb").read()
    with open(paths[2], "wb") as f:
        f.write(data[:-5])
    files = shards.resolve([str(tmp_path / "x-*")])
    with pytest.raises(cli.UserError, match=paths[2]):
        shards.count_records(files, 100)


# --- The input pipeline on corrupt and empty data -------------------------


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards_data")
    synthetic.generate(str(root / "coco"), 6, 2, 24, seed=4)
    build_coco_panoptic.convert(str(root / "coco"), "train",
                                str(root / "shards"), num_shards=3,
                                num_workers=1, progress=False)
    return str(root / "shards")


def _options(pattern, batch=2):
    return dataset_pb2.DatasetOptions(
        dataset="synthetic_panoptic", file_pattern=[pattern],
        batch_size=batch, crop_size=[25, 25])


def _copy(src, dst):
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if name.endswith(".tfrecord"):
            with open(os.path.join(src, name), "rb") as f:
                data = f.read()
            with open(os.path.join(dst, name), "wb") as f:
                f.write(data)
    return str(dst)


@pytest.mark.parametrize("damage", ["truncate", "flip_byte"])
@pytest.mark.parametrize("is_training", [True, False])
def test_corrupt_shard_is_named(converted, tmp_path, damage, is_training):
    folder = _copy(converted, tmp_path / "copy")
    victim = os.path.join(folder, "train-00001-of-00003.tfrecord")
    data = bytearray(open(victim, "rb").read())
    if damage == "truncate":
        data = data[:len(data) * 2 // 3]
    else:
        data[len(data) // 2] ^= 0xFF  # Fails the record's CRC.
    with open(victim, "wb") as f:
        f.write(bytes(data))
    dataset = input_pipeline.build_dataset(
        _options(os.path.join(folder, "train-*")), is_training,
        drop_remainder=False)
    start = time.time()
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        for _ in dataset.take(50):
            pass
    assert time.time() - start < 60
    message = str(info.value)
    assert victim in message
    assert "truncated or corrupt" in message


def test_intact_shards_read_every_record_once(converted):
    dataset = input_pipeline.build_dataset(
        _options(os.path.join(converted, "train-*"), batch=1), False,
        drop_remainder=False)
    names = [b[common.IMAGE_NAME][0].numpy() for b in dataset]
    assert len(names) == 6 and len(set(names)) == 6


@pytest.mark.parametrize("is_training", [True, False])
def test_empty_dataset_fails_at_once(tmp_path, is_training):
    # What the converter writes for a JSON without images (--allow_empty).
    root = str(tmp_path / "coco")
    synthetic.generate(root, 0, 0, 24)
    out = str(tmp_path / "shards")
    build_coco_panoptic.convert(root, "train", out, num_shards=2,
                                num_workers=1, allow_empty=True,
                                progress=False)
    assert sorted(os.listdir(out))[1:] == [
        "train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]
    pattern = os.path.join(out, "train-*")
    start = time.time()
    with pytest.raises(cli.UserError) as info:
        input_pipeline.build_dataset(_options(pattern), is_training)
    assert time.time() - start < 60
    assert pattern in str(info.value) and "no records" in str(info.value)
    with pytest.raises(cli.UserError, match="no records"):
        input_pipeline.check_not_empty(_options(pattern), is_training)


def test_eval_batch_larger_than_the_dataset(converted):
    pattern = os.path.join(converted, "train-*")
    with pytest.raises(cli.UserError, match="fewer than the batch size 7"):
        input_pipeline.build_dataset(_options(pattern, batch=7), False)
    # Without dropping the remainder, or in training (records repeat),
    # it is fine.
    input_pipeline.check_not_empty(_options(pattern, batch=7), False,
                                   drop_remainder=False)
    batch = next(iter(input_pipeline.build_dataset(_options(pattern, batch=7),
                                                   True)))
    assert batch[common.IMAGE].shape[0] == 7


def _first_within(dataset, seconds):
    """The first element, or a failure (not a hang) after `seconds`."""
    result = []
    thread = threading.Thread(
        target=lambda: result.append(next(iter(dataset))), daemon=True)
    thread.start()
    thread.join(seconds)
    assert result, f"no element within {seconds} s"
    return result[0]


def test_pipelines_never_get_only_empty_files(converted, tmp_path):
    # Shards 0 and 2 hold images, shard 1 none: splitting the files between
    # two pipelines would give one of them nothing (training would wait
    # forever); the records are split instead.
    folder = str(tmp_path / "mixed")
    os.makedirs(folder)
    _write(os.path.join(folder, "t-00000-of-00002.tfrecord"),
           [r.numpy() for r in tf.data.TFRecordDataset(
               os.path.join(converted, "train-00000-of-00003.tfrecord"))])
    _write(os.path.join(folder, "t-00001-of-00002.tfrecord"), [])
    files = shards.resolve([os.path.join(folder, "t-*")])
    seen = []
    for pipeline in range(2):
        context = tf.distribute.InputContext(
            num_input_pipelines=2, input_pipeline_id=pipeline,
            num_replicas_in_sync=2)
        dataset = input_pipeline.build_dataset(
            _options(os.path.join(folder, "t-*")), True, context)
        batch = _first_within(dataset, 60)
        seen.append(batch[common.IMAGE].shape[0])
    assert seen == [1, 1]
    _, sharded = shards.read_records(files, True, 1, 2, 0)
    assert not sharded


def test_checked_reading_equals_tfrecord_dataset_and_names_damage(tmp_path):
    # More records than one counting chunk, of random sizes (some empty).
    rng = np.random.default_rng(1)
    records = [rng.bytes(int(n)) for n in rng.integers(0, 200, 40)]
    path = _write(tmp_path / "r-00000-of-00001", records)
    files = shards.resolve([path])
    dataset, _ = shards.read_records(files, False)
    assert [r.numpy() for r in dataset] == [
        r.numpy() for r in tf.data.TFRecordDataset(path)] == records
    data = open(path, "rb").read()
    # Cut inside a record's header, its data and its last CRC byte.
    ends = np.cumsum([len(r) + 16 for r in records])
    for cut in (ends[20] + 5, ends[30] + 14, ends[-1] - 1):
        damaged = str(tmp_path / f"d{cut}-00000-of-00001")
        with open(damaged, "wb") as f:
            f.write(data[:cut])
        dataset, _ = shards.read_records(shards.resolve([damaged]), False)
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            list(dataset)
        assert damaged in str(info.value)
        assert f"[of its] [{cut}]" in str(info.value)
        one_line = shards.corrupt_shard_error(info.value)
        assert str(one_line).startswith(f"{damaged}: truncated or corrupt")
        assert f"of its {cut})" in str(one_line)
    assert shards.corrupt_shard_error(ValueError("other")) is None

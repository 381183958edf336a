"""Which tfrecord files a `file_pattern` names, and reading them safely.

deeplab2's converters (and ours) write a split as one *set* of shards,
`<prefix>-NNNNN-of-NNNNN<suffix>` (e.g. `train-00003-of-00008.tfrecord`).
`resolve` turns the patterns of DatasetOptions.file_pattern into files and
checks what a glob alone cannot:

  * a pattern that matches nothing, or only folders, is an error naming it;
  * the shard-named files a pattern matches must be exactly one set, all
    present: a missing shard (one the pattern would match), or shards of
    two shard counts (two conversions into one folder), is an error naming
    the pattern and the missing or extra files;
  * hidden files (`.name`) and partial files of an interrupted conversion
    (`...tmp-...`) are skipped with a warning: they are never complete
    shards.

A pattern matching files that are not shard-named (`my_data.tfrecord`)
reads them as they are; one that picks part of a set on purpose
(`val-00000-*`, or a literal shard path) reads that part.

`read_records` reads the files inside tf.data and checks, per file, that its
records account for every byte of it: a truncated or corrupt shard stops
the input with an error that names the file (tf.data's own `DataLossError:
truncated record at N` does not), at a few percent of the reading's CPU
time; `corrupt_shard_error` turns that error into the project's one line.
`check_not_empty` makes an empty dataset an error at start-up instead of a
training loop that waits forever for its first batch.
"""

import concurrent.futures
import dataclasses
import fnmatch
import posixpath
import re
import struct
from typing import List, Sequence, Tuple

from absl import logging
import tensorflow as tf

from max_deeplab_tf import cli

# deeplab2 writes '%s-%05d-of-%05d.tfrecord'; wider numbers are accepted.
_SHARD_NAME = re.compile(
    r"^(?P<prefix>.+)-(?P<index>\d{5,})-of-(?P<total>\d{5,})(?P<suffix>.*)$")
# Partial files of our converters (`<final name>.tmp-<pid>-<hex>`).
_PARTIAL_MARKER = ".tmp-"
# A record is framed as uint64 length, uint32 CRC of the length, the data,
# uint32 CRC of the data.
_FRAME_BYTES = 16
_STAT_THREADS = 16
# Records counted at once by the integrity check (a few MB of COCO JPEGs).
_CHECK_CHUNK = 16


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """One file to read and its size in bytes (at start-up)."""

    path: str
    size: int


def _describe(patterns: Sequence[str], field: str) -> str:
    return f"{field} " + (repr(patterns[0]) if len(patterns) == 1 else
                          repr(list(patterns)))


def _stat_all(paths: Sequence[str]) -> list:
    """gfile.stat of each path (in threads: one request each on gs://)."""
    if len(paths) <= 4:
        return [tf.io.gfile.stat(p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(_STAT_THREADS) as pool:
        return list(pool.map(tf.io.gfile.stat, paths))


def _is_partial_or_hidden(name: str) -> bool:
    return name.startswith(".") or _PARTIAL_MARKER in name


def _check_one_set(pattern: str, paths: Sequence[str],
                   field: str = "file_pattern") -> None:
    """Raises UserError unless the shard-named paths are one complete set
    and no other (non-shard) file is mixed in."""
    sets = {}
    others = []
    for path in paths:
        folder, name = posixpath.split(path)
        match = _SHARD_NAME.match(name)
        if not match:
            others.append(name)
            continue
        key = (folder, match["prefix"], match["total"], match["suffix"])
        sets.setdefault(key, set()).add(int(match["index"]))
    if not sets:
        return  # User-named files (no shard structure to check).
    if len(sets) > 1:
        names = sorted(f"{prefix}-*-of-{total}{suffix} ({len(found)} "
                       f"file(s))" for (_, prefix, total, suffix), found
                       in sets.items())
        raise cli.UserError(
            f"{field} {pattern!r}: matches shards of {len(sets)} sets: "
            f"{', '.join(names)}; expected the shards of one conversion "
            "(remove the other set, or give one pattern per set)")
    if others:
        raise cli.UserError(
            f"{field} {pattern!r}: matches files that are not shards of "
            f"its set: {sorted(others)[:5]}; expected only "
            "'<prefix>-NNNNN-of-NNNNN' shards (narrow the pattern, e.g. "
            "'.../train-*')")
    (folder, prefix, total_text, suffix), found = next(iter(sets.items()))
    total = int(total_text)

    def name(index):  # Numbered as wide as the total, as deeplab2 does.
        return f"{prefix}-{index:0{len(total_text)}d}-of-{total_text}{suffix}"

    # Only shards the pattern would match count as missing: 'val-00000-*'
    # or a literal path picks part of a set on purpose.
    missing = sorted(i for i in set(range(total)) - found
                     if fnmatch.fnmatchcase(posixpath.join(folder, name(i)),
                                            pattern))
    beyond = sorted(i for i in found if i >= total)
    if missing or beyond:
        names = [name(i) for i in (missing or beyond)[:5]]
        problem = (f"{len(missing)} of its {total} shards are missing"
                   if missing else f"shard numbers beyond {total - 1}")
        raise cli.UserError(
            f"{field} {pattern!r}: {problem} (e.g. {', '.join(names)}); "
            "expected every shard of the set: finish or redo the conversion")


def resolve(file_patterns: Sequence[str],
            field: str = "file_pattern") -> List[ShardFile]:
    """The files of DatasetOptions.file_pattern, sorted, with their sizes.

    Args:
      file_patterns: Glob patterns (tf.io.gfile.glob, so gs:// works); a
        single string is one pattern.
      field: How messages name the patterns' config field, e.g.
        'train_dataset_options.file_pattern'.

    Returns:
      The matched files in path order (no duplicates).

    Raises:
      cli.UserError: naming the pattern, when there is none, one matches no
        file, or its shards are not one complete set (see module doc).
    """
    if isinstance(file_patterns, str):
        file_patterns = [file_patterns]
    if not file_patterns:
        raise cli.UserError(f"{field}: no tfrecord file pattern given; "
                            "expected e.g. '/data/coco/tfrecord/train-*'")
    files = {}
    for pattern in file_patterns:
        try:
            matches = tf.io.gfile.glob(pattern)
        except tf.errors.OpError as e:
            raise cli.UserError(f"{field} {pattern!r}: cannot be listed: "
                                f"{cli.one_line(e.message)}") from e
        skipped = sorted(p for p in matches
                         if _is_partial_or_hidden(posixpath.basename(p)))
        if skipped:
            logging.warning(
                "file_pattern %r: skipping %d hidden or partial file(s) of an "
                "interrupted conversion, e.g. %s", pattern, len(skipped),
                skipped[0])
        matches = sorted(set(matches) - set(skipped))
        stats = _stat_all(matches)
        found = [ShardFile(p, int(s.length)) for p, s in zip(matches, stats)
                 if not s.is_directory]
        if not found:
            folder = posixpath.dirname(pattern) or "."
            where = ("" if tf.io.gfile.isdir(folder) else
                     f" (folder {folder} does not exist)")
            raise cli.UserError(
                f"{field} {pattern!r}: matches no file{where}; expected "
                "the tfrecord shards of a split, e.g. "
                "'/data/coco/tfrecord/train-*'")
        _check_one_set(pattern, [f.path for f in found], field)
        files.update((f.path, f) for f in found)
    return [files[p] for p in sorted(files)]


def count_records(files: Sequence[ShardFile], limit: int) -> int:
    """Records in `files`, counted up to `limit` from the record frames
    alone (a few bytes read per record, the data skipped).

    Raises:
      cli.UserError: naming the file, when a frame runs past its end (a
        truncated or corrupt shard).
    """
    count = 0
    for shard in files:
        offset = 0
        if count >= limit:
            break
        with tf.io.gfile.GFile(shard.path, "rb") as f:
            while offset < shard.size and count < limit:
                f.seek(offset)
                header = f.read(12)
                if len(header) < 12:
                    raise _corrupt(shard, offset)
                (length,) = struct.unpack("<Q", header[:8])
                offset += length + _FRAME_BYTES
                if offset > shard.size:
                    raise _corrupt(shard, offset - length - _FRAME_BYTES)
                count += 1
    return count


def _corrupt(shard: ShardFile, offset: int) -> cli.UserError:
    return cli.UserError(
        f"{shard.path}: truncated or corrupt tfrecord file (the record at "
        f"byte {offset} runs past its end at {shard.size} bytes); convert "
        "the split again")


def check_not_empty(files: Sequence[ShardFile], patterns: Sequence[str],
                    min_records: int = 1,
                    field: str = "file_pattern") -> None:
    """Raises when the files hold fewer than `min_records` records.

    Args:
      files: From `resolve`.
      patterns: The patterns they came from, for the message.
      min_records: 1, or the batch size when partial batches are dropped.
      field: How messages name the patterns' config field.

    Raises:
      cli.UserError: naming the patterns.
    """
    where = _describe(list(patterns), field)
    if not sum(f.size for f in files):
        raise cli.UserError(
            f"{where}: its {len(files)} file(s) hold no records (an empty "
            "dataset; converted from a JSON without images?); expected at "
            "least one image")
    if min_records > 1:
        found = count_records(files, min_records)
        if found < min_records:
            raise cli.UserError(
                f"{where}: holds {found} record(s), fewer than the batch size "
                f"{min_records}, and partial batches are dropped: no batch "
                "would be made; expected a smaller batch_size or more images")


def _checked_records(path: tf.Tensor, size: tf.Tensor) -> tf.data.Dataset:
    """The records of one file; fails naming it when they do not account
    for all of its `size` bytes (truncated, corrupt or unreadable)."""
    # tf.data stops a file at its first bad record with a DataLossError
    # that does not name it; ignore_errors ends the file there instead, and
    # a running byte count tells, at an end marker, whether it was read to
    # its end. The count runs on small batches of records, so its cost per
    # record is a fraction of a function call.
    chunks = tf.data.TFRecordDataset(path).ignore_errors().batch(
        _CHECK_CHUNK).map(lambda records: (records, False))
    chunks = chunks.concatenate(tf.data.Dataset.from_tensors(
        (tf.zeros([0], tf.string), True)))

    def count(total, element):
        records, is_end = element
        total += tf.reduce_sum(tf.cast(
            tf.strings.length(records, unit="BYTE"), tf.int64) +
                               _FRAME_BYTES)
        return total, (records, is_end, total)

    def keep(records, is_end, total):
        del records
        complete = tf.debugging.Assert(
            tf.logical_or(tf.logical_not(is_end), tf.equal(total, size)),
            ["tfrecord file", path, "is truncated or corrupt: its complete "
             "records end at byte", total, "of its", size,
             "bytes; convert the split again"])
        with tf.control_dependencies([complete]):
            return tf.logical_not(is_end)

    checked = chunks.scan(tf.constant(0, tf.int64), count).filter(keep)
    return checked.map(lambda records, is_end, total: records).unbatch()


def read_records(files: Sequence[ShardFile], is_training: bool,
                 cycle_length: int = 1,
                 num_pipelines: int = 1, pipeline_id: int = 0
                 ) -> Tuple[tf.data.Dataset, bool]:
    """Serialized records of the files, each file checked whole.

    Args:
      files: From `resolve`.
      is_training: Files shuffled, repeated forever, cycle_length files
        interleaved (non-deterministic order); otherwise one pass in order.
      cycle_length: Files read at once in training.
      num_pipelines: Input pipelines; this one reads its share of the files
        when every share holds data, else all files (the caller then
        shards the records).
      pipeline_id: This pipeline's index.

    Returns:
      (dataset of scalar strings, whether the files were sharded).
    """
    paths = [f.path for f in files]
    sizes = [f.size for f in files]
    shares = [sum(sizes[i::num_pipelines]) for i in range(num_pipelines)]
    # Dataset.shard gives pipeline i the files i, i + n, ...; a share of
    # empty files only would repeat forever without a record.
    shard_files = num_pipelines > 1 and all(shares)
    dataset = tf.data.Dataset.from_tensor_slices(
        (tf.constant(paths, tf.string), tf.constant(sizes, tf.int64)))
    if shard_files:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if is_training:
        count = len(paths[pipeline_id::num_pipelines]) if shard_files else len(
            paths)
        dataset = dataset.shuffle(count, reshuffle_each_iteration=True)
        dataset = dataset.repeat()
        dataset = dataset.interleave(
            _checked_records, cycle_length=max(1, cycle_length),
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    else:
        dataset = dataset.interleave(_checked_records, cycle_length=1)
    return dataset, shard_files


_CORRUPT_MESSAGE = re.compile(
    r"\[tfrecord file\] \[(?P<path>.*?)\] \[is truncated or corrupt: its "
    r"complete records end at byte\] \[(?P<end>\d+)\] \[of its\] "
    r"\[(?P<size>\d+)\]")


def corrupt_shard_error(error: BaseException):
    """The one-line cli.UserError for a corrupt-shard failure of
    `read_records` (a tf.errors.InvalidArgumentError raised while
    iterating), or None for any other error.

    A command iterating a dataset may turn TF's multi-line assertion text
    into the project's one line:

        except tf.errors.InvalidArgumentError as e:
            raise shards.corrupt_shard_error(e) or e
    """
    match = _CORRUPT_MESSAGE.search(str(error))
    if match is None:
        return None
    return cli.UserError(
        f"{match['path']}: truncated or corrupt tfrecord file (its complete "
        f"records end at byte {match['end']} of its {match['size']}); "
        "expected a complete shard: convert the split again")

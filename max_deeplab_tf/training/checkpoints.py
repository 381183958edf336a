"""Checkpoint utilities: variable keys and initial-checkpoint loading.

Checkpoints written by the trainer are object-based (tf.train.Checkpoint)
with the model under the key `model` (see `trainer/train_lib.py`). An
initial checkpoint may be such a checkpoint, one of a bare model (saved as
`tf.train.Checkpoint(model=...)` or with the model as root), or one of a
backbone alone (e.g. an ImageNet-pretrained `max_deeplab_s_backbone`) whose
variables sit under a sub-module of the full model. `load_initial_checkpoint`
finds the prefix pair that lines the two up, loads every variable whose key
and shape agree, and reports what matched and what did not.
"""

import collections
import dataclasses
import re
from typing import Dict, Iterable, List, Sequence, Tuple

from absl import logging
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from max_deeplab_tf import checkpoint_keys
from max_deeplab_tf.checkpoint_keys import VALUE_SUFFIX

_MAX_PREFIX_DEPTH = 4


def variable_keys(root) -> Dict[str, object]:
    """Checkpoint key of every variable reachable from `root`.

    The keys are those `model_view(root)` is saved under, relative to it:
    the shortest (breadth-first) path of attribute names, list indices and
    dict keys, e.g. 'encoder/blocks/0/conv/_kernel/.ATTRIBUTES/VARIABLE_VALUE'.

    Args:
      root: A keras.Model, layer or other trackable.

    Returns:
      Ordered dict key -> variable (each variable once).
    """
    return collections.OrderedDict(
        (path + VALUE_SUFFIX, obj) for path, obj in checkpoint_keys.walk(root)
        if checkpoint_keys.is_variable(obj))


def model_view(model):
    """A trackable mirror of `model` that checkpoints ALL its variables.

    Save and restore `tf.train.Checkpoint(model=model_view(model), ...)`
    instead of `model=model`: the mirror's tree follows the model's
    attributes including Keras 3 lists and dicts of layers (see
    `checkpoint_keys.trackable_children`).

    Raises:
      ValueError: listing any model variable the walk cannot reach.
    """
    nodes = {id(model): tf.__internal__.tracking.AutoTrackable()}
    reached = set()
    for parent, name, child in checkpoint_keys.walk_edges(model):
        if checkpoint_keys.is_variable(child):
            mirror = child
            reached.add(id(child))
        else:
            mirror = nodes[id(child)] = (
                tf.__internal__.tracking.AutoTrackable())
        nodes[id(parent)]._track_trackable(mirror, name=name)
    lost = [v.path if hasattr(v, "path") else v.name
            for v in getattr(model, "variables", []) if id(v) not in reached]
    if lost:
        raise ValueError(
            f"{len(lost)} variable(s) of {getattr(model, 'name', model)} are "
            f"not reachable through its attributes, so no checkpoint would "
            f"hold them: {lost[:10]}")
    return nodes[id(model)]


def checkpoint_variable_paths(reader) -> Dict[str, Tuple[str, tuple]]:
    """Path -> (tensor key, shape) of every model-like variable of a checkpoint.

    The tensor key under which a variable is stored is its shortest path
    from the root over ALL objects, which for a trainer checkpoint often runs
    through the optimizer (Keras optimizers track the variables they update).
    Here paths are taken breadth-first from the root while skipping the
    root's non-model children (optimizer, global_step, ...), which gives the
    same path `variable_keys` gives for the model.

    Args:
      reader: tf.train.load_checkpoint(...) of an object-based checkpoint.
    """
    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    shapes = reader.get_variable_to_shape_map()
    skip = {p.rstrip("/") for p in checkpoint_keys.NON_MODEL_PREFIXES}
    paths = collections.OrderedDict()
    seen = {0}
    queue = collections.deque([(0, "")])
    while queue:
        node_id, path = queue.popleft()
        node = graph.nodes[node_id]
        for attribute in node.attributes:
            if attribute.name == "VARIABLE_VALUE":
                key = attribute.checkpoint_key
                paths[path.rstrip("/") + VALUE_SUFFIX] = (
                    key, tuple(shapes.get(key, ())))
        for child in node.children:
            if node_id == 0 and child.local_name in skip:
                continue
            if child.node_id in seen:
                continue
            seen.add(child.node_id)
            queue.append((child.node_id,
                          f"{path}{checkpoint_keys.escape_name(child.local_name)}/"))
    return paths


def _components(key: str) -> List[str]:
    return key[:-len(VALUE_SUFFIX)].split("/")


def _prefixes(key: str) -> List[Tuple[str, str]]:
    """(prefix, rest) splits of a key at its first few '/' boundaries."""
    parts = _components(key)
    splits = []
    for depth in range(0, min(_MAX_PREFIX_DEPTH, len(parts) - 1) + 1):
        prefix = "/".join(parts[:depth])
        splits.append((prefix + "/" if prefix else "",
                       "/".join(parts[depth:]) + VALUE_SUFFIX))
    return splits


@dataclasses.dataclass
class InitReport:
    """What `load_initial_checkpoint` did.

    Attributes:
      path: The checkpoint prefix.
      checkpoint_prefix, model_prefix: The key prefixes that were lined up
        (checkpoint key = checkpoint_prefix + s, model key = model_prefix + s).
      loaded: Model keys loaded.
      excluded: Model keys left alone on purpose (exclude_patterns).
      shape_mismatch: (model key, model shape, checkpoint shape).
      missing: Model keys with no checkpoint variable.
      unused: Checkpoint keys (model-like ones) no model variable took.
    """

    path: str
    checkpoint_prefix: str = ""
    model_prefix: str = ""
    loaded: List[str] = dataclasses.field(default_factory=list)
    excluded: List[str] = dataclasses.field(default_factory=list)
    shape_mismatch: List[Tuple[str, tuple, tuple]] = dataclasses.field(
        default_factory=list)
    missing: List[str] = dataclasses.field(default_factory=list)
    unused: List[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"Initial checkpoint {self.path}: loaded {len(self.loaded)} "
            f"model variable(s) (checkpoint prefix "
            f"{self.checkpoint_prefix!r} -> model prefix "
            f"{self.model_prefix!r}); {len(self.missing)} model variable(s) "
            f"not in the checkpoint, {len(self.shape_mismatch)} with another "
            f"shape, {len(self.excluded)} excluded; {len(self.unused)} "
            "checkpoint variable(s) unused."]
        for key, ours, theirs in self.shape_mismatch:
            lines.append(f"  shape mismatch: {key}: model {ours}, "
                         f"checkpoint {theirs}")
        for key in self.missing:
            lines.append(f"  not in checkpoint: {key}")
        for key in self.excluded:
            lines.append(f"  excluded: {key}")
        for key in self.unused:
            lines.append(f"  unused checkpoint variable: {key}")
        return "\n".join(lines)


def _best_alignment(model_keys: Sequence[str],
                    checkpoint_shapes: Dict[str, tuple]) -> Tuple[str, str]:
    """The (checkpoint prefix, model prefix) pair under which most keys
    coincide; ties go to the shorter prefixes."""
    by_rest = collections.defaultdict(list)
    for key in checkpoint_shapes:
        for prefix, rest in _prefixes(key):
            by_rest[rest].append(prefix)
    votes = collections.Counter()
    for key in model_keys:
        for model_prefix, rest in _prefixes(key):
            for checkpoint_prefix in by_rest.get(rest, ()):
                votes[(checkpoint_prefix, model_prefix)] += 1
    if not votes:
        return "", ""
    return max(votes.items(),
               key=lambda kv: (kv[1], -len(kv[0][0]) - len(kv[0][1])))[0]


def load_initial_checkpoint(model, path: str,
                            exclude_patterns: Iterable[str] = (),
                            exclude_variables: Iterable[object] = (),
                            log: bool = True) -> InitReport:
    """Loads the weights of a model or backbone checkpoint into `model`.

    Args:
      model: The (built) keras.Model.
      path: Checkpoint prefix or directory (its latest checkpoint is used).
      exclude_patterns: Regular expressions (re.search) of model keys not to
        load.
      exclude_variables: Model variables not to load, e.g. those of a last
        layer whose class count changed.
      log: Log the report's summary.

    Returns:
      An InitReport.

    Raises:
      ValueError: if nothing could be found at `path`, or if no variable at
        all matched (almost always a wrong path or model).
    """
    resolved = path
    # A prefix first: some filesystems (ram://) call any prefix a directory.
    if not tf.io.gfile.exists(path + ".index") and tf.io.gfile.isdir(path):
        resolved = tf.train.latest_checkpoint(path)
        if resolved is None:
            raise ValueError(f"initial_checkpoint {path}: the directory holds "
                             "no checkpoint")
    try:
        reader = tf.compat.v1.train.NewCheckpointReader(resolved)
        sources = checkpoint_variable_paths(reader)
    except (tf.errors.NotFoundError, tf.errors.DataLossError,
            ValueError) as e:
        raise ValueError(
            f"initial_checkpoint {path}: cannot read an object-based "
            f"(TF2) checkpoint: {e}") from e
    checkpoint_shapes = {p: shape for p, (_, shape) in sources.items()}
    model_vars = variable_keys(model)
    report = InitReport(path=resolved)
    checkpoint_prefix, model_prefix = _best_alignment(
        list(model_vars), checkpoint_shapes)
    report.checkpoint_prefix, report.model_prefix = (checkpoint_prefix,
                                                     model_prefix)
    excludes = [re.compile(p) for p in exclude_patterns]
    excluded_ids = {id(v) for v in exclude_variables}
    taken = set()
    for key, variable in model_vars.items():
        if id(variable) in excluded_ids or any(p.search(key)
                                               for p in excludes):
            report.excluded.append(key)
            continue
        if not key.startswith(model_prefix):
            report.missing.append(key)
            continue
        source = checkpoint_prefix + key[len(model_prefix):]
        if source not in checkpoint_shapes:
            report.missing.append(key)
            continue
        ours = tuple(variable.shape)
        if checkpoint_shapes[source] != ours:
            report.shape_mismatch.append((key, ours, checkpoint_shapes[source]))
            continue
        value = reader.get_tensor(sources[source][0])
        variable.assign(tf.cast(value, variable.dtype))
        taken.add(source)
        report.loaded.append(key)
    report.unused = sorted(set(checkpoint_shapes) - taken)
    if not report.loaded:
        raise ValueError(
            f"initial_checkpoint {path}: none of the model's "
            f"{len(model_vars)} variables is in the checkpoint (it has "
            f"{len(checkpoint_shapes)} model-like variables); is it a "
            "checkpoint of this model or its backbone? Convert deeplab2 "
            "checkpoints with max_deeplab_tf.tools.import_deeplab2 first.")
    if log:
        logging.info("%s", report.summary())
    return report

"""Checkpoint utilities: variable keys, initial checkpoints, safe writes.

Checkpoints written by the trainer are object-based (tf.train.Checkpoint)
with the model under the key `model` (see `trainer/train_lib.py`). An
initial checkpoint may be such a checkpoint, one of a bare model (saved as
`tf.train.Checkpoint(model=...)` or with the model as root), or one of a
backbone alone (e.g. an ImageNet-pretrained `max_deeplab_s_backbone`) whose
variables sit under a sub-module of the full model. `load_initial_checkpoint`
finds the prefix pair that lines the two up, loads every variable whose key
and shape agree, and reports what matched and what did not.

For the trainer's own writes and reads: `CheckpointManager` refuses to write
a non-finite value, `ModelOnlyCheckpoint` reads the model out of a training
checkpoint without a warning per optimizer slot, and
`remove_stale_temporaries` clears what a killed write left.
"""

import collections
import dataclasses
import re
from typing import Dict, Iterable, List, Sequence, Tuple

from absl import logging
import tensorflow as tf
from tensorflow.core.protobuf import trackable_object_graph_pb2

from max_deeplab_tf import checkpoint_keys
from max_deeplab_tf import cli
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
      source_format: 'ours' (written by this package: the trainer, the
        importer, a bare model or backbone), 'deeplab2' (a MaX-DeepLab
        checkpoint of deeplab2's trainer) or 'deeplab2 backbone' (deeplab2's
        ImageNet-pretrained backbone). For the deeplab2 formats the keys
        below are deeplab2's (see model/deeplab2_variable_map.py).
      checkpoint_prefix, model_prefix: The key prefixes that were lined up
        (checkpoint key = checkpoint_prefix + s, model key = model_prefix + s).
      loaded: Model keys loaded.
      excluded: Model keys left alone on purpose (exclude_patterns).
      shape_mismatch: (model key, model shape, checkpoint shape).
      missing: Model keys with no checkpoint variable (for a backbone
        checkpoint: backbone variables only; see not_pretrained).
      not_pretrained: Model keys a backbone checkpoint does not hold by
        design (transformers, memory feature, 'extra' layers, heads); they
        keep their initial values.
      unused: Checkpoint keys (model-like ones) no model variable took.
    """

    path: str
    checkpoint_prefix: str = ""
    model_prefix: str = ""
    source_format: str = "ours"
    loaded: List[str] = dataclasses.field(default_factory=list)
    excluded: List[str] = dataclasses.field(default_factory=list)
    shape_mismatch: List[Tuple[str, tuple, tuple]] = dataclasses.field(
        default_factory=list)
    missing: List[str] = dataclasses.field(default_factory=list)
    not_pretrained: List[str] = dataclasses.field(default_factory=list)
    unused: List[str] = dataclasses.field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"Initial checkpoint {self.path} ({self.source_format} format): "
            f"loaded {len(self.loaded)} model variable(s) (checkpoint prefix "
            f"{self.checkpoint_prefix!r} -> model prefix "
            f"{self.model_prefix!r}); {len(self.missing)} model variable(s) "
            f"not in the checkpoint, {len(self.shape_mismatch)} with another "
            f"shape, {len(self.excluded)} excluded, "
            f"{len(self.not_pretrained)} not pretrained (kept as "
            f"initialised); {len(self.unused)} checkpoint variable(s) unused."]
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


def resolve_checkpoint(path: str,
                       what: str = "model_options.initial_checkpoint") -> str:
    """A checkpoint prefix given a prefix or a directory (its latest).

    Args:
      path: '.../ckpt-N' or a folder with a `checkpoint` file (gfile path).
      what: The field or flag that gave `path`, for the error message.

    Raises:
      cli.UserError: naming `what` and `path` when there is no checkpoint.
    """
    # A prefix first: some filesystems (ram://) call any prefix a directory.
    if tf.io.gfile.exists(path + ".index"):
        return path
    if tf.io.gfile.isdir(path):
        resolved = tf.train.latest_checkpoint(path)
        if resolved is None:
            raise cli.UserError(
                f"{what} {path}: the directory holds no checkpoint (no "
                "'checkpoint' file); expected a checkpoint prefix such as "
                ".../ckpt-N or a folder with a 'checkpoint' file")
        return resolved
    raise cli.UserError(
        f"{what} {path}: cannot read a checkpoint there: no such checkpoint "
        f"({path}.index does not exist); "
        "expected a checkpoint prefix such as .../ckpt-N or its folder")


def _native_hits(model_keys, checkpoint_shapes, alignment) -> int:
    checkpoint_prefix, model_prefix = alignment
    return sum(1 for key in model_keys if key.startswith(model_prefix) and
               checkpoint_prefix + key[len(model_prefix):] in checkpoint_shapes)


def _deeplab2_mapping(model):
    """deeplab2 key -> variable for MaX-DeepLab models, else None."""
    if not isinstance(getattr(model, "checkpoint_items", None), dict):
        return None
    # pylint: disable-next=import-outside-toplevel
    from max_deeplab_tf.model import deeplab2_variable_map
    return deeplab2_variable_map.deeplab2_variable_map(model)


def _load_deeplab2(model, path, reader, available, mapping, is_excluded,
                   report):
    """Fills `model` from a deeplab2 checkpoint (full or backbone).

    Args:
      available: normalised deeplab2 key -> (tensor key, shape).
      mapping: deeplab2 key -> model variable.
      is_excluded: (key, variable) -> bool.

    Raises:
      cli.UserError: naming the checkpoint and the first variables missing
        or of another shape.
    """
    # pylint: disable-next=import-outside-toplevel
    from max_deeplab_tf.model import deeplab2_variable_map as dvm
    backbone_only = not any(key in available and not dvm.is_backbone_key(key)
                            for key in mapping)
    report.source_format = "deeplab2 backbone" if backbone_only else (
        "deeplab2")
    to_load = []
    for key, variable in mapping.items():
        if is_excluded(key, variable):
            report.excluded.append(key)
        elif key not in available:
            if backbone_only and not dvm.is_backbone_key(key):
                report.not_pretrained.append(key)
            else:
                report.missing.append(key)
        elif tuple(available[key][1]) != tuple(variable.shape):
            report.shape_mismatch.append(
                (key, tuple(variable.shape), tuple(available[key][1])))
        else:
            to_load.append((key, variable))
    taken = {key for key, _ in to_load}
    report.unused = sorted(set(available) - taken)
    kind = ("deeplab2 ImageNet-backbone" if backbone_only
            else "deeplab2 MaX-DeepLab")
    if report.missing or report.shape_mismatch:
        problems = []
        if report.missing:
            problems.append(
                f"{len(report.missing)} model variable(s) missing, first "
                f"{report.missing[:5]}")
        if report.shape_mismatch:
            problems.append(
                f"{len(report.shape_mismatch)} of another shape, first "
                + ", ".join(f"{k} (model {m}, checkpoint {c})"
                            for k, m, c in report.shape_mismatch[:3]))
        hint = ("is it the backbone of this model (deeplab2's "
                "max_deeplab_{s,l}_backbone_imagenet1k_strong_training_"
                "strategy for max_deeplab_{s,l})?" if backbone_only else
                "is it a checkpoint of this model? For other classes set "
                "restore_semantic_last_layer_from_initial_checkpoint: false "
                "and restore_instance_last_layer_from_initial_checkpoint: "
                "false")
        raise cli.UserError(
            f"model_options.initial_checkpoint {path}: does not fit "
            f"{model.name} as a {kind} checkpoint: " + "; ".join(problems)
            + f"; {hint}")
    for key, variable in to_load:
        value = reader.get_tensor(available[key][0])
        variable.assign(tf.cast(value, variable.dtype))
    report.loaded = [key for key, _ in to_load]


def load_initial_checkpoint(model, path: str,
                            exclude_patterns: Iterable[str] = (),
                            exclude_variables: Iterable[object] = (),
                            log: bool = True) -> InitReport:
    """Loads the weights of a model or backbone checkpoint into `model`.

    The kind of checkpoint is recognised by its keys:
      - ours (the trainer's, the importer's, a bare model's or a backbone
        alone): the key prefixes are lined up (module docstring);
      - deeplab2's, read directly with deeplab2's names
        (model/deeplab2_variable_map.py): a MaX-DeepLab checkpoint of its
        trainer fills every variable; an ImageNet-pretrained backbone
        (max_deeplab_{s,l}_backbone_imagenet1k_strong_training_strategy,
        keys 'encoder/...' or TF Model Garden's 'backbone/_encoder/...')
        fills every backbone variable, and the transformers, memory feature,
        'extra' layers and heads keep their initial values, as in deeplab2.
    For MaX-DeepLab models every backbone variable (deeplab2's rule, batch
    norm statistics included) that is not excluded must be filled.

    Args:
      model: The (built) keras.Model.
      path: Checkpoint prefix or directory (its latest checkpoint is used).
      exclude_patterns: Regular expressions (re.search) of model keys not to
        load.
      exclude_variables: Model variables not to load, e.g. those of a last
        layer whose class count changed.
      log: Log the report's summary.

    Returns:
      An InitReport (its summary says how many variables matched).

    Raises:
      cli.UserError: naming the checkpoint, if nothing can be read at
        `path`, if no variable matched, or if a backbone variable of a
        MaX-DeepLab model is missing or has another shape (the message
        lists the first ones).
    """
    resolved = resolve_checkpoint(path)
    try:
        reader = tf.compat.v1.train.NewCheckpointReader(resolved)
        sources = checkpoint_variable_paths(reader)
    except (tf.errors.OpError, RuntimeError, ValueError) as e:
        # RuntimeError: the reader's own for a corrupt or truncated index.
        raise cli.UserError(
            f"model_options.initial_checkpoint {path}: cannot read an "
            f"object-based (TF2) checkpoint: {cli.one_line(str(e))}") from e
    checkpoint_shapes = {p: shape for p, (_, shape) in sources.items()}
    model_vars = variable_keys(model)
    excludes = [re.compile(p) for p in exclude_patterns]
    excluded_ids = {id(v) for v in exclude_variables}

    def is_excluded(key, variable):
        return id(variable) in excluded_ids or any(p.search(key)
                                                   for p in excludes)

    report = InitReport(path=resolved)
    alignment = _best_alignment(list(model_vars), checkpoint_shapes)
    mapping = _deeplab2_mapping(model)
    if mapping is not None:
        # pylint: disable-next=import-outside-toplevel
        from max_deeplab_tf.model import deeplab2_variable_map as dvm
        available = {
            dvm.normalize_checkpoint_key(p[:-len(VALUE_SUFFIX)]): source
            for p, source in sources.items()}
        deeplab2_hits = sum(1 for key in mapping if key in available)
        if deeplab2_hits > _native_hits(model_vars, checkpoint_shapes,
                                        alignment):
            _load_deeplab2(model, path, reader, available, mapping,
                           is_excluded, report)
            if log:
                logging.info("%s", report.summary())
            return report

    checkpoint_prefix, model_prefix = alignment
    report.checkpoint_prefix, report.model_prefix = alignment
    taken = set()
    for key, variable in model_vars.items():
        if is_excluded(key, variable):
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
        raise cli.UserError(
            f"model_options.initial_checkpoint {path}: none of the model's "
            f"{len(model_vars)} variables is in the checkpoint (it has "
            f"{len(checkpoint_shapes)} model-like variables); expected a "
            "checkpoint of this model or its backbone (ours or deeplab2's)")
    if mapping is not None:
        _check_backbone_filled(model, path, mapping, model_vars, report)
    if log:
        logging.info("%s", report.summary())
    return report


def _check_backbone_filled(model, path, mapping, model_vars, report):
    """Raises cli.UserError when a (non-excluded) backbone variable of a
    MaX-DeepLab model was not filled from one of our checkpoints."""
    # pylint: disable-next=import-outside-toplevel
    from max_deeplab_tf.model import deeplab2_variable_map as dvm
    backbone = {id(v) for key, v in mapping.items() if dvm.is_backbone_key(key)}
    unfilled = {key for key, _, _ in report.shape_mismatch} | set(
        report.missing)
    lacking = [key for key, variable in model_vars.items()
               if id(variable) in backbone and key in unfilled]
    if lacking:
        raise cli.UserError(
            f"model_options.initial_checkpoint {path}: {len(lacking)} "
            f"backbone variable(s) of {model.name} are missing or of another "
            f"shape, first {lacking[:5]}; expected a checkpoint of this "
            "model or of its backbone")


# What a checkpoint write leaves while in progress: TensorFlow's saver
# writes the shards of MODEL_DIR/ckpt-N into MODEL_DIR/ckpt-N_temp/ and
# merges them into ckpt-N.index / ckpt-N.data-* at the end. A process killed
# in between leaves the folder behind; nothing reads it.
_STALE_TEMPORARY = re.compile(r"^ckpt-\d+_temp$")


def remove_stale_temporaries(directory: str) -> List[str]:
    """Removes the `ckpt-N_temp` folders a killed checkpoint write left.

    Only names matching what tf.train.CheckpointManager (prefix 'ckpt')
    writes are touched, and only directly inside `directory`. Call it only
    from the one process that writes checkpoints there (the chief), before
    it starts writing.

    Args:
      directory: The model directory (gfile path).

    Returns:
      The paths removed.
    """
    if not tf.io.gfile.isdir(directory):
        return []
    removed = []
    for name in sorted(tf.io.gfile.listdir(directory)):
        name = name.rstrip("/")
        path = f"{directory.rstrip('/')}/{name}"
        if _STALE_TEMPORARY.match(name) and tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
            removed.append(path)
    if removed:
        logging.info("Removed %d unfinished checkpoint write(s): %s",
                     len(removed), removed)
    return removed


class FiniteCheck:
    """Finds the variables holding a NaN or an infinity.

    One fused reduction per variable in a tf.function traced once, read
    back with one host transfer; under tf.distribute, mirrored variables are
    read from their primary copy (all copies agree).

    Args:
      variables: The variables to check (non-floating ones are skipped).
    """

    def __init__(self, variables: Sequence[tf.Variable]):
        self._variables = [v for v in variables
                           if tf.as_dtype(v.dtype).is_floating]

        @tf.function(autograph=False)
        def finite_flags():
            return tf.stack([tf.reduce_all(tf.math.is_finite(v))
                             for v in self._variables])

        self._finite_flags = finite_flags

    def __call__(self) -> List[str]:
        """Names (paths) of the non-finite variables; empty when all are
        finite."""
        if not self._variables:
            return []
        flags = self._finite_flags().numpy()
        return [getattr(v, "path", None) or v.name
                for v, ok in zip(self._variables, flags) if not ok]


def nonfinite_variables(variables: Sequence[tf.Variable]) -> List[str]:
    """Names of the variables holding a NaN or an infinity (see
    FiniteCheck, which keeps its traced function for repeated checks)."""
    return FiniteCheck(variables)()


class NonFiniteCheckpointError(FloatingPointError):
    """A checkpoint write was refused: some variable is not finite."""


class CheckpointManager(tf.train.CheckpointManager):
    """tf.train.CheckpointManager that never writes a non-finite value and
    restores at most once per process.

    Args:
      checkpoint, directory, **kwargs: as tf.train.CheckpointManager.
      guarded_variables: Variables checked before each write (the model's,
        the optimizers' slots and counters, the step's state); a write with
        any of them non-finite raises NonFiniteCheckpointError instead.
    """

    def __init__(self, checkpoint, directory, guarded_variables=(),
                 **kwargs):
        super().__init__(checkpoint, directory, **kwargs)
        self._nonfinite = FiniteCheck(list(guarded_variables))
        self._restored = False
        self._restored_path = None

    def save(self, checkpoint_number=None, check_interval=True,
             options=None):
        if self._skips(check_interval):
            return None
        bad = self._nonfinite()
        if bad:
            raise NonFiniteCheckpointError(
                f"refusing to write a checkpoint to {self.directory}: "
                f"{len(bad)} variable(s) hold NaN or infinity, e.g. "
                f"{bad[:5]}; the last checkpoint is {self.latest_checkpoint}")
        return super().save(checkpoint_number=checkpoint_number,
                            check_interval=check_interval, options=options)

    def _skips(self, check_interval) -> bool:
        """Whether the base class would write nothing now (its own test,
        made before every variable is read for the finiteness check)."""
        last = self._last_checkpoint_step
        if self._checkpoint_interval is None or last is None:
            return False
        step = int(self._step_counter.numpy())
        return step == last or (
            check_interval and step < last + self._checkpoint_interval)

    def restore_or_initialize(self):
        # orbit's Controller restores on construction; the trainer has
        # restored (and logged) already by then.
        if not self._restored:
            self._restored_path = super().restore_or_initialize()
            self._restored = True
        return self._restored_path


class ModelOnlyCheckpoint(tf.train.Checkpoint):
    """A tf.train.Checkpoint for reading part of a training checkpoint.

    Evaluation and export build only the model and the global step; the
    file also holds the optimizers' slots. Every restore is marked
    `expect_partial()`, so the values nobody asked for are not reported
    (TensorFlow would warn once per optimizer variable).
    """

    def restore(self, save_path, options=None):
        return super().restore(save_path, options=options).expect_partial()

"""Which deeplab2 checkpoint tensor fills each variable of our model.

deeplab2's trainer checkpoints `tf.train.Checkpoint(**model.checkpoint_items,
...)`; its object-based keys are attribute paths, e.g.
  encoder/_stage5/_block1/_attention/_height_axis/qkv_kernel
  semantic_last_layer/kernel
(plus the suffix '/.ATTRIBUTES/VARIABLE_VALUE'). Our layers use deeplab2's
attribute names and our `MaXDeepLab.checkpoint_items` uses its top-level
keys, so a variable's deeplab2 key is its attribute path from those items,
found the way tf.train.Checkpoint finds it (`checkpoint_keys.walk`),
with Keras 3's own attribute names translated: a convolution's `_kernel` is
tf.keras's `kernel`, a depthwise convolution's `kernel` is tf.keras's
`depthwise_kernel`.

    mapping = deeplab2_variable_map(model)           # key -> keras.Variable
    report = load_deeplab2_checkpoint(model, prefix)  # fills every variable

The mapping covers every weight of the model exactly once; loading checks
that every non-optimizer tensor of the checkpoint is used and that shapes
agree, and lists what is unmatched on each side otherwise.

deeplab2's ImageNet-pretrained backbones (g3doc/projects/
imagenet_pretrained_checkpoints.md, e.g.
max_deeplab_s_backbone_imagenet1k_strong_training_strategy) hold the encoder
of a `max_deeplab_{s,l}_backbone`, i.e. MaX-DeepLab's encoder without the
transformers (classification mode), keyed by the same attribute paths. deeplab2
reads them (trainer/runner_utils.maybe_load_checkpoint) under `encoder/` as its
own trainer writes them, or under `backbone/_encoder/` as TF Model Garden's
vision trainer does; `normalize_checkpoint_key` maps the second onto the first,
and `is_backbone_key` is deeplab2's rule for which variables such a checkpoint
fills (check_if_variable_in_backbone).
"""

import collections
import dataclasses
import re
from typing import Dict, List, Sequence

import keras
import tensorflow as tf

from max_deeplab_tf import checkpoint_keys
from max_deeplab_tf import cli
from max_deeplab_tf.checkpoint_keys import NON_MODEL_PREFIXES
from max_deeplab_tf.checkpoint_keys import VALUE_SUFFIX

_RENAMES = (
    (re.compile(r"/_depthwise_conv/kernel$"), "/_depthwise_conv/depthwise_kernel"),
    (re.compile(r"/_kernel$"), "/kernel"),
)


# Where deeplab2 finds the encoder in an initial checkpoint: its own layout
# and TF Model Garden's (which prefixes 'backbone/_encoder/').
ENCODER_PREFIX = "encoder/"
MODEL_GARDEN_ENCODER_PREFIX = "backbone/_encoder/"
# Names deeplab2 reserves for encoder variables that no ImageNet backbone has
# (axial_resnet.EXTRA, MEMORY_FEATURE and axial_block_groups.TRANSFORMER).
_NOT_PRETRAINED_WORDS = ("extra", "memory_feature", "transformer")


def normalize_checkpoint_key(key: str) -> str:
    """A checkpoint key in deeplab2's own layout ('encoder/...')."""
    if key.startswith(MODEL_GARDEN_ENCODER_PREFIX):
        return ENCODER_PREFIX + key[len(MODEL_GARDEN_ENCODER_PREFIX):]
    return key


def is_backbone_key(key: str) -> bool:
    """Whether a deeplab2 key belongs to the ImageNet-pretrainable backbone.

    deeplab2's rule for MaX-DeepLab: an encoder variable whose name holds
    none of 'extra', 'memory_feature', 'transformer'. Batch-norm moving
    statistics count too (a backbone checkpoint holds them).
    """
    return key.startswith(ENCODER_PREFIX) and not any(
        word in key for word in _NOT_PRETRAINED_WORDS)


def _deeplab2_key(path: str) -> str:
    for pattern, replacement in _RENAMES:
        path = pattern.sub(replacement, path)
    return path


def deeplab2_variable_map(model) -> Dict[str, keras.Variable]:
    """Maps deeplab2 checkpoint keys (without VALUE_SUFFIX) to our variables.

    Args:
      model: A built MaXDeepLab or MaXDeepLabBackbone (call it once first).

    Returns:
      An ordered dict {deeplab2 key: keras.Variable} covering every weight of
      the model.

    Raises:
      ValueError: if the model is not built or a weight cannot be reached
        from model.checkpoint_items.
    """
    if not model.built or not model.weights:
        raise ValueError(
            "deeplab2_variable_map: build the model first (call it on an "
            "image batch)")
    paths = {id(obj): path
             for path, obj in checkpoint_keys.walk(model.checkpoint_items)}
    mapping = collections.OrderedDict()
    unreached = []
    for variable in model.weights:
        path = paths.get(id(variable))
        if path is None:
            unreached.append(variable.path)
            continue
        key = _deeplab2_key(path)
        if key in mapping:
            raise ValueError(
                f"deeplab2_variable_map: {variable.path} and "
                f"{mapping[key].path} both map to {key}")
        mapping[key] = variable
    if unreached:
        raise ValueError(
            "deeplab2_variable_map: weights not reachable from "
            f"model.checkpoint_items: {unreached}")
    return mapping


@dataclasses.dataclass
class LoadReport:
    """What load_deeplab2_checkpoint matched.

    Attributes:
      loaded: deeplab2 keys copied into the model.
      unused_checkpoint_keys: non-optimizer checkpoint keys with no model
        variable.
      missing_model_keys: model keys absent from the checkpoint.
      shape_mismatches: 'key: checkpoint shape vs model shape' entries.
      ignored_keys: optimizer and bookkeeping keys that were skipped.
    """

    loaded: List[str]
    unused_checkpoint_keys: List[str]
    missing_model_keys: List[str]
    shape_mismatches: List[str]
    ignored_keys: List[str]

    @property
    def complete(self) -> bool:
        return not (self.unused_checkpoint_keys or self.missing_model_keys
                    or self.shape_mismatches)


def checkpoint_model_keys(prefix: str,
                          ignore_prefixes: Sequence[str] = NON_MODEL_PREFIXES
                          ) -> Dict[str, List[int]]:
    """The model tensors of a deeplab2 checkpoint: {key: shape}."""
    result = {}
    for name, shape in tf.train.list_variables(prefix):
        if name.startswith(tuple(ignore_prefixes)) or ".OPTIMIZER_SLOT" in name:
            continue
        if name.endswith(VALUE_SUFFIX):
            result[name[:-len(VALUE_SUFFIX)]] = list(shape)
    return result


def load_deeplab2_checkpoint(model, prefix: str, strict: bool = True
                             ) -> LoadReport:
    """Copies a deeplab2 checkpoint's weights into a built model.

    Args:
      model: A built MaXDeepLab / MaXDeepLabBackbone whose architecture is the
        checkpoint's (same config).
      prefix: The checkpoint prefix, e.g. '.../ckpt-0' (read through
        tf.train.load_checkpoint, so gs:// works).
      strict: Raise unless every model weight is filled exactly once from a
        tensor of the same shape and every model tensor of the checkpoint is
        used.

    Returns:
      A LoadReport.

    Raises:
      cli.UserError (a ValueError): in strict mode, naming the checkpoint
        and the first unmatched keys on each side and shape mismatches.
    """
    mapping = deeplab2_variable_map(model)
    reader = tf.train.load_checkpoint(prefix)
    available = checkpoint_model_keys(prefix)
    ignored = sorted(name for name, _ in tf.train.list_variables(prefix)
                     if name[:-len(VALUE_SUFFIX)] not in available)
    missing = sorted(set(mapping) - set(available))
    unused = sorted(set(available) - set(mapping))
    mismatches = []
    to_load = []
    for key, variable in mapping.items():
        if key not in available:
            continue
        if list(available[key]) != list(variable.shape):
            mismatches.append(
                f"{key}: checkpoint {available[key]} vs model "
                f"{list(variable.shape)}")
            continue
        to_load.append((key, variable))
    report = LoadReport(loaded=[k for k, _ in to_load],
                        unused_checkpoint_keys=unused,
                        missing_model_keys=missing,
                        shape_mismatches=mismatches, ignored_keys=ignored)
    if strict and not report.complete:
        # The first few of each, so that the error stays one readable line.
        lines = []
        if missing:
            lines.append(f"{len(missing)} model variable(s) not in the "
                         f"checkpoint, first {missing[:5]}")
        if unused:
            lines.append(f"{len(unused)} checkpoint tensor(s) unused, first "
                         f"{unused[:5]}")
        if mismatches:
            lines.append(f"{len(mismatches)} shape mismatches, first "
                         f"{mismatches[:3]}")
        raise cli.UserError(
            f"{prefix}: cannot load into {model.name}: " + "; ".join(lines)
            + "; expected the checkpoint of the config's model")
    for key, variable in to_load:
        value = reader.get_tensor(key + VALUE_SUFFIX)
        variable.assign(tf.cast(value, variable.dtype))
    return report

"""Imports a deeplab2 MaX-DeepLab checkpoint and config.

    python -m max_deeplab_tf.tools.import_deeplab2 \
        --deeplab2_config=max_deeplab_s_os16_res641_100k.textproto \
        --deeplab2_checkpoint=/ckpts/max_deeplab_s/ckpt-100000 \
        --output_dir=/models/max_deeplab_s_coco

writes into output_dir:
  experiment.textproto  the config translated to our ExperimentOptions
                        (${NAME} variables kept; fields we lack are listed in
                        its header);
  ckpt-0.*, checkpoint  a native checkpoint of the model (as the trainer
                        writes it, step 0), usable as
                        model_options.initial_checkpoint, or as --model_dir
                        of trainer.main's eval and export modes.

Every variable of our model must be filled exactly once from a checkpoint
tensor of the same shape and every model tensor of the checkpoint must be
used (optimizer state is ignored); otherwise nothing is written and the
error names the first unmatched keys on each side.

output_dir must be empty, absent, or an earlier import's output (then its
files are replaced); a folder holding anything else is refused, so nothing
the importer did not write is ever overwritten. The files are written into a
temporary folder inside output_dir and moved into place, the `checkpoint`
index last.

Every bad input (a missing flag, config or checkpoint, a config that is not
MaX-DeepLab, a checkpoint that does not fit the model, a foreign output_dir)
is reported as one line naming the file or flag, exit code 2 (the traceback
with --verbose).
"""

import dataclasses
import os
import re
import uuid
from typing import List, Sequence

from absl import flags
from absl import logging

from max_deeplab_tf import cli

# Imported as every command imports it: without Keras's optional packages
# (cli.import_tensorflow), before the modules below import it themselves.
tf = cli.import_tensorflow()

# pylint: disable=wrong-import-position
from max_deeplab_tf.model import build_for_input_size
from max_deeplab_tf.model import build_model
from max_deeplab_tf.model import deeplab2_variable_map
from max_deeplab_tf.tools import deeplab2_config
from max_deeplab_tf.training import checkpoints
# pylint: enable=wrong-import-position

CONFIG_NAME = "experiment.textproto"
# What an import writes into output_dir (ckpt-0.* and the `checkpoint`
# index of tf.train.CheckpointManager) and its temporary folders.
_OUR_FILES = re.compile(
    r"^(experiment\.textproto|checkpoint|ckpt-0\.index|"
    r"ckpt-0\.data-\d{5}-of-\d{5}|\.import-[0-9a-f]{32})$")
_TEMPORARY_PREFIX = ".import-"


@dataclasses.dataclass
class ImportResult:
    """What `import_deeplab2` wrote.

    Attributes:
      config_path: The translated config.
      checkpoint_path: Prefix of the native checkpoint.
      num_variables: Model variables loaded.
      dropped_fields: deeplab2 config fields left out.
    """

    config_path: str
    checkpoint_path: str
    num_variables: int
    dropped_fields: List[str]


def _model_input_size(experiment) -> Sequence[int]:
    for options in (experiment.eval_dataset_options,
                    experiment.train_dataset_options):
        if len(options.crop_size) == 2:
            return list(options.crop_size)
    stride = experiment.model_options.backbone.output_stride
    return [2 * stride + 1, 2 * stride + 1]


def _is_ours(output_dir: str, names: Sequence[str]) -> bool:
    """Whether a folder holds only what an earlier import wrote."""
    if CONFIG_NAME not in names:
        return False
    if not all(_OUR_FILES.match(name) for name in names):
        return False
    with tf.io.gfile.GFile(os.path.join(output_dir, CONFIG_NAME)) as f:
        return deeplab2_config.TRANSLATION_MARK in f.read(4096)


def _check_output_dir(output_dir: str) -> None:
    """Refuses a non-empty output_dir that is not an earlier import's.

    Raises:
      cli.UserError: naming --output_dir and the first foreign entries.
    """
    if not tf.io.gfile.exists(output_dir):
        return
    if not tf.io.gfile.isdir(output_dir):
        raise cli.UserError(f"--output_dir {output_dir}: is a file; expected "
                            "a folder (absent, empty or an earlier import)")
    names = sorted(name.rstrip("/")
                   for name in tf.io.gfile.listdir(output_dir))
    if names and not _is_ours(output_dir, names):
        foreign = [n for n in names if not _OUR_FILES.match(n)] or names
        raise cli.UserError(
            f"--output_dir {output_dir}: not empty and not an earlier import "
            f"(holds {foreign[:5]}); expected an absent or empty folder, or "
            "one this importer wrote. Nothing was written")


def _write(output_dir: str, config_text: str, model) -> str:
    """Writes the config and the checkpoint into output_dir.

    Both go to a temporary folder inside output_dir first and are moved
    into place, the `checkpoint` index last, so an interrupted import never
    leaves a checkpoint that looks complete.

    Returns:
      The checkpoint prefix.
    """
    tf.io.gfile.makedirs(output_dir)
    # Temporary folders of earlier, killed imports are ours to remove.
    for name in tf.io.gfile.listdir(output_dir):
        name = name.rstrip("/")
        if name.startswith(_TEMPORARY_PREFIX) and _OUR_FILES.match(name):
            tf.io.gfile.rmtree(os.path.join(output_dir, name))
    temporary = os.path.join(output_dir,
                             _TEMPORARY_PREFIX + uuid.uuid4().hex)
    tf.io.gfile.makedirs(temporary)
    with tf.io.gfile.GFile(os.path.join(temporary, CONFIG_NAME), "w") as f:
        f.write(config_text)
    checkpoint = tf.train.Checkpoint(
        model=checkpoints.model_view(model),
        global_step=tf.Variable(0, dtype=tf.int64))
    manager = tf.train.CheckpointManager(checkpoint, temporary, max_to_keep=1)
    manager.save(checkpoint_number=0)
    names = sorted(tf.io.gfile.listdir(temporary))
    order = ([n for n in names if ".data-" in n] + ["ckpt-0.index",
                                                    CONFIG_NAME, "checkpoint"])
    for name in order:
        tf.io.gfile.rename(os.path.join(temporary, name),
                           os.path.join(output_dir, name), overwrite=True)
    tf.io.gfile.rmtree(temporary)
    return os.path.join(output_dir, "ckpt-0")


def import_deeplab2(deeplab2_config_path: str, deeplab2_checkpoint: str,
                    output_dir: str) -> ImportResult:
    """Translates the config, loads the checkpoint, writes both natively.

    Args:
      deeplab2_config_path: deeplab2 ExperimentOptions textproto.
      deeplab2_checkpoint: Checkpoint prefix (e.g. '.../ckpt-100000') or a
        directory holding deeplab2's `checkpoint` file.
      output_dir: Where to write (created; gfile paths work): absent, empty,
        or an earlier import's output.

    Returns:
      An ImportResult.

    Raises:
      cli.UserError (all subclasses of ValueError): a missing or non-MaX-
        DeepLab config (deeplab2_config.Deeplab2ConfigError), a missing
        checkpoint, one that does not map one-to-one onto the model, or a
        foreign output_dir; nothing is written then.
    """
    translated = deeplab2_config.translate_config_file(deeplab2_config_path)
    deeplab2_checkpoint = checkpoints.resolve_checkpoint(
        deeplab2_checkpoint, "--deeplab2_checkpoint")
    _check_output_dir(output_dir)
    for dropped in translated.dropped_fields:
        logging.warning("deeplab2 config field left out: %s", dropped)
    experiment = translated.experiment

    try:
        model = build_model(experiment)
    except ValueError as e:
        raise cli.UserError(f"--deeplab2_config {deeplab2_config_path}: "
                            f"{cli.one_line(str(e))}") from e
    height, width = _model_input_size(experiment)
    build_for_input_size(model, height, width)
    report = deeplab2_variable_map.load_deeplab2_checkpoint(
        model, deeplab2_checkpoint, strict=True)
    logging.info("Loaded %d variables from %s (%d optimizer/bookkeeping "
                 "tensors ignored)", len(report.loaded), deeplab2_checkpoint,
                 len(report.ignored_keys))

    checkpoint_path = _write(output_dir, translated.to_textproto(), model)
    config_path = os.path.join(output_dir, CONFIG_NAME)
    logging.info("Wrote %s and %s", config_path, checkpoint_path)
    return ImportResult(config_path, checkpoint_path, len(report.loaded),
                        translated.dropped_fields)


FLAGS = flags.FLAGS
flags.DEFINE_string("deeplab2_config", None,
                    "deeplab2 ExperimentOptions textproto of the checkpoint.")
flags.DEFINE_string("deeplab2_checkpoint", None,
                    "deeplab2 checkpoint prefix or directory.")
flags.DEFINE_string("output_dir", None,
                    "Where to write experiment.textproto and the checkpoint.")


def main(argv):
    if len(argv) > 1:
        raise cli.UserError(f"unexpected argument(s) {argv[1:]}; every input "
                            "is a flag (--deeplab2_config, "
                            "--deeplab2_checkpoint, --output_dir)")
    for name in ("deeplab2_config", "deeplab2_checkpoint", "output_dir"):
        if not FLAGS[name].value:
            raise cli.UserError(f"--{name} is required ({FLAGS[name].help})")
    result = import_deeplab2(FLAGS.deeplab2_config, FLAGS.deeplab2_checkpoint,
                             FLAGS.output_dir)
    print(f"imported {result.num_variables} variables\n"
          f"config:     {result.config_path}\n"
          f"checkpoint: {result.checkpoint_path}")


if __name__ == "__main__":
    cli.run_absl_main(main)

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
error lists what is unmatched on each side.
"""

import dataclasses
import os
from typing import List, Sequence

from absl import app
from absl import flags
from absl import logging
import tensorflow as tf

from max_deeplab_tf.model import build_model
from max_deeplab_tf.model import deeplab2_variable_map
from max_deeplab_tf.tools import deeplab2_config
from max_deeplab_tf.training import checkpoints

CONFIG_NAME = "experiment.textproto"


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


def import_deeplab2(deeplab2_config_path: str, deeplab2_checkpoint: str,
                    output_dir: str) -> ImportResult:
    """Translates the config, loads the checkpoint, writes both natively.

    Args:
      deeplab2_config_path: deeplab2 ExperimentOptions textproto.
      deeplab2_checkpoint: Checkpoint prefix (e.g. '.../ckpt-100000') or a
        directory holding deeplab2's `checkpoint` file.
      output_dir: Where to write (created; gfile paths work).

    Returns:
      An ImportResult.

    Raises:
      Deeplab2ConfigError: bad or non-MaX-DeepLab config.
      ValueError: the checkpoint does not map one-to-one onto the model.
    """
    if tf.io.gfile.isdir(deeplab2_checkpoint):
        latest = tf.train.latest_checkpoint(deeplab2_checkpoint)
        if latest is None:
            raise ValueError(f"{deeplab2_checkpoint}: no checkpoint in this "
                             "directory")
        deeplab2_checkpoint = latest
    translated = deeplab2_config.translate_config_file(deeplab2_config_path)
    for dropped in translated.dropped_fields:
        logging.warning("deeplab2 config field left out: %s", dropped)
    experiment = translated.experiment

    model = build_model(experiment)
    height, width = _model_input_size(experiment)
    model(tf.zeros([1, height, width, 3]), training=False)
    report = deeplab2_variable_map.load_deeplab2_checkpoint(
        model, deeplab2_checkpoint, strict=True)
    logging.info("Loaded %d variables from %s (%d optimizer/bookkeeping "
                 "tensors ignored)", len(report.loaded), deeplab2_checkpoint,
                 len(report.ignored_keys))

    tf.io.gfile.makedirs(output_dir)
    config_path = os.path.join(output_dir, CONFIG_NAME)
    temporary = config_path + ".tmp"
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(translated.to_textproto())
    tf.io.gfile.rename(temporary, config_path, overwrite=True)

    checkpoint = tf.train.Checkpoint(
        model=checkpoints.model_view(model),
        global_step=tf.Variable(0, dtype=tf.int64))
    # CheckpointManager writes the data first and the `checkpoint` index last,
    # so an interrupted import leaves no checkpoint that looks complete.
    manager = tf.train.CheckpointManager(checkpoint, output_dir, max_to_keep=1)
    checkpoint_path = manager.save(checkpoint_number=0)
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
    del argv
    result = import_deeplab2(FLAGS.deeplab2_config, FLAGS.deeplab2_checkpoint,
                             FLAGS.output_dir)
    print(f"imported {result.num_variables} variables\n"
          f"config:     {result.config_path}\n"
          f"checkpoint: {result.checkpoint_path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(
        ["deeplab2_config", "deeplab2_checkpoint", "output_dir"])
    app.run(main)

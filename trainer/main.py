r"""Trains, evaluates and exports MaX-DeepLab.

    python -m trainer.main --config_file=FILE \
        [--mode={train,eval,train_and_eval,continuous_eval,export}] \
        [--model_dir=DIR] [--config_override="textproto"]... \
        [--tpu=NAME_OR_ADDRESS] [--num_gpus=N]

--mode defaults to train_and_eval. --model_dir defaults to the config's
trainer_options.model_dir (the demo config names demo_output/model). The
demo, `python -m trainer.main --config_file=configs/demo.textproto`, first
makes its synthetic dataset (trainer_options.synthetic_data) if absent.
Every path may be local, gs:// or ram://.
"""

import os
import sys

from absl import app
from absl import flags
from absl import logging

_MODES = ("train", "eval", "train_and_eval", "continuous_eval", "export")

FLAGS = flags.FLAGS
flags.DEFINE_string("config_file", None, "ExperimentOptions textproto.")
flags.DEFINE_enum("mode", "train_and_eval", _MODES, "What to run.")
flags.DEFINE_string(
    "model_dir", None,
    "Checkpoints, summaries, metrics and exports go here. Defaults to the "
    "config's trainer_options.model_dir.")
flags.DEFINE_multi_string(
    "config_override", [],
    "Textproto snippets applied to the config in order, e.g. "
    "'trainer_options.solver_options.base_learning_rate: 0.0005'.")
flags.DEFINE_string("tpu", None, "TPU name or grpc address ('local' on a "
                    "TPU VM).")
flags.DEFINE_integer("num_gpus", 0, "GPUs to use (0: CPU).")
flags.DEFINE_integer(
    "num_cpu_devices", 1,
    "Split the host CPU into this many logical devices (with --num_gpus=0 "
    "and several devices, training uses MirroredStrategy over them; for "
    "testing distribution without accelerators).")


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if not FLAGS.config_file:
        raise app.UsageError("--config_file is required")
    # Devices must be configured before anything else touches TensorFlow.
    from trainer import distribution
    distribution.split_cpu(FLAGS.num_cpu_devices)

    from max_deeplab_tf.config import ConfigError
    from max_deeplab_tf.config import load_experiment
    from trainer import train_lib

    try:
        config = load_experiment(FLAGS.config_file, FLAGS.config_override)
    except ConfigError as e:
        logging.error("%s", e)
        print(e, file=sys.stderr)
        sys.exit(2)
    model_dir = FLAGS.model_dir or config.trainer_options.model_dir
    if not model_dir:
        raise app.UsageError(
            "--model_dir is required (or set trainer_options.model_dir in the "
            "config)")
    try:
        train_lib.run_experiment(FLAGS.mode, config, model_dir, tpu=FLAGS.tpu,
                                 num_gpus=FLAGS.num_gpus)
    except train_lib.TrainingStopped as e:
        logging.error("%s", e)
        print(f"ERROR: {e}", file=sys.stderr)
        sys.exit(3)


def run():
    app.run(main)


if __name__ == "__main__":
    run()

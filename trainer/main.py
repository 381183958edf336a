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

Exit codes: 0 done; 2 a bad input (one line naming the file, field or flag;
--verbose adds the traceback); 3 training stopped on purpose (too many
non-finite steps); 1 a bug.
"""

import os

# TensorFlow's C++ logging reads this once, when TensorFlow is first
# imported; nothing above imports it. Level 2 drops INFO and WARNING lines
# (oneDNN, cpu_feature_guard, "Could not find cuda drivers"); see
# cli.without_cuda_probe_error for the ERROR line of a CPU-only host.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import sys  # noqa: E402

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402

from max_deeplab_tf import cli  # noqa: E402

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
cli.define_verbose_flag()

def _start_tensorflow(num_cpu_devices: int, num_gpus: int) -> None:
    """Imports TensorFlow and starts its devices (the CPU split must come
    before anything else touches them); on a CPU-only run (num_gpus == 0)
    without the GPU probe's expected error line, every other line kept.
    Neither TensorFlow's Keras nor orbit's tf_keras loads its optional
    packages (cli.without_optional_keras_packages)."""
    with cli.without_cuda_probe_error(enabled=num_gpus == 0), \
            cli.without_optional_keras_packages():
        import tensorflow as tf  # pylint: disable=import-outside-toplevel
        from trainer import distribution  # pylint: disable=import-outside-toplevel
        tf.config.list_physical_devices()
        distribution.split_cpu(num_cpu_devices)
        import orbit  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    _quiet_library_info()


def _quiet_library_info() -> None:
    """Drops the INFO lines TensorFlow's and orbit's Python code logs
    ("Sharding callback duration", "Customized initialization is done",
    "Sync on async checkpoint saving", ...); their warnings and errors, and
    every line of ours, still show."""
    import logging as std_logging  # pylint: disable=import-outside-toplevel

    import orbit  # pylint: disable=import-outside-toplevel
    import tensorflow as tf  # pylint: disable=import-outside-toplevel

    roots = tuple(os.path.dirname(module.__file__) + os.sep
                  for module in (tf, orbit))
    # TensorFlow's Python files live under tensorflow/python, whatever the
    # path of the package that re-exports them.
    roots += (os.sep + os.path.join("tensorflow", "python") + os.sep,)

    class LibraryInfo(std_logging.Filter):
        def filter(self, record):
            if record.levelno >= std_logging.WARNING:
                return True
            return not any(root in record.pathname for root in roots)

    logging.get_absl_handler().addFilter(LibraryInfo())


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(
            f"unexpected argument(s) {argv[1:]}; every option is a --flag")
    if not FLAGS.config_file:
        raise app.UsageError("--config_file is required")
    if FLAGS.num_cpu_devices < 1:
        raise app.UsageError(
            f"--num_cpu_devices={FLAGS.num_cpu_devices}: expected 1 or more")
    if FLAGS.num_gpus < 0:
        raise app.UsageError(f"--num_gpus={FLAGS.num_gpus}: expected 0 or "
                             "more")
    # Before anything else touches TensorFlow (loading the config imports
    # Keras, which lists the devices).
    _start_tensorflow(FLAGS.num_cpu_devices, FLAGS.num_gpus)
    from max_deeplab_tf.config import load_experiment
    from trainer import train_lib

    config = load_experiment(FLAGS.config_file, FLAGS.config_override,
                             mode=FLAGS.mode)
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
        print(f"error: {cli.one_line(str(e))}", file=sys.stderr, flush=True)
        _exit_now(3)
    _exit_now(0)


def _exit_now(code: int) -> None:
    """Ends the process once run_experiment has returned, skipping the
    interpreter's teardown.

    Measured on a 20-step run of the demo model: 56 s passed between the
    last log line and the exit (0.2 s with this), spent destroying the training input pipeline's iterator (its
    destructor waits for the tf.data worker threads) and then freeing
    every traced graph, memory the OS reclaims at once anyway. Everything
    the run writes is closed by then: checkpoints are written
    synchronously, metrics and exports through closed files, and the
    summary writers were flushed.
    """
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def run():
    cli.run_absl_main(main)


if __name__ == "__main__":
    run()

"""Runs one experiment in a fresh process, for tests that need one.

    python -m tests.trainer.driver --mode=train --model_dir=DIR \
        [--num_cpu_devices=2] [--config_override=...]... [--dump=OUT]

It trains the stand-in pieces of tests/trainer/standins.py. A fresh process
can split the CPU into logical devices, run MultiWorkerMirroredStrategy from
TF_CONFIG, or be killed with SIGKILL.
With --dump it writes the trained weights (by checkpoint key) and the
last losses to OUT.npz / OUT.json.
"""

import io
import json
import os
import sys

from absl import app
from absl import flags

FLAGS = flags.FLAGS
flags.DEFINE_string("mode", "train", "Experiment mode.")
flags.DEFINE_string("model_dir", None, "Model directory.")
flags.DEFINE_multi_string("config_override", [], "Overrides.")
flags.DEFINE_integer("num_cpu_devices", 1, "Logical CPU devices.")
flags.DEFINE_string("dump", None, "Write weights (.npz) and results (.json).")
flags.DEFINE_integer("ballast_mb", 0,
                     "Megabytes of unused model state (slow checkpoint "
                     "writes).")
flags.DEFINE_integer("num_train_examples", 32,
                     "Stand-in training examples (4 = one batch, so every "
                     "step sees the same data).")


def main(argv):
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from trainer import distribution
    distribution.split_cpu(FLAGS.num_cpu_devices)
    import numpy as np
    import tensorflow as tf
    from trainer import train_lib
    from max_deeplab_tf.training import checkpoints

    from tests.trainer import standins
    config = standins.config(*FLAGS.config_override)
    examples = {"train": standins.make_examples(FLAGS.num_train_examples, 0),
                "val": standins.make_examples(6, 1)}
    captured = {}

    def factory():
        captured["model"] = standins.StandinModel(
            ballast_mb=FLAGS.ballast_mb)
        return captured["model"]

    components = standins.components(examples, model_factory=factory)
    result = train_lib.run_experiment(FLAGS.mode, config, FLAGS.model_dir,
                                      components=components)
    if FLAGS.dump:
        model = captured["model"]
        weights = {key: np.asarray(variable.numpy()) for key, variable in
                   checkpoints.variable_keys(model).items()}
        buffer = io.BytesIO()
        np.savez(buffer, **weights)
        with tf.io.gfile.GFile(FLAGS.dump + ".npz", "wb") as f:
            f.write(buffer.getvalue())
        with tf.io.gfile.GFile(FLAGS.dump + ".json", "w") as f:
            json.dump({"global_step": result["global_step"],
                       "train": result["train"], "eval": result["eval"]}, f)
    sys.stdout.flush()


if __name__ == "__main__":
    app.run(main)

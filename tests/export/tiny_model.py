"""The real tiny MaX-DeepLab (configs/testing/tiny.textproto) for export and
predict tests, exported at 33x33 with the confidence thresholds at 0 so that
its random weights still give non-trivial panoptic maps."""

import os

import numpy as np

from tests import conftest

CONFIG = os.path.join(conftest.REPO_ROOT, "configs", "testing",
                      "tiny.textproto")
CROP = (33, 33)
OVERRIDES = (
    f"export_options.crop_size: [{CROP[0]}, {CROP[1]}]",
    "evaluator_options.transformer_class_confidence_threshold: 0.0",
    "evaluator_options.pixel_confidence_threshold: 0.0",
)


def config():
    import max_deeplab_tf
    return max_deeplab_tf.load_experiment(CONFIG, overrides=OVERRIDES)


def build(experiment=None):
    import max_deeplab_tf
    model = max_deeplab_tf.build_model(experiment or config())
    model(np.zeros([1, CROP[0], CROP[1], 3], np.float32), training=False)
    return model

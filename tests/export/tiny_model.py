"""Models for export, Predictor and predict tests.

`build()`: the real tiny MaX-DeepLab (configs/testing/tiny.textproto),
exported at 33x33 with the confidence thresholds at 0 so that its random
weights still give non-trivial panoptic maps.
`mini_model()`: the smallest model with MaX-DeepLab's output dictionary (2
mask slots), seconds faster to export.
`HorizonModel`: no weights to learn; slot 0 covers the rows above a
horizon, slot 1 those below, with fixed classes (e.g. sky over ground), so
that its panoptic maps have a known layout and a non-trivial PQ on the
synthetic dataset.
"""

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


# The weights' seed: unseeded, they depended on what ran before in the same
# test process, and a draw that gave a panoptic map of only two segments on
# the tests' inputs failed a CI run.
SEED = 0


def build(experiment=None):
    import keras

    import max_deeplab_tf
    keras.utils.set_random_seed(SEED)
    model = max_deeplab_tf.build_model(experiment or config())
    model(np.zeros([1, CROP[0], CROP[1], 3], np.float32), training=False)
    return model


def mini_model(num_classes: int = 134):
    """A built MiniModel (random weights) for `num_classes` classes."""
    model = MiniModel(num_classes)
    model(np.zeros([1, CROP[0], CROP[1], 3], np.float32))
    return model


def _keras():
    import keras
    return keras


class MiniModel(_keras().Model):
    """Smallest model with the output dictionary (2 slots)."""

    def __init__(self, num_classes: int = 134):
        super().__init__()
        keras = _keras()
        self.num_classes = num_classes
        self.pool = keras.layers.AveragePooling2D(4, 4, padding="same")
        self.masks = keras.layers.Conv2D(2, 1)
        self.classes = keras.layers.Dense(2 * num_classes)

    def call(self, images, training=False):
        from max_deeplab_tf import common
        keras = _keras()
        x = self.pool(images / 127.5 - 1.0)
        logits = self.classes(keras.ops.mean(x, axis=[1, 2]))
        return {common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: self.masks(x),
                common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: keras.ops.reshape(
                    logits, [-1, 2, self.num_classes])}


class HorizonModel(_keras().Model):
    """Slot 0 (class index `upper`) above row `horizon` (a fraction of the
    height), slot 1 (class index `lower`) below; class indices are the
    transformer's (things first, then stuff; the last one is void)."""

    def __init__(self, num_classes: int, upper: int, lower: int,
                 horizon: float = 0.5):
        super().__init__()
        keras = _keras()
        self.num_classes = num_classes
        self.horizon = horizon
        self.pool = keras.layers.AveragePooling2D(4, 4, padding="same")
        logits = np.full([2, num_classes], -10.0, np.float32)
        logits[0, upper] = logits[1, lower] = 10.0
        self.class_logits = logits

    def call(self, images, training=False):
        from max_deeplab_tf import common
        keras = _keras()
        x = self.pool(images)
        height = keras.ops.shape(x)[1]
        rows = keras.ops.cast(keras.ops.arange(height), "float32")
        rows = rows / keras.ops.cast(height, "float32") - self.horizon
        above = -10.0 * rows[None, :, None, None] + 0.0 * x[..., :1]
        masks = keras.ops.concatenate([above, -above], axis=-1)
        batch = keras.ops.shape(x)[0]
        classes = keras.ops.broadcast_to(
            keras.ops.convert_to_tensor(self.class_logits)[None],
            [batch, 2, self.num_classes])
        return {common.PRED_PIXEL_SPACE_MASK_LOGITS_KEY: masks,
                common.PRED_TRANSFORMER_CLASS_LOGITS_KEY: classes}

"""Helpers of the model tests: the tiny config and a built tiny model."""

import os

import keras
from google.protobuf import text_format

from max_deeplab_tf.protos import config_pb2

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
TINY_CONFIG = os.path.join(REPO_ROOT, "configs", "testing", "tiny.textproto")
FIXTURES = os.path.join(os.path.dirname(REPO_ROOT), "shared", "fixtures")


def tiny_config(*overrides):
    """The tiny ExperimentOptions, with textproto snippets merged in."""
    with open(TINY_CONFIG) as f:
        experiment = text_format.Parse(f.read(), config_pb2.ExperimentOptions())
    for override in overrides:
        text_format.Merge(override, experiment)
    return experiment


def parse_config(text, *overrides):
    experiment = text_format.Parse(text, config_pb2.ExperimentOptions())
    for override in overrides:
        text_format.Merge(override, experiment)
    return experiment


def _zeros(self, shape, dtype=None):
    del self
    return keras.ops.zeros(shape, dtype=dtype or "float32")


def use_zero_initializers(monkeypatch):
    """Makes Keras's random initialisers return zeros (fast large builds
    where only shapes matter)."""
    for cls in (keras.initializers.VarianceScaling,
                keras.initializers.TruncatedNormal,
                keras.initializers.RandomNormal,
                keras.initializers.RandomUniform):
        monkeypatch.setattr(cls, "__call__", _zeros)

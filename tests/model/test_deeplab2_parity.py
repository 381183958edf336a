"""Our model with deeplab2's weights reproduces deeplab2's outputs.

Uses ../shared/fixtures/dl2_max_s_small (a deeplab2 checkpoint of
MaX-DeepLab-S with width multipliers 0.125, its config, an input image and
deeplab2's outputs and encoder endpoints on it) and
../shared/fixtures/dl2_max_l_small_structure (the variable list of the same
for MaX-DeepLab-L). Skipped when the fixtures folder is absent.
"""

import json
import os

import numpy as np
import pytest

import max_deeplab_tf
from max_deeplab_tf.model import deeplab2_variable_map
from max_deeplab_tf.tools import deeplab2_config
from tests.model import helpers

S_FIXTURE = os.path.join(helpers.FIXTURES, "dl2_max_s_small")
L_FIXTURE = os.path.join(helpers.FIXTURES, "dl2_max_l_small_structure")
FLOAT_OUTPUTS = ("semantic_logits", "pixel_space_normalized_feature",
                 "transformer_class_logits", "pixel_space_mask_logits",
                 "semantic_probs")


def _require(folder):
    if not os.path.isdir(folder):
        pytest.skip(f"fixture folder {folder} is absent")


def _build(fixture, size):
    config = deeplab2_config.translate_config_file(
        os.path.join(fixture, "config.textproto")).experiment
    model = max_deeplab_tf.build_model(config)
    model.build((None, size, size, 3))
    return model


@pytest.fixture(scope="module")
def s_model():
    _require(S_FIXTURE)
    model = _build(S_FIXTURE, 129)
    report = deeplab2_variable_map.load_deeplab2_checkpoint(
        model, os.path.join(S_FIXTURE, "ckpt", "ckpt-0"))
    assert report.complete and len(report.loaded) == len(model.weights)
    return model


@pytest.fixture(scope="module")
def s_image():
    _require(S_FIXTURE)
    with np.load(os.path.join(S_FIXTURE, "input.npz")) as data:
        return data["image"][None].astype(np.float32)


def test_outputs_match_deeplab2(s_model, s_image):
    outputs = s_model(s_image, training=False)
    with np.load(os.path.join(S_FIXTURE, "outputs.npz")) as reference:
        for key in FLOAT_OUTPUTS:
            expected = reference[key]
            actual = outputs[key].numpy()
            assert actual.shape == expected.shape, key
            error = np.abs(actual - expected).max()
            print(f"{key}: max abs diff {error:.3g}, "
                  f"max magnitude {np.abs(expected).max():.3g}")
            assert error <= 1e-4 * np.abs(expected).max(), key


def test_encoder_endpoints_match_deeplab2(s_model, s_image):
    endpoints = s_model.encoder(s_image / 127.5 - 1.0, training=False)
    with np.load(os.path.join(S_FIXTURE, "endpoints.npz")) as reference:
        for key in reference.files:
            expected = reference[key]
            actual = endpoints[key].numpy()
            assert actual.shape == expected.shape, key
            error = np.abs(actual - expected).max()
            assert error <= 1e-4 * np.abs(expected).max(), (key, error)


def test_checkpoint_moving_statistics_matter(s_model, s_image):
    # Guards the test above against a vacuous pass: the fixture's batch-norm
    # statistics are far from 0/1, so they must have been loaded.
    variances = [v.numpy() for v in s_model.weights
                 if v.path.endswith("moving_variance")]
    assert max(np.abs(v - 1.0).max() for v in variances) > 0.5


def _fixture_keys(fixture):
    with open(os.path.join(fixture, "variables.json")) as f:
        entries = json.load(f)
    suffix = deeplab2_variable_map.VALUE_SUFFIX
    return {e["name"][:-len(suffix)]: list(e["shape"]) for e in entries
            if e["name"].endswith(suffix) and not e["name"].startswith(
                deeplab2_variable_map.NON_MODEL_PREFIXES)}


def test_max_deeplab_l_maps_onto_every_deeplab2_variable(monkeypatch):
    _require(L_FIXTURE)
    helpers.use_zero_initializers(monkeypatch)
    model = _build(L_FIXTURE, 33)
    mapping = deeplab2_variable_map.deeplab2_variable_map(model)
    theirs = _fixture_keys(L_FIXTURE)
    assert sorted(set(mapping) - set(theirs)) == []
    assert sorted(set(theirs) - set(mapping)) == []
    mismatched = [k for k, v in mapping.items()
                  if list(v.shape) != theirs[k]]
    assert mismatched == []
    assert len(mapping) == len(model.weights)

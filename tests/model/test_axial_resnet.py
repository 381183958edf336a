"""Tests for max_deeplab_tf.model.axial_resnet (the encoder)."""

import keras
import numpy as np
import pytest

from max_deeplab_tf.model import axial_resnet
from max_deeplab_tf.model import backbones


def test_decoder_schedule_of_max_deeplab_s():
    # No stacked decoder: stride 16 -> 8 -> 4, all extra.
    assert list(axial_resnet._decoder_schedule(16, 4, 0, 0)) == [
        (1, 8, 8, False, False, False),
        (2, 4, 4, False, False, True),
    ]


def test_decoder_schedule_of_max_deeplab_l():
    # Hour-glass L = 2: down to 4, up to 16 (end of the backbone stack),
    # down to 4, up to 16, down to 4 -- ten stages, the deepest using the
    # last ResNet stage's width (original input stride 32).
    stages = list(axial_resnet._decoder_schedule(16, 4, 1, 1))
    assert [s[1] for s in stages] == [8, 4, 8, 16, 8, 4, 8, 16, 8, 4]
    assert [s[2] for s in stages] == [8, 4, 8, 32, 8, 4, 8, 32, 8, 4]
    assert [s[3] for s in stages] == [True] * 4 + [False] * 6
    assert [s[4] for s in stages] == [False, False, False, True] + [False] * 6
    assert [s[0] for s in stages if s[5]] == [2, 6, 10]


def test_scale_size():
    assert axial_resnet.scale_size(129, 1 / 16) == 9
    assert axial_resnet.scale_size(641, 1 / 4) == 161


def tiny_encoder(**changes):
    config = backbones.encoder_config("max_deeplab_tiny", num_mask_slots=8)
    config.update(changes)
    return axial_resnet.AxialResNet(name="encoder", **config)


def test_tiny_encoder_endpoints():
    encoder = tiny_encoder()
    x = np.random.RandomState(0).uniform(-1, 1, (2, 65, 65, 3)).astype(
        np.float32)
    endpoints = encoder(x, training=False)
    shapes = {k: tuple(v.shape) for k, v in endpoints.items()}
    assert shapes == {
        "stage1": (2, 33, 33, 16), "res1": (2, 33, 33, 16),
        "stage2": (2, 17, 17, 32), "res2": (2, 17, 17, 32),
        "stage3": (2, 9, 9, 64), "res3": (2, 9, 9, 64),
        "stage4": (2, 5, 5, 128), "res4": (2, 5, 5, 128),
        "stage5": (2, 5, 5, 256), "res5": (2, 5, 5, 256),
        "transformer_class_feature": (2, 8, 64),
        "transformer_mask_feature": (2, 8, 64),
        "feature_panoptic": (2, 17, 17, 32),
        "feature_semantic": (2, 5, 5, 256),
        "backbone_output": (2, 5, 5, 256),
    }
    for key in ("res2", "feature_panoptic", "backbone_output"):
        assert endpoints[key].numpy().min() >= 0.0
    # The memory is one learned [1, N, C] feature tiled over the batch.
    assert tuple(encoder.memory_feature.shape) == (1, 8, 64)
    assert hasattr(encoder, "_stage5_extra")
    assert hasattr(encoder, "_decoder_stage1_extra_resized_fuse")
    assert hasattr(encoder, "_decoder_stage2_extra")


def test_output_stride_32_and_classification_mode():
    encoder = tiny_encoder(output_stride=32)
    x = np.zeros((1, 65, 65, 3), np.float32)
    endpoints = encoder(x, training=False)
    assert endpoints["stage5"].shape == (1, 3, 3, 256)
    assert endpoints["feature_panoptic"].shape == (1, 17, 17, 32)
    assert [e["stride"] for e in encoder._decoder_stages] == [16, 8, 4]
    classifier = tiny_encoder(classification_mode=True,
                              backbone_use_transformer_beyond_stride=0)
    endpoints = classifier(x, training=False)
    assert "feature_panoptic" not in endpoints
    assert endpoints["backbone_output"].shape == (1, 5, 5, 256)
    assert not classifier._use_memory_feature
    assert not [v for v in classifier.weights if "memory" in v.path]


def test_errors():
    with pytest.raises(ValueError, match="static"):
        tiny_encoder()(keras.KerasTensor((1, None, None, 3)))
    with pytest.raises(ValueError, match="output_stride"):
        tiny_encoder(output_stride=12)

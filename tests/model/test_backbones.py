"""Tests for max_deeplab_tf.model.backbones (deeplab2's model instances)."""

import pytest

from max_deeplab_tf.model import backbones


def test_max_deeplab_l_overrides_deeplab2s_defaults():
    s = backbones.encoder_config("max_deeplab_s")
    l = backbones.encoder_config("max_deeplab_l")
    assert s["num_blocks"] == [3, 4, 6, 3] and l["num_blocks"] == [3, 6, 3, 3]
    assert s["backbone_type"] == "resnet_beta"
    assert l["backbone_type"] == "wider_resnet"
    assert (l["backbone_decoder_num_stacks"], l["extra_decoder_num_stacks"],
            l["extra_decoder_blocks_per_stage"]) == (1, 1, 3)
    assert (s["memory_channels"], l["memory_channels"]) == (256, 512)
    assert l["block_group_config"]["axial_layer_config"]["key_expansion"] == 2
    assert l["block_group_config"]["axial_layer_config"]["num_heads"] == 8
    assert s["block_group_config"]["dual_path_transformer_layer_config"][
        "feed_forward_network_channels"] == 2048


def test_backbone_variants_drop_the_transformer():
    for name in ("max_deeplab_s_backbone", "max_deeplab_l_backbone"):
        config = backbones.encoder_config(name)
        assert config["classification_mode"]
        assert config["backbone_use_transformer_beyond_stride"] == 0
    assert backbones.encoder_config("max_deeplab_l_backbone")[
        "backbone_type"] == "wider_resnet"


def test_options_are_applied():
    config = backbones.encoder_config(
        "max_deeplab_tiny", output_stride=32, width_multiplier=2.0,
        stem_width_multiplier=0.5, backbone_layer_multiplier=3.0,
        drop_path_keep_prob=0.7, drop_path_schedule="linear",
        num_mask_slots=50)
    assert config["output_stride"] == 32
    assert config["width_multiplier"] == 0.25      # tiny's 0.125 x 2
    assert config["stem_width_multiplier"] == 0.0625
    assert config["backbone_layer_multiplier"] == 3.0
    assert config["num_mask_slots"] == 50
    assert config["block_group_config"]["drop_path_keep_prob"] == 0.7
    assert config["block_group_config"]["drop_path_schedule"] == "linear"
    with pytest.raises(ValueError, match="unknown backbone"):
        backbones.encoder_config("resnet50")


def test_config_validation_knows_the_same_backbones():
    from max_deeplab_tf.config import validation
    assert set(validation.KNOWN_BACKBONES) == set(backbones.BACKBONE_NAMES)

"""Encoder configurations by backbone name (deeplab2's axial_resnet_instances).

`encoder_config(name, ...)` returns the keyword arguments of AxialResNet for
  max_deeplab_s           ResNet-50-beta, axial attention in the last two
                          stages, dual-path transformer at stride 32, no
                          stacked decoder (MaX-DeepLab-S).
  max_deeplab_l           Wide-ResNet-41, axial attention from stride 16,
                          transformers from stride 16, stacked decoder L = 2
                          (one stack in the backbone, one extra).
  max_deeplab_s_backbone, max_deeplab_l_backbone
                          the same backbones without transformer, memory or
                          extra decoder, for ImageNet-style pretraining.
  max_deeplab_tiny        a narrow MaX-DeepLab-S-like model with one block
                          per stage and a 64-channel memory, for tests and
                          CPU demos (its widths are further scaled by the
                          config's multipliers).
Memory channels, transformer widths and the memory FFN are fixed per model
(not scaled by the width multiplier), as in deeplab2.
"""

import copy
from typing import Any, Dict

BACKBONE_NAMES = ("max_deeplab_s", "max_deeplab_l", "max_deeplab_s_backbone",
                  "max_deeplab_l_backbone", "max_deeplab_tiny")

_DEFAULT = {
    "num_blocks": [3, 4, 6, 3],
    "backbone_layer_multiplier": 1.0,
    "width_multiplier": 1.0,
    "stem_width_multiplier": 1.0,
    "output_stride": 16,
    "classification_mode": False,
    "backbone_type": "resnet_beta",
    "use_axial_beyond_stride": 16,
    "backbone_use_transformer_beyond_stride": 32,
    "extra_decoder_use_transformer_beyond_stride": 32,
    "backbone_decoder_num_stacks": 0,
    "backbone_decoder_blocks_per_stage": 1,
    "extra_decoder_num_stacks": 0,
    "extra_decoder_blocks_per_stage": 1,
    "num_mask_slots": 128,
    "memory_channels": 256,
    "base_transformer_expansion": 1.0,
    "global_feed_forward_network_channels": 256,
    "high_resolution_output_stride": 4,
    "activation": "relu",
    "block_group_config": {
        "attention_bottleneck_expansion": 2,
        "drop_path_keep_prob": 0.8,
        "drop_path_beyond_stride": 16,
        "drop_path_schedule": "constant",
        "axial_layer_config": {
            "key_expansion": 1,
            "value_expansion": 2,
            "num_heads": 8,
            "use_query_rpe_similarity": True,
            "use_key_rpe_similarity": True,
            "use_content_similarity": True,
            "retrieve_value_rpe": True,
            "retrieve_value_content": True,
            "initialization_std_for_query_key_rpe": 1.0,
            "initialization_std_for_value_rpe": 1.0,
            "self_attention_activation": "softmax",
        },
        "dual_path_transformer_layer_config": {
            "num_heads": 8,
            "bottleneck_expansion": 2,
            "key_expansion": 1,
            "value_expansion": 2,
            "feed_forward_network_channels": 2048,
            "use_memory_self_attention": True,
            "use_pixel2memory_feedback_attention": True,
            "transformer_activation": "softmax",
        },
    },
}

_OVERRIDES = {
    "max_deeplab_s": {},
    "max_deeplab_l": {
        "num_blocks": [3, 6, 3, 3],
        "backbone_type": "wider_resnet",
        "backbone_use_transformer_beyond_stride": 16,
        "extra_decoder_use_transformer_beyond_stride": 16,
        "backbone_decoder_num_stacks": 1,
        "extra_decoder_num_stacks": 1,
        "extra_decoder_blocks_per_stage": 3,
        "memory_channels": 512,
        "base_transformer_expansion": 2.0,
        "global_feed_forward_network_channels": 512,
        "block_group_config": {
            "attention_bottleneck_expansion": 4,
            "drop_path_beyond_stride": 4,
            "axial_layer_config": {"key_expansion": 2, "value_expansion": 4},
        },
    },
    "max_deeplab_tiny": {
        "num_blocks": [1, 1, 1, 1],
        "width_multiplier": 0.125,
        "stem_width_multiplier": 0.125,
        "memory_channels": 64,
        "base_transformer_expansion": 0.25,
        "global_feed_forward_network_channels": 64,
        "block_group_config": {
            "dual_path_transformer_layer_config": {
                "num_heads": 4,
                "feed_forward_network_channels": 128,
            },
        },
    },
}
_OVERRIDES["max_deeplab_s_backbone"] = {
    "classification_mode": True,
    "backbone_use_transformer_beyond_stride": 0,
}
_OVERRIDES["max_deeplab_l_backbone"] = dict(
    _OVERRIDES["max_deeplab_l"], classification_mode=True,
    backbone_use_transformer_beyond_stride=0)


def override(config: Dict[str, Any], changes: Dict[str, Any]) -> Dict[str, Any]:
    """Recursively overrides the entries of a nested config dict."""
    result = copy.deepcopy(config)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = override(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def encoder_config(name: str, output_stride: int = 16,
                   width_multiplier: float = 1.0,
                   stem_width_multiplier: float = 1.0,
                   backbone_layer_multiplier: float = 1.0,
                   drop_path_keep_prob: float = 1.0,
                   drop_path_schedule: str = "constant",
                   num_mask_slots: int = 128) -> Dict[str, Any]:
    """AxialResNet keyword arguments of a named backbone.

    Args:
      name: One of BACKBONE_NAMES.
      output_stride: Output stride of the encoder.
      width_multiplier: Multiplies the model's own width multiplier.
      stem_width_multiplier: Multiplies the model's own stem multiplier.
      backbone_layer_multiplier: Multiplies the block counts.
      drop_path_keep_prob: Keep probability at the last stage.
      drop_path_schedule: 'constant' or 'linear'.
      num_mask_slots: N.

    Returns:
      A dict for AxialResNet(**config).

    Raises:
      ValueError: for an unknown name.
    """
    if name not in _OVERRIDES:
        raise ValueError(
            f"unknown backbone {name!r}: expected one of {list(BACKBONE_NAMES)}")
    config = override(_DEFAULT, _OVERRIDES[name])
    config["output_stride"] = int(output_stride)
    config["width_multiplier"] *= float(width_multiplier)
    config["stem_width_multiplier"] *= float(stem_width_multiplier)
    config["backbone_layer_multiplier"] *= float(backbone_layer_multiplier)
    config["num_mask_slots"] = int(num_mask_slots)
    config["block_group_config"]["drop_path_keep_prob"] = float(
        drop_path_keep_prob)
    config["block_group_config"]["drop_path_schedule"] = drop_path_schedule
    return config

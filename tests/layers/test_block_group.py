"""Tests for max_deeplab_tf.layers.block_group: deeplab2's per-block rules."""

import numpy as np
import pytest

from max_deeplab_tf.layers import block_group


def describe(group):
    rows = []
    for block_name, transformer_name in zip(group._block_names,
                                            group._transformer_names):
        block = getattr(group, block_name)
        transformer = (getattr(group, transformer_name)
                       if transformer_name else None)
        rows.append((block.filters_list, block.strides, block.atrous_rate,
                     block.basic_block_second_conv_atrous_rate,
                     block.attention_type, round(block.drop_path_keep_prob, 6),
                     None if transformer is None else (
                         transformer.filters,
                         round(transformer.drop_path_keep_prob, 6))))
    return rows


def test_max_deeplab_s_last_stage_at_output_stride_16():
    # Stage 5 of ResNet-50: input stride 16, stride 2, kept at 16 by atrous
    # rate 2 after the first block; linear drop path 1 - 0.2 * stage / 4
    # with stage = log2(current stride) - 1.
    group = block_group.BlockGroup(
        filters=64, num_blocks=3, original_resnet_stride=2,
        original_resnet_input_stride=16, output_stride=16,
        use_axial_beyond_stride=16, use_transformer_beyond_stride=32,
        drop_path_keep_prob=0.8, drop_path_schedule="linear",
        axial_layer_config={"num_heads": 8}, name="stage5")
    assert describe(group) == [
        ([128, 64, 256], 1, 1, 2, "axial", 0.85, (128, 0.85)),
        ([128, 64, 256], 1, 2, 2, "axial", 0.8, (128, 0.8)),
        ([128, 64, 256], 1, 2, 2, "axial", 0.8, (128, 0.8)),
    ]


def test_max_deeplab_s_stage4_conv_then_axial_blocks():
    group = block_group.BlockGroup(
        filters=32, num_blocks=3, original_resnet_stride=2,
        original_resnet_input_stride=8, output_stride=16,
        use_axial_beyond_stride=16, use_transformer_beyond_stride=32,
        drop_path_keep_prob=0.8, drop_path_schedule="constant",
        name="stage4")
    assert describe(group) == [
        ([32, 32, 128], 2, 1, 1, None, 1.0, None),
        ([64, 32, 128], 1, 1, 1, "axial", 0.8, None),
        ([64, 32, 128], 1, 1, 1, "axial", 0.8, None),
    ]
    assert not group.has_transformer


def test_wide_resnet_blocks():
    basic = block_group.BlockGroup(
        filters=8, num_blocks=2, original_resnet_stride=2,
        original_resnet_input_stride=4, output_stride=16,
        backbone_type="wider_resnet", use_axial_beyond_stride=0,
        use_transformer_beyond_stride=0, drop_path_beyond_stride=4,
        drop_path_keep_prob=0.8, drop_path_schedule="linear", name="stage3")
    # keep = 1 - 0.2 * (log2(4) - 1) / 4 for block 1, then stride 8.
    assert describe(basic) == [
        ([32, 32], 2, 1, 1, None, 0.95, None),
        ([32, 32], 1, 1, 1, None, 0.9, None),
    ]
    last = block_group.BlockGroup(
        filters=8, num_blocks=1, original_resnet_stride=2,
        original_resnet_input_stride=16, output_stride=32,
        backbone_type="wider_resnet", use_axial_beyond_stride=0,
        use_transformer_beyond_stride=0, name="stage5")
    assert describe(last)[0][:5] == ([8, 16, 32], 2, 1, 1, None)


def test_call_shapes_and_memory_requirement():
    group = block_group.BlockGroup(
        filters=8, num_blocks=2, original_resnet_stride=2,
        original_resnet_input_stride=16, output_stride=16,
        use_axial_beyond_stride=16, use_transformer_beyond_stride=16,
        transformer_expansion=0.25,
        dual_path_transformer_layer_config={
            "num_heads": 4, "feed_forward_network_channels": 16},
        name="stage5")
    features = np.random.RandomState(0).normal(
        size=(2, 3, 3, 16)).astype(np.float32)
    memory = np.random.RandomState(1).normal(size=(2, 4, 12)).astype(np.float32)
    out, memory_out = group(features, memory, training=False)
    assert out.shape == (2, 3, 3, 32) and memory_out.shape == (2, 4, 12)
    with pytest.raises(ValueError, match="memory"):
        group(features, None)
    with pytest.raises(ValueError, match="power of 2"):
        block_group.BlockGroup(8, 1, 2, 12)
    with pytest.raises(ValueError, match="backbone_type"):
        block_group.BlockGroup(8, 1, 2, 4, backbone_type="vgg")

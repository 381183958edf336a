"""Builds a MaX-DeepLab model from an ExperimentOptions proto."""

import warnings
from typing import Any, Dict, Optional

import tensorflow as tf

from max_deeplab_tf.model import axial_resnet
from max_deeplab_tf.model import backbones
from max_deeplab_tf.model import max_deeplab

DEFAULT_ATROUS_RATES = (6, 12, 18)


def batch_norm_config_from_options(experiment_options) -> Dict[str, Any]:
    """Batch-norm options from trainer_options.solver_options."""
    solver = experiment_options.trainer_options.solver_options
    return {"momentum": float(solver.batchnorm_momentum),
            "epsilon": float(solver.batchnorm_epsilon),
            "synchronized": bool(solver.use_sync_batchnorm)}


def encoder_config_from_options(experiment_options) -> Dict[str, Any]:
    """AxialResNet keyword arguments from model_options.backbone.

    Raises:
      ValueError: naming the field, for an unknown backbone or an option the
        MaX-DeepLab backbones do not support.
    """
    backbone = experiment_options.model_options.backbone
    name = backbone.name
    if name not in backbones.BACKBONE_NAMES:
        raise ValueError(
            f"model_options.backbone.name: {name!r} is not one of "
            f"{list(backbones.BACKBONE_NAMES)}")
    if backbone.use_squeeze_and_excite:
        raise ValueError(
            "model_options.backbone.use_squeeze_and_excite: squeeze-and-"
            "excitation is not part of MaX-DeepLab; expected false")
    if backbone.use_sac_beyond_stride > 0:
        raise ValueError(
            "model_options.backbone.use_sac_beyond_stride: switchable atrous "
            "convolution is not supported; expected -1 or 0")
    if backbone.output_stride not in (16, 32):
        raise ValueError(
            f"model_options.backbone.output_stride: {backbone.output_stride} "
            "is not 16 or 32")
    if not 0.0 < backbone.drop_path_keep_prob <= 1.0:
        raise ValueError(
            "model_options.backbone.drop_path_keep_prob: "
            f"{backbone.drop_path_keep_prob} is outside (0, 1]")
    for field in ("stem_width_multiplier", "backbone_width_multiplier",
                  "backbone_layer_multiplier"):
        if getattr(backbone, field) <= 0:
            raise ValueError(
                f"model_options.backbone.{field}: {getattr(backbone, field)} "
                "must be positive")
    num_mask_slots = experiment_options.model_options.max_deeplab.num_mask_slots
    if num_mask_slots <= 0:
        raise ValueError(
            f"model_options.max_deeplab.num_mask_slots: {num_mask_slots} must "
            "be positive")
    config = backbones.encoder_config(
        name, output_stride=backbone.output_stride,
        width_multiplier=backbone.backbone_width_multiplier,
        stem_width_multiplier=backbone.stem_width_multiplier,
        backbone_layer_multiplier=backbone.backbone_layer_multiplier,
        drop_path_keep_prob=backbone.drop_path_keep_prob,
        drop_path_schedule=backbone.drop_path_schedule,
        num_mask_slots=num_mask_slots)
    config["batch_norm_config"] = batch_norm_config_from_options(
        experiment_options)
    return config


def _dataset_descriptor(experiment_options):
    from max_deeplab_tf.data import dataset_info

    for field in ("train_dataset_options", "eval_dataset_options"):
        options = getattr(experiment_options, field)
        if experiment_options.HasField(field) and options.dataset:
            return dataset_info.get_dataset_descriptor(options.dataset)
    return None


def _pool_size(experiment_options, output_stride: int) -> Optional[tuple]:
    # deeplab2 pools the ASPP image branch over the training crop's feature.
    crop = list(experiment_options.train_dataset_options.crop_size)
    if len(crop) != 2:
        return None
    return tuple(axial_resnet.scale_size(c, 1.0 / output_stride)
                 for c in crop)


def head_config_from_options(experiment_options,
                             encoder_config: Dict[str, Any]) -> Dict[str, Any]:
    """MaXDeepLabHead keyword arguments from model_options.

    Raises:
      ValueError: naming the field for missing or inconsistent options.
    """
    model_options = experiment_options.model_options
    max_deeplab_options = model_options.max_deeplab
    descriptor = _dataset_descriptor(experiment_options)
    semantic_head = max_deeplab_options.auxiliary_semantic_head
    num_classes = semantic_head.output_channels
    if descriptor is not None:
        if num_classes and num_classes != descriptor.num_classes:
            raise ValueError(
                "model_options.max_deeplab.auxiliary_semantic_head."
                f"output_channels: {num_classes} differs from the "
                f"{descriptor.num_classes} classes (void included) of dataset "
                f"{descriptor.name!r}")
        num_classes = descriptor.num_classes
        ignore_label = descriptor.ignore_label
    else:
        if not num_classes:
            raise ValueError(
                "model_options.max_deeplab.auxiliary_semantic_head."
                "output_channels is unset and no dataset is configured "
                "(train_dataset_options.dataset) to take the class count from")
        ignore_label = 0
    # The transformer predicts thing + stuff classes and void last; void is
    # the ignore label when that is a class index (COCO), else an extra one.
    num_transformer_classes = (num_classes + 1 if ignore_label >= num_classes
                               else num_classes)
    pixel_space_head = max_deeplab_options.pixel_space_head
    if pixel_space_head.output_channels <= 0 or pixel_space_head.head_channels <= 0:
        raise ValueError(
            "model_options.max_deeplab.pixel_space_head: output_channels and "
            "head_channels must be positive, got "
            f"{pixel_space_head.output_channels} and "
            f"{pixel_space_head.head_channels}")
    if semantic_head.head_channels <= 0:
        raise ValueError(
            "model_options.max_deeplab.auxiliary_semantic_head.head_channels "
            f"must be positive, got {semantic_head.head_channels}")

    decoder_config = None
    # With a stacked decoder after the backbone the semantic feature is
    # already at stride 4 and deeplab2 never uses (nor builds) the decoder.
    if not encoder_config["extra_decoder_num_stacks"]:
        decoder = model_options.decoder
        atrous_rates = list(decoder.atrous_rates) or list(DEFAULT_ATROUS_RATES)
        if (not decoder.aspp_use_only_1x1_proj_conv
                and len(atrous_rates) != 3):
            raise ValueError(
                f"model_options.decoder.atrous_rates: {atrous_rates} must "
                "have 3 entries")
        low_level = list(max_deeplab_options.auxiliary_low_level)
        decoder_config = {
            "high_level_feature_name": decoder.feature_key or "feature_semantic",
            "low_level_feature_names": [item.feature_key for item in low_level],
            "low_level_channels_project": [
                item.channels_project for item in low_level],
            "aspp_output_channels": decoder.aspp_channels,
            "decoder_output_channels": decoder.decoder_channels,
            "atrous_rates": atrous_rates,
            "aspp_use_only_1x1_proj_conv": decoder.aspp_use_only_1x1_proj_conv,
            "decoder_conv_type": decoder.decoder_conv_type,
            "pool_size": _pool_size(experiment_options,
                                    encoder_config["output_stride"]),
        }
    return {
        "num_classes": num_classes,
        "num_transformer_classes": num_transformer_classes,
        "pixel_space_head_channels": pixel_space_head.head_channels,
        "pixel_space_dim": pixel_space_head.output_channels,
        "semantic_head_channels": semantic_head.head_channels,
        "decoder_config": decoder_config,
        "head_conv_type": pixel_space_head.head_conv_type,
        "semantic_head_conv_type": semantic_head.head_conv_type,
        "activation": encoder_config["activation"],
        "batch_norm_config": encoder_config["batch_norm_config"],
    }


def build_model(experiment_options, name: Optional[str] = None):
    """Builds the model an ExperimentOptions describes.

    Args:
      experiment_options: A max_deeplab_tf ExperimentOptions proto. Used
        fields: model_options.backbone (name, output_stride, multipliers,
        drop path), model_options.decoder, model_options.max_deeplab (heads,
        auxiliary low-level features, num_mask_slots),
        trainer_options.solver_options (batch norm), and the training
        dataset (class count, ignore label, crop size for the ASPP pooling).
      name: Optional model name.

    Returns:
      A MaXDeepLab keras.Model, or a MaXDeepLabBackbone for the *_backbone
      names. Weights are created on the first call (or model.build()).

    Raises:
      ValueError: naming the config field, for unsupported or inconsistent
        options.
    """
    encoder_config = encoder_config_from_options(experiment_options)
    if encoder_config["classification_mode"]:
        return max_deeplab.MaXDeepLabBackbone(
            encoder_config, name=name or experiment_options.model_options
            .backbone.name)
    head_config = head_config_from_options(experiment_options, encoder_config)
    return max_deeplab.MaXDeepLab(
        encoder_config, head_config, name=name or "max_deeplab")


def build_for_input_size(model, height: int, width: int) -> None:
    """Creates the weights of an image model without running it.

    Keras's build from a shape (`build_from_config`): `model.build()` where
    the model defines it (MaXDeepLab's is a symbolic pass over `call`), a
    symbolic pass over `__call__` otherwise, e.g. for a user's own model.
    Shapes only: for MaX-DeepLab-S at 641x641 an eager forward on zeros took
    5.5 s and raised the peak memory by 0.9 GB, this 3.0 s and 0.4 GB
    (benchmarks/README.md). A model that cannot be built from a shape (its
    call needs values) gets one forward pass on zeros instead.

    Args:
      model: A keras.Model taking [batch, height, width, 3] images.
      height: Image height.
      width: Image width.
    """
    with warnings.catch_warnings():
        # Keras warns when the shape is not enough; the fallback handles it.
        warnings.simplefilter("ignore")
        model.build_from_config({"input_shape": (None, height, width, 3)})
    if not model.built:
        model(tf.zeros([1, height, width, 3]), training=False)

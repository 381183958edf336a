"""Semantic checks of an ExperimentOptions, run after parsing.

Each check returns problems as 'location: field: what is wrong, what was
expected' so that `load_experiment` can report all of them at once.
"""

import math
from typing import Callable, Dict, List, Optional

from google.protobuf import descriptor as descriptor_lib

from max_deeplab_tf.config import textproto
# Plain configuration tables (no TensorFlow): the names the model builds.
from max_deeplab_tf.model import backbones
from max_deeplab_tf.protos import config_pb2

KNOWN_BACKBONES = backbones.BACKBONE_NAMES
KNOWN_OPTIMIZERS = ("adam", "adamw", "sgd", "radam")
KNOWN_LEARNING_POLICIES = ("poly", "cosine")
KNOWN_DROP_PATH_SCHEDULES = ("constant", "linear")
KNOWN_PRECISION_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
KNOWN_STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker_mirrored",
                    "tpu")
KNOWN_SEMANTIC_LOSSES = ("softmax_cross_entropy",)
KNOWN_POST_PROCESSING = ("pixelwise",)


class _Checker:
    """Collects problems, locating each field by where the config set it."""

    def __init__(self, locations: Dict[str, textproto.Location],
                 default_source: str):
        self._locations = locations
        self._default_source = default_source
        self.problems: List[str] = []
        self._reported = set()

    def where(self, path: str) -> str:
        # A field left at its default is reported at its closest set parent.
        probe = path
        while probe:
            if probe in self._locations:
                return str(self._locations[probe])
            probe = probe.rpartition(".")[0]
        return f"{self._default_source} (default)"

    def add(self, path: str, text: str) -> None:
        # One problem per field: a NaN would fail a range check too.
        if path in self._reported:
            return
        self._reported.add(path)
        self.problems.append(f"{self.where(path)}: {path}: {text}")

    def check(self, path: str, ok: bool, text: str) -> None:
        if not ok:
            self.add(path, text)

    def one_of(self, path: str, value: str, allowed) -> None:
        self.check(path, value in allowed,
                   f"{value!r} is not one of {list(allowed)}")

    def unit_interval(self, path: str, value: float) -> None:
        self.check(path, 0.0 <= value <= 1.0,
                   f"{value:.6g} is outside [0, 1]")

    def positive(self, path: str, value) -> None:
        self.check(path, value > 0, f"{value:.6g} must be positive")


_FLOATING_TYPES = (descriptor_lib.FieldDescriptor.CPPTYPE_FLOAT,
                   descriptor_lib.FieldDescriptor.CPPTYPE_DOUBLE)


def _check_finite(checker: _Checker, message, prefix: str = "") -> None:
    """Every float and double field set anywhere in `message` (walked
    through its descriptor, repeated fields included) must be finite:
    text_format accepts nan, inf and -inf, and one of them in a learning
    rate or a loss weight would poison training."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.cpp_type == descriptor_lib.FieldDescriptor.CPPTYPE_MESSAGE:
            for child in (value if field.is_repeated else [value]):
                _check_finite(checker, child, path + ".")
        elif field.cpp_type in _FLOATING_TYPES:
            values = list(value) if field.is_repeated else [value]
            bad = [v for v in values if not math.isfinite(v)]
            if bad:
                checker.add(path, f"{bad[0]} is not a finite number; "
                                  "expected a finite value")


def _check_crop(checker: _Checker, path: str, crop, output_stride: int,
                required: bool) -> None:
    if not crop:
        checker.check(path, not required,
                      "must be set as [crop_height, crop_width]")
        return
    if len(crop) != 2:
        checker.add(path, f"{list(crop)} must have 2 values "
                          "[crop_height, crop_width]")
        return
    for size in crop:
        if size <= 0 or (size - 1) % output_stride:
            checker.add(
                path, f"{list(crop)}: each size must be k * output_stride + 1 "
                      f"with output_stride {output_stride} (e.g. "
                      f"{output_stride * 2 + 1}, {output_stride * 4 + 1})")
            return


def _check_dataset(checker: _Checker, prefix: str,
                   options, output_stride: int, training: bool,
                   describe: Callable[[str], Optional[object]]) -> None:
    if not options.dataset:
        checker.add(f"{prefix}.dataset",
                    "must name a built-in dataset or a descriptor JSON path")
    elif describe(options.dataset) is None and not (
            options.dataset.endswith(".json") or "${" in options.dataset):
        checker.add(f"{prefix}.dataset",
                    f"{options.dataset!r} is neither a built-in dataset nor "
                    "a path ending in .json")
    checker.check(f"{prefix}.file_pattern", len(options.file_pattern) > 0,
                  "must list at least one tfrecord file pattern")
    checker.positive(f"{prefix}.batch_size", options.batch_size)
    checker.positive(f"{prefix}.max_thing_id", options.max_thing_id)
    _check_crop(checker, f"{prefix}.crop_size", options.crop_size,
                output_stride, required=True)
    aug = options.augmentations
    if training and options.HasField("augmentations"):
        checker.positive(f"{prefix}.augmentations.min_scale_factor",
                         aug.min_scale_factor)
        checker.check(f"{prefix}.augmentations.max_scale_factor",
                      aug.max_scale_factor >= aug.min_scale_factor,
                      f"{aug.max_scale_factor} is below min_scale_factor "
                      f"{aug.min_scale_factor}")
        checker.check(f"{prefix}.augmentations.scale_factor_step_size",
                      aug.scale_factor_step_size >= 0,
                      f"{aug.scale_factor_step_size} must not be negative")
        checker.unit_interval(f"{prefix}.augmentations.flip_probability",
                              aug.flip_probability)


def validate(experiment: config_pb2.ExperimentOptions,
             locations: Dict[str, textproto.Location],
             source: str) -> List[str]:
    """Returns every semantic problem of `experiment` (empty if none)."""
    from max_deeplab_tf.data import dataset_info

    checker = _Checker(locations, source)
    _check_finite(checker, experiment)
    model = experiment.model_options
    backbone = model.backbone
    output_stride = backbone.output_stride
    checker.one_of("model_options.backbone.name", backbone.name,
                   KNOWN_BACKBONES)
    checker.check("model_options.backbone.output_stride",
                  output_stride in (16, 32),
                  f"{output_stride} is not 16 or 32")
    keep = backbone.drop_path_keep_prob
    checker.check("model_options.backbone.drop_path_keep_prob",
                  0.0 < keep <= 1.0, f"{keep} is outside (0, 1]")
    checker.one_of("model_options.backbone.drop_path_schedule",
                   backbone.drop_path_schedule, KNOWN_DROP_PATH_SCHEDULES)
    for name in ("stem_width_multiplier", "backbone_width_multiplier",
                 "backbone_layer_multiplier"):
        checker.positive(f"model_options.backbone.{name}",
                         getattr(backbone, name))

    descriptor = None
    if experiment.HasField("train_dataset_options"):
        descriptor = dataset_info.maybe_get(
            experiment.train_dataset_options.dataset)
    max_deeplab = model.max_deeplab
    checker.check("model_options.max_deeplab",
                  model.HasField("max_deeplab"),
                  "must be set (the only meta architecture)")
    checker.positive("model_options.max_deeplab.num_mask_slots",
                     max_deeplab.num_mask_slots)
    checker.positive("model_options.max_deeplab.pixel_space_head."
                     "output_channels",
                     max_deeplab.pixel_space_head.output_channels)
    semantic_classes = max_deeplab.auxiliary_semantic_head.output_channels
    checker.positive(
        "model_options.max_deeplab.auxiliary_semantic_head.output_channels",
        semantic_classes)
    if descriptor is not None and semantic_classes > 0:
        checker.check(
            "model_options.max_deeplab.auxiliary_semantic_head."
            "output_channels",
            semantic_classes == descriptor.num_classes,
            f"{semantic_classes} differs from the {descriptor.num_classes} "
            f"classes (void included) of dataset {descriptor.name!r}")

    trainer = experiment.trainer_options
    solver = trainer.solver_options
    for name in ("steps_per_loop", "save_checkpoints_steps",
                 "save_summaries_steps", "num_checkpoints_to_keep",
                 "max_consecutive_nonfinite_steps"):
        checker.positive(f"trainer_options.{name}", getattr(trainer, name))
    checker.one_of("trainer_options.mixed_precision_policy",
                   trainer.mixed_precision_policy, KNOWN_PRECISION_POLICIES)
    checker.one_of("trainer_options.distribution_strategy",
                   trainer.distribution_strategy, KNOWN_STRATEGIES)
    checker.one_of("trainer_options.solver_options.optimizer",
                   solver.optimizer, KNOWN_OPTIMIZERS)
    checker.one_of("trainer_options.solver_options.learning_policy",
                   solver.learning_policy, KNOWN_LEARNING_POLICIES)
    checker.positive("trainer_options.solver_options.base_learning_rate",
                     solver.base_learning_rate)
    checker.positive("trainer_options.solver_options.training_number_of_steps",
                     solver.training_number_of_steps)
    checker.check("trainer_options.solver_options.warmup_steps",
                  solver.warmup_steps >= 0,
                  f"{solver.warmup_steps} must not be negative")
    checker.check("trainer_options.solver_options.weight_decay",
                  solver.weight_decay >= 0,
                  f"{solver.weight_decay} must not be negative")
    checker.positive(
        "trainer_options.solver_options.backbone_learning_rate_multiplier",
        solver.backbone_learning_rate_multiplier)
    checker.unit_interval("trainer_options.solver_options.adam_beta_1",
                          solver.adam_beta_1)
    checker.unit_interval("trainer_options.solver_options.adam_beta_2",
                          solver.adam_beta_2)
    checker.unit_interval(
        "trainer_options.solver_options.lookahead_slow_step_size",
        solver.lookahead_slow_step_size)
    checker.check("trainer_options.solver_options.lookahead_sync_period",
                  solver.lookahead_sync_period >= 0,
                  f"{solver.lookahead_sync_period} must not be negative")
    losses = trainer.loss_options
    checker.unit_interval("trainer_options.loss_options.pq_style_loss_alpha",
                          losses.pq_style_loss_alpha)
    checker.positive(
        "trainer_options.loss_options.instance_discrimination_temperature",
        losses.instance_discrimination_temperature)
    if losses.HasField("semantic_loss"):
        checker.one_of("trainer_options.loss_options.semantic_loss.name",
                       losses.semantic_loss.name, KNOWN_SEMANTIC_LOSSES)
    for name in ("semantic_loss", "pq_style_loss",
                 "mask_id_cross_entropy_loss",
                 "instance_discrimination_loss"):
        if losses.HasField(name):
            weight = getattr(losses, name).weight
            checker.check(f"trainer_options.loss_options.{name}.weight",
                          weight >= 0, f"{weight} must not be negative")

    if experiment.HasField("train_dataset_options"):
        _check_dataset(checker, "train_dataset_options",
                       experiment.train_dataset_options, output_stride,
                       training=True, describe=dataset_info.maybe_get)
    if experiment.HasField("eval_dataset_options"):
        _check_dataset(checker, "eval_dataset_options",
                       experiment.eval_dataset_options, output_stride,
                       training=False, describe=dataset_info.maybe_get)

    evaluator = experiment.evaluator_options
    checker.unit_interval(
        "evaluator_options.transformer_class_confidence_threshold",
        evaluator.transformer_class_confidence_threshold)
    checker.unit_interval("evaluator_options.pixel_confidence_threshold",
                          evaluator.pixel_confidence_threshold)
    checker.check("evaluator_options.thing_area_limit",
                  evaluator.thing_area_limit >= 0,
                  f"{evaluator.thing_area_limit} must not be negative")
    checker.check("evaluator_options.stuff_area_limit",
                  evaluator.stuff_area_limit >= 0,
                  f"{evaluator.stuff_area_limit} must not be negative")
    checker.one_of("evaluator_options.transformer_post_processing",
                   evaluator.transformer_post_processing,
                   KNOWN_POST_PROCESSING)
    _check_crop(checker, "export_options.crop_size",
                experiment.export_options.crop_size, output_stride,
                required=False)
    return checker.problems

"""The training and evaluation input pipeline (deeplab2's, for MaX-DeepLab).

`build_dataset(dataset_options, is_training, input_context)` reads tfrecord
shards in deeplab2's layout (max_deeplab_tf.data.tfrecord) and yields batches
of dicts with static shapes ([B, crop_height, crop_width] etc.), keys from
max_deeplab_tf.common:

  image                 float32 [B, H, W, 3], 0..255 (padding: 127.5)
  panoptic_gt           int32 [B, H, W], semantic * label_divisor + instance;
                        void and padding ignore_label * label_divisor, stuff
                        instance 0, crowd things instance 0
  semantic_gt           int32 [B, H, W], void ignore_label (crowd keeps its
                        class, as in deeplab2)
  thing_id_mask         int32 [B, H, W], 0..max_thing_id-1 per non-crowd
                        thing instance (numbered in order of first pixel in
                        raster order, as deeplab2), -1 elsewhere
  thing_id_class        int32 [B, max_thing_id], semantic class of each
                        thing id, -1 for unused ids
  semantic_loss_weight  float32 [B, H, W]: 1, or small_instance_weight on
                        instances smaller than small_instance_threshold
                        pixels when increase_small_instance_weights; 0 on
                        void (the losses also mask void themselves)
  image_name, gt_size_raw  (evaluation only) string [B], int32 [B, 2]

The thing-id targets are produced whatever DatasetOptions.
thing_id_mask_annotations says (MaX-DeepLab's losses need them; the flag is
accepted for deeplab2 config compatibility).

Augmentation (training) is deeplab2's: resize to range, random scale,
AutoAugment when augmentations.autoaugment_policy_name is set
(max_deeplab_tf.data.autoaugment), pad by the ignore label and random crop
to crop_size, horizontal flip.
Evaluation resizes (max_resize_value defaults to crop_size) and pads at the
bottom and right.

Images with more than max_thing_id thing instances are handled without
failing: deeplab2 stops with an assertion there, we keep the first
max_thing_id instances (in deeplab2's order) as masks and treat the rest like
crowd (no mask, semantic loss only). Such images are counted
(`thing_overflow_count()`) and logged as warnings.
"""

import threading
from typing import Dict, List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from max_deeplab_tf import cli
from max_deeplab_tf import common
from max_deeplab_tf.data import autoaugment
from max_deeplab_tf.data import dataset_info
from max_deeplab_tf.data import preprocessing
from max_deeplab_tf.data import shards
from max_deeplab_tf.data import tfrecord

_overflow_lock = threading.Lock()
_overflow = {"images": 0, "dropped_instances": 0}


def thing_overflow_count() -> Dict[str, int]:
    """Images seen with more thing instances than max_thing_id, and the
    number of instances left without a mask, since the last reset."""
    with _overflow_lock:
        return dict(_overflow)


def reset_thing_overflow_count() -> None:
    with _overflow_lock:
        _overflow["images"] = 0
        _overflow["dropped_instances"] = 0


def _record_overflow(name, num_instances, max_thing_id):
    name = name.numpy().decode("utf-8", "replace")
    num_instances = int(num_instances.numpy())
    max_thing_id = int(max_thing_id.numpy())
    with _overflow_lock:
        _overflow["images"] += 1
        _overflow["dropped_instances"] += num_instances - max_thing_id
        count = _overflow["images"]
    # The first few, then every 100th, so that a bad dataset is noticed
    # without flooding the log.
    if count <= 5 or count % 100 == 0:
        logging.warning(
            "Image %r has %d thing instances, more than max_thing_id=%d: the "
            "last %d (in raster order of first pixel) get no mask and are "
            "trained like crowd. %d image(s) so far; raise "
            "DatasetOptions.max_thing_id (and num_mask_slots) if this is "
            "frequent.", name, num_instances, max_thing_id,
            num_instances - max_thing_id, count)
    return np.int32(0)


def panoptic_targets(panoptic: tf.Tensor, descriptor,
                     max_thing_id: int = 128,
                     small_instance_threshold: Optional[int] = None,
                     small_instance_weight: float = 1.0,
                     image_name: Optional[tf.Tensor] = None,
                     count_overflow: bool = True) -> Dict[str, tf.Tensor]:
    """deeplab2's sample-generator targets from one panoptic label.

    Args:
      panoptic: int32 [H, W], semantic * label_divisor + instance.
      descriptor: dataset_info.DatasetDescriptor.
      max_thing_id: Size of thing_id_class.
      small_instance_threshold: Instances with fewer pixels get
        small_instance_weight in the semantic loss weight; None disables.
      small_instance_weight: See above.
      image_name: Scalar string, for messages.
      count_overflow: Count and log images with > max_thing_id instances
        (a Python callback, run only for such images).

    Returns:
      dict with common.GT_PANOPTIC_KEY, GT_SEMANTIC_KEY, GT_THING_ID_MASK_KEY,
      GT_THING_ID_CLASS_KEY, SEMANTIC_LOSS_WEIGHT_KEY (see module doc).

    Raises (at run time):
      InvalidArgumentError: naming the image, when a label value is
        negative or its class is not below descriptor.num_classes.
    """
    if image_name is None:
        image_name = tf.constant("")
    divisor = descriptor.label_divisor
    ignore = descriptor.ignore_label
    panoptic = tf.cast(panoptic, tf.int32)
    shape = tf.shape(panoptic)
    # Everything is decided per distinct label value, then gathered back to
    # pixels: a few hundred values instead of H * W pixels. tf.unique keeps
    # the order of first occurrence in raster order, deeplab2's thing order.
    values, index, counts = tf.unique_with_counts(tf.reshape(panoptic, [-1]))
    semantic = values // divisor
    check = tf.debugging.Assert(
        tf.logical_and(tf.reduce_min(values) >= 0,
                       tf.reduce_max(semantic) < descriptor.num_classes),
        ["image", image_name, ": panoptic label has a negative value or a "
         "class outside [0, num_classes) of dataset", descriptor.name,
         "(num_classes, label_divisor):", descriptor.num_classes, divisor,
         "; smallest value, largest class:", tf.reduce_min(values),
         tf.reduce_max(semantic),
         ". Wrong dataset descriptor or label divisor for these shards?"])
    with tf.control_dependencies([check]):
        semantic = tf.identity(semantic)
    is_thing_table = np.zeros([descriptor.num_classes], bool)
    is_thing_table[list(descriptor.thing_class_ids)] = True
    is_thing = tf.gather(tf.constant(is_thing_table), semantic)
    # Stuff and void carry no instance, whatever the record says.
    canonical = tf.where(is_thing, values, semantic * divisor)
    is_instance = tf.logical_and(is_thing, values - semantic * divisor > 0)
    rank = tf.cumsum(tf.cast(is_instance, tf.int32)) - 1
    slot = tf.where(tf.logical_and(is_instance, rank < max_thing_id),
                    rank, -1)
    valid = slot >= 0
    thing_id_class = tf.tensor_scatter_nd_update(
        tf.fill([max_thing_id], -1),
        tf.boolean_mask(slot, valid)[:, tf.newaxis],
        tf.boolean_mask(semantic, valid))

    num_instances = tf.reduce_sum(tf.cast(is_instance, tf.int32))
    if count_overflow:
        overflow = tf.cond(
            num_instances > max_thing_id,
            lambda: tf.py_function(
                _record_overflow,
                [image_name, num_instances, tf.constant(max_thing_id)],
                tf.int32),
            lambda: tf.constant(0))
        with tf.control_dependencies([overflow]):
            slot = tf.identity(slot)

    weight = tf.cast(tf.not_equal(semantic, ignore), tf.float32)
    if small_instance_threshold:
        small = tf.logical_and(is_instance, counts < small_instance_threshold)
        weight *= tf.where(small, tf.cast(small_instance_weight, tf.float32),
                           1.0)

    def per_pixel(per_value):
        return tf.reshape(tf.gather(per_value, index), shape)

    panoptic = per_pixel(canonical)
    semantic = per_pixel(semantic)
    thing_id_mask = per_pixel(slot)
    weight = per_pixel(weight)
    return {
        common.GT_PANOPTIC_KEY: panoptic,
        common.GT_SEMANTIC_KEY: semantic,
        common.GT_THING_ID_MASK_KEY: thing_id_mask,
        common.GT_THING_ID_CLASS_KEY: thing_id_class,
        common.SEMANTIC_LOSS_WEIGHT_KEY: weight,
    }


class SampleGenerator:
    """Decoded record -> training/evaluation sample (deeplab2's
    PanopticSampleGenerator with thing_id_mask_annotations)."""

    def __init__(self, descriptor, is_training: bool,
                 crop_size: Sequence[int],
                 min_resize_value: Optional[Sequence[int]] = None,
                 max_resize_value: Optional[Sequence[int]] = None,
                 resize_factor: Optional[int] = None,
                 min_scale_factor: float = 1.0,
                 max_scale_factor: float = 1.0,
                 scale_factor_step_size: float = 0.0,
                 flip_probability: float = 0.5,
                 max_thing_id: int = 128,
                 small_instance_threshold: Optional[int] = None,
                 small_instance_weight: float = 1.0,
                 count_overflow: bool = True,
                 autoaugment_policy_name: Optional[str] = None):
        """See preprocessing.preprocess and panoptic_targets for the args;
        autoaugment_policy_name names a policy of data.autoaugment (deeplab2's
        names), applied in training only.

        Raises:
          ValueError: on a crop_size that is not [height, width], a bad
            resize value or scale range, or max_thing_id < 1.
        """
        crop = preprocessing.resize_value(crop_size, "crop_size")
        if crop is None or len(tuple(crop_size)) != 2:
            raise ValueError(f"crop_size must be [crop_height, crop_width] "
                             f"with positive values, got {list(crop_size)}")
        if max_thing_id < 1:
            raise ValueError(f"max_thing_id must be positive, got "
                             f"{max_thing_id}")
        self._descriptor = descriptor
        self._is_training = is_training
        self._crop = crop
        self._min_resize = preprocessing.resize_value(min_resize_value,
                                                      "min_resize_value")
        self._max_resize = preprocessing.resize_value(max_resize_value,
                                                      "max_resize_value")
        limit = self._max_resize or (None if is_training else crop)
        if limit and (limit[0] > crop[0] or limit[1] > crop[1]):
            raise ValueError(f"max_resize_value {list(limit)} exceeds "
                             f"crop_size {list(crop)}")
        self._resize_factor = resize_factor or None
        if is_training and not (
                0 <= min_scale_factor <= max_scale_factor and
                scale_factor_step_size >= 0):
            raise ValueError(
                f"scale range min {min_scale_factor}, max {max_scale_factor}, "
                f"step {scale_factor_step_size} is invalid")
        self._scale = (min_scale_factor, max_scale_factor,
                       scale_factor_step_size)
        self._flip_probability = flip_probability
        self._max_thing_id = max_thing_id
        self._small = (small_instance_threshold, small_instance_weight)
        self._count_overflow = count_overflow
        self._autoaugment = None
        if is_training and autoaugment_policy_name:
            # Geometric operations fill the label as padding does.
            self._autoaugment = autoaugment.AutoAugment(
                autoaugment_policy_name,
                label_fill_value=(descriptor.ignore_label *
                                  descriptor.label_divisor))

    def __call__(self, decoded: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
        """Args: the output of tfrecord.decode_example. Returns: a sample."""
        label = decoded.get("label")
        if self._is_training and label is None:
            raise ValueError("training needs ground-truth labels")
        ignore_value = (self._descriptor.ignore_label *
                        self._descriptor.label_divisor)
        image, label = preprocessing.preprocess(
            decoded["image"], label, self._crop, self._is_training,
            ignore_value, self._min_resize, self._max_resize,
            self._resize_factor, *self._scale,
            flip_probability=self._flip_probability,
            augment_fn=self._autoaugment)
        sample = {common.IMAGE: image}
        if label is not None:
            sample.update(panoptic_targets(
                label, self._descriptor, self._max_thing_id,
                self._small[0], self._small[1], decoded["image_name"],
                self._count_overflow))
        if not self._is_training:
            sample[common.IMAGE_NAME] = decoded["image_name"]
            sample[common.GT_SIZE_RAW] = tf.stack(
                [decoded["height"], decoded["width"]])
        return sample


def list_files(file_patterns: Sequence[str]) -> List[str]:
    """Sorted files matching the patterns (see shards.resolve).

    Raises:
      cli.UserError: naming the pattern that matches nothing or whose
        shards are not one complete set.
    """
    return [f.path for f in shards.resolve(file_patterns)]


def check_not_empty(dataset_options, is_training: bool = True,
                    drop_remainder: bool = True,
                    field: str = "file_pattern") -> List[shards.ShardFile]:
    """Raises unless the dataset would yield at least one batch.

    Cheap (a glob, file sizes and, when partial batches are dropped in
    evaluation, the frames of at most batch_size records). `build_dataset`
    calls it before anything repeats, so an empty dataset fails at start-up
    instead of a training loop waiting forever for its first batch.

    Args:
      dataset_options: DatasetOptions proto (file_pattern, batch_size).
      is_training: Training repeats the records: one suffices.
      drop_remainder: In evaluation, a batch needs batch_size records.
      field: How messages name the file_pattern field, e.g.
        'train_dataset_options.file_pattern'.

    Returns:
      The files of the dataset (shards.resolve).

    Raises:
      cli.UserError: naming the file pattern (see shards.resolve too).
    """
    batch_size = dataset_options.batch_size
    if batch_size < 1:
        raise cli.UserError(f"batch_size: {batch_size}; expected a positive "
                            "number")
    patterns = list(dataset_options.file_pattern)
    files = shards.resolve(patterns, field)
    shards.check_not_empty(
        files, patterns,
        batch_size if drop_remainder and not is_training else 1, field)
    return files


def generator_from_options(dataset_options, is_training: bool,
                           descriptor=None,
                           count_overflow: bool = True) -> SampleGenerator:
    """A SampleGenerator configured by a DatasetOptions proto.

    Raises:
      ValueError: on options this pipeline does not support (video frames),
        an unknown AutoAugment policy or invalid sizes.
    """
    options = dataset_options
    if descriptor is None:
        descriptor = dataset_info.get_dataset_descriptor(options.dataset)
    aug = options.augmentations
    unsupported = []
    if options.use_two_frames:
        unsupported.append("use_two_frames")
    if options.use_next_frame:
        unsupported.append("use_next_frame")
    if unsupported:
        raise ValueError(f"dataset options {unsupported} are not supported "
                         "by max_deeplab_tf's input pipeline (image panoptic "
                         "segmentation only)")
    small_threshold = (options.small_instance_threshold
                       if options.increase_small_instance_weights else None)
    return SampleGenerator(
        descriptor, is_training, list(options.crop_size),
        min_resize_value=list(options.min_resize_value),
        max_resize_value=list(options.max_resize_value),
        resize_factor=options.resize_factor or None,
        min_scale_factor=aug.min_scale_factor,
        max_scale_factor=aug.max_scale_factor,
        scale_factor_step_size=aug.scale_factor_step_size,
        flip_probability=aug.flip_probability,
        max_thing_id=options.max_thing_id,
        small_instance_threshold=small_threshold,
        small_instance_weight=options.small_instance_weight,
        count_overflow=count_overflow,
        autoaugment_policy_name=aug.autoaugment_policy_name or None)


def build_dataset(dataset_options, is_training: bool,
                  input_context: Optional[tf.distribute.InputContext] = None,
                  descriptor=None, drop_remainder: bool = True,
                  count_overflow: bool = True) -> tf.data.Dataset:
    """The input pipeline of one replica group.

    Args:
      dataset_options: DatasetOptions proto (dataset, file_pattern,
        batch_size (global), crop_size, resize and augmentation options,
        max_thing_id, small-instance weights, shuffle_buffer_size,
        cycle_length).
      is_training: Training: files shuffled, repeated forever, records
        interleaved from cycle_length files and shuffled, augmentation.
        Evaluation: one pass in file order, no augmentation.
      input_context: With several input pipelines, each reads its share
        of the files (or of the records, when there are fewer files than
        pipelines); batches are per replica (global / replicas).
      descriptor: Overrides the descriptor named by dataset_options.dataset.
      drop_remainder: Drop the last partial batch, so that the batch
        dimension is static too (deeplab2 does so in training and
        evaluation).
      count_overflow: See panoptic_targets.

    Returns:
      tf.data.Dataset of dicts (see the module docstring).

    Raises:
      ValueError: on unsupported options or a batch size that the replicas
        do not divide.
      cli.UserError: naming the file pattern, when it matches no file, its
        shards are not one complete set, or the dataset is empty (no
        record; in evaluation with drop_remainder, fewer records than
        batch_size). At run time, a truncated or corrupt shard raises
        InvalidArgumentError naming the file.
    """
    options = dataset_options
    generator = generator_from_options(options, is_training, descriptor,
                                       count_overflow)
    decode_label = options.decode_groundtruth_label
    if is_training and not decode_label:
        raise ValueError("decode_groundtruth_label must be true for training")
    # Before any repeat(): a training pipeline over empty files would wait
    # forever for its first record.
    files = check_not_empty(options, is_training, drop_remainder)
    batch_size = options.batch_size
    autotune = tf.data.AUTOTUNE
    num_pipelines, pipeline_id = 1, 0
    if input_context is not None:
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id

    # Each file is checked whole as it is read: a truncated or corrupt
    # shard stops the input with an error naming it.
    dataset, shard_files = shards.read_records(
        files, is_training, options.cycle_length, num_pipelines, pipeline_id)
    if num_pipelines > 1 and not shard_files:
        dataset = dataset.shard(num_pipelines, pipeline_id)
    if is_training and options.shuffle_buffer_size > 1:
        dataset = dataset.shuffle(options.shuffle_buffer_size)

    def parse(serialized):
        return generator(tfrecord.decode_example(serialized, decode_label))

    dataset = dataset.map(parse, num_parallel_calls=autotune,
                          deterministic=not is_training)
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    return dataset.prefetch(autotune)

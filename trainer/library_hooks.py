"""The trainer's bindings to max_deeplab_tf's inference, evaluation, export
and data preparation (see train_lib.Components)."""

from absl import logging
import tensorflow as tf

from max_deeplab_tf import common
from trainer import evaluator as evaluator_lib


def eval_hooks(config, descriptor) -> evaluator_lib.EvalHooks:
    """Post-processing and streaming PQ for the evaluator."""
    from max_deeplab_tf.evaluation import streaming
    from max_deeplab_tf.inference import PostProcessor

    processor = PostProcessor(config.evaluator_options, descriptor)

    def post_process(outputs, inputs):
        # Predict at the size of the ground truth the batch carries.
        size = inputs[common.GT_PANOPTIC_KEY].shape[1:3]
        return processor(outputs,
                         output_size=list(size) if None not in size else None)

    def pq_result(sums):
        return streaming.result_from_statistics(sums, descriptor)

    from max_deeplab_tf.training import visualization
    return evaluator_lib.EvalHooks(
        post_process=post_process,
        pq_statistics=streaming.statistics_fn(descriptor),
        pq_result=pq_result,
        draw_panels=visualization.panels_fn(descriptor))


def export(config, model, export_dir, global_step):
    """Version `global_step` of the export root export_dir (a SavedModel with
    the serving signature of max_deeplab_tf.export); returns its folder."""
    from max_deeplab_tf import export as export_lib

    return export_lib.export_saved_model(model, config, export_dir,
                                         global_step)


def prepare_synthetic_data(config) -> None:
    """Makes trainer_options.synthetic_data's dataset and shards if absent.

    Each step is skipped when its output exists (the generator writes each
    split's JSON last, the converter renames complete shards into place).
    """
    if not config.trainer_options.HasField("synthetic_data"):
        return
    options = config.trainer_options.synthetic_data
    if not options.coco_dir or not options.shard_dir:
        from max_deeplab_tf import cli
        raise cli.UserError(
            "trainer_options.synthetic_data: needs coco_dir and shard_dir")
    from max_deeplab_tf.data import build_coco_panoptic
    from max_deeplab_tf.data import synthetic

    coco_dir, shard_dir = options.coco_dir, options.shard_dir
    if not synthetic.dataset_exists(coco_dir):
        logging.info("Making the synthetic dataset in %s (%d train, %d val "
                     "images of %dx%d)", coco_dir, options.num_train_images,
                     options.num_val_images, options.image_size,
                     options.image_size)
        synthetic.generate(coco_dir, options.num_train_images,
                           options.num_val_images, options.image_size,
                           options.seed)
    for split in ("train", "val"):
        shards = [build_coco_panoptic.shard_path(shard_dir, split, i,
                                                 options.num_shards)
                  for i in range(options.num_shards)]
        if all(tf.io.gfile.exists(path) for path in shards):
            continue
        logging.info("Converting the synthetic %s split to %d shards in %s",
                     split, options.num_shards, shard_dir)
        build_coco_panoptic.convert(coco_dir, split, shard_dir,
                                    num_shards=options.num_shards)


def check_data(dataset_options, field: str, is_training: bool) -> None:
    """Fails fast, in one line, on data that cannot feed the run: a pattern
    that matches no file, an incomplete shard set, or shards holding no
    example (an empty training set would make the repeated pipeline wait
    forever). See input_pipeline.check_not_empty.

    Raises:
      cli.UserError: naming `field`.file_pattern.
    """
    from max_deeplab_tf.data import input_pipeline

    # Evaluation keeps a last partial batch (except on TPUs, whose check at
    # pipeline construction covers that case).
    input_pipeline.check_not_empty(dataset_options, is_training,
                                   drop_remainder=False,
                                   field=f"{field}.file_pattern")

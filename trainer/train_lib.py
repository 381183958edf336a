"""Runs an experiment: strategy, model, optimizer, checkpoints, orbit.

`run_experiment(mode, config, model_dir, ...)` is what `trainer.main` calls.
The library pieces it wires together are collected in `Components` so that
tests can substitute small stand-ins; by default they are max_deeplab_tf's
model, loss, input pipeline, post-processing, PQ and export.

Checkpoints (MODEL_DIR/ckpt-STEP) hold the model (through
max_deeplab_tf.training.checkpoints.model_view, which also saves layers that
Keras 3 keeps in lists), the optimizer(s) with their slots and step
counters, the global step and the train-step state (loss scale, non-finite
counters). They are written every `save_checkpoints_steps` and at the end;
TensorFlow writes the data files first and then replaces the `checkpoint`
index file atomically, so a process killed at any moment leaves the previous
checkpoint intact, and re-running the same command resumes from it.

Input position on resume: the input pipeline is re-created, so after a
restart the shards are read again from a fresh shuffle: the model sees a new
random draw of the data rather than replaying exactly the examples the
killed run would have seen next. Steps, weights, optimizer state and the
learning-rate schedule continue exactly.
"""

import dataclasses
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
import keras
import orbit
import tensorflow as tf

from max_deeplab_tf import optimizers
from max_deeplab_tf.training import checkpoints
from max_deeplab_tf.training import train_step as train_step_lib
from max_deeplab_tf.training import visualization
from trainer import distribution
from trainer import evaluator as evaluator_lib
from trainer import trainer as trainer_lib


class TrainingStopped(RuntimeError):
    """Training stopped on purpose (e.g. too many non-finite steps)."""


@dataclasses.dataclass
class Components:
    """The library pieces an experiment is made of.

    Attributes:
      build_model: config -> keras.Model (images -> output dict).
      build_loss: (config, descriptor) -> callable (inputs, outputs) -> dict
        of per-example loss terms with common.TOTAL_LOSS.
      build_dataset: (dataset_options, is_training, input_context,
        drop_remainder) -> tf.data.Dataset of per-replica batches.
      descriptor: dataset name or descriptor path -> DatasetDescriptor.
      eval_hooks: (config, descriptor) -> evaluator_lib.EvalHooks.
      export: (config, model, export_dir) -> None, writes a SavedModel.
      is_backbone: model -> predicate on variables (backbone multiplier).
      prepare_data: config -> None, makes the synthetic dataset if asked.
    """

    build_model: Callable
    build_loss: Callable
    build_dataset: Callable
    descriptor: Callable
    eval_hooks: Callable
    export: Callable
    is_backbone: Callable
    prepare_data: Callable


def default_is_backbone(model) -> Optional[Callable]:
    """Backbone predicate: the variables of the model's encoder.

    Looks for, in order, `model.backbone_variables`, `model.checkpoint_items
    ['encoder']` (deeplab2's), `model.encoder`, `model.backbone`.
    """
    variables = getattr(model, "backbone_variables", None)
    if variables is None:
        items = getattr(model, "checkpoint_items", None)
        if isinstance(items, dict) and "encoder" in items:
            variables = items["encoder"].trainable_variables
    for name in ("encoder", "backbone"):
        if variables is None and hasattr(model, name):
            variables = getattr(model, name).trainable_variables
    if variables is None:
        return None
    ids = {id(v) for v in variables}
    return lambda variable: id(variable) in ids


def _library_components() -> Components:
    """Components backed by max_deeplab_tf (imported when first used)."""

    def build_model(config):
        import max_deeplab_tf
        return max_deeplab_tf.build_model(config)

    def build_loss(config, descriptor):
        from max_deeplab_tf import losses
        return losses.MaXDeepLabLoss(config.trainer_options.loss_options,
                                     descriptor)

    def build_dataset(dataset_options, is_training, input_context,
                      drop_remainder):
        from max_deeplab_tf.data import input_pipeline
        return input_pipeline.build_dataset(
            dataset_options, is_training, input_context,
            drop_remainder=drop_remainder)

    def descriptor(name):
        from max_deeplab_tf.data import dataset_info
        return dataset_info.get_dataset_descriptor(name)

    from trainer import library_hooks
    return Components(
        build_model=build_model, build_loss=build_loss,
        build_dataset=build_dataset, descriptor=descriptor,
        eval_hooks=library_hooks.eval_hooks, export=library_hooks.export,
        is_backbone=default_is_backbone,
        prepare_data=library_hooks.prepare_synthetic_data)


def _wait_for_files(config, timeout=3600, interval=5):
    """Non-chief workers wait for the chief to make the synthetic data."""
    if not config.trainer_options.HasField("synthetic_data"):
        return
    deadline = time.time() + timeout
    patterns = list(config.train_dataset_options.file_pattern) + list(
        config.eval_dataset_options.file_pattern)
    while not all(tf.io.gfile.glob(p) for p in patterns):
        if time.time() > deadline:
            raise TimeoutError(
                f"waited {timeout}s for the chief to write {patterns}")
        time.sleep(interval)


def _without_strings(dataset):
    """TPUs take no string tensors: drops image names and the like."""
    return dataset.map(lambda batch: {k: v for k, v in batch.items()
                                      if v.dtype != tf.string})


def initial_checkpoint_exclusions(model, model_options):
    """Variables an initial checkpoint must not overwrite.

    As deeplab2: restore_semantic_last_layer_from_initial_checkpoint: false
    keeps the auxiliary semantic head's last layer, and
    restore_instance_last_layer_from_initial_checkpoint: false keeps the
    mask-transformer's class head (both depend on the class set), e.g. when
    fine-tuning on another dataset.
    """
    items = getattr(model, "checkpoint_items", None)
    if not isinstance(items, dict):
        return []
    names = []
    if not model_options.restore_semantic_last_layer_from_initial_checkpoint:
        names.append("semantic_last_layer")
    if not model_options.restore_instance_last_layer_from_initial_checkpoint:
        names.append("transformer_class_head")
    return [v for name in names if name in items
            for v in items[name].variables]


def _model_input_size(config, mode):
    options = (config.train_dataset_options if "train" in mode
               else config.eval_dataset_options)
    crop = list(options.crop_size) or list(config.eval_dataset_options.crop_size)
    if len(crop) != 2:
        raise ValueError(
            "the dataset options need crop_size [height, width] to build the "
            "model")
    return crop


def _worker_model_dir(model_dir, strategy):
    """Non-chief workers write checkpoints into a private directory (every
    worker has to take part in a save under MultiWorkerMirroredStrategy)."""
    if distribution.is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return f"{model_dir}/worker_tmp/{resolver.task_type}_{resolver.task_id}"


def run_experiment(mode: str, config, model_dir: str,
                   tpu: Optional[str] = None, num_gpus: int = 0,
                   components: Optional[Components] = None,
                   strategy: Optional[tf.distribute.Strategy] = None
                   ) -> Dict[str, Any]:
    """Runs `mode` of the experiment.

    Args:
      mode: 'train', 'eval', 'train_and_eval', 'continuous_eval' or 'export'.
      config: ExperimentOptions.
      model_dir: Checkpoints, summaries, metrics, exports (gfile path).
      tpu: TPU name or address.
      num_gpus: GPUs to use.
      components: Library pieces; defaults to max_deeplab_tf's.
      strategy: A ready strategy (otherwise created from the config).

    Returns:
      Dict with 'eval' (the last metrics dict, if evaluated), 'export_dir'
      and 'global_step'.

    Raises:
      TrainingStopped: too many consecutive non-finite steps.
      ValueError: bad configuration, with the field named.
    """
    if mode not in ("train", "eval", "train_and_eval", "continuous_eval",
                    "export"):
        raise ValueError(f"unknown mode {mode!r}")
    trainer_options = config.trainer_options
    solver = trainer_options.solver_options
    if strategy is None:
        strategy = distribution.create_strategy(
            trainer_options.distribution_strategy or "auto", tpu, num_gpus)
    components = components or _library_components()
    chief = distribution.is_chief(strategy)
    is_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    num_replicas = strategy.num_replicas_in_sync
    logging.info("Experiment %s, mode %s, model_dir %s, %s with %d "
                 "replica(s)", config.experiment_name or "(unnamed)", mode,
                 model_dir, type(strategy).__name__, num_replicas)

    if chief:
        components.prepare_data(config)
    else:
        _wait_for_files(config)
    keras.mixed_precision.set_global_policy(
        trainer_options.mixed_precision_policy or "float32")
    if trainer_options.random_seed:
        keras.utils.set_random_seed(trainer_options.random_seed)

    training = "train" in mode
    evaluating = "eval" in mode
    train_batch = config.train_dataset_options.batch_size
    if training:
        distribution.per_replica_batch_size(
            train_batch, num_replicas, "train_dataset_options.batch_size")
    if evaluating:
        distribution.per_replica_batch_size(
            config.eval_dataset_options.batch_size, num_replicas,
            "eval_dataset_options.batch_size")
    dataset_name = (config.train_dataset_options.dataset if training
                    else config.eval_dataset_options.dataset)
    descriptor = components.descriptor(dataset_name)

    write_dir = _worker_model_dir(model_dir, strategy)
    with strategy.scope():
        model = components.build_model(config)
        height, width = _model_input_size(config, mode)
        model(tf.zeros([1, height, width, 3]), training=False)
        global_step = orbit.utils.create_global_step()
        loss_fn = components.build_loss(config, descriptor)
        model_optimizer = step = None
        jit = False
        items = {"model": checkpoints.model_view(model),
                 "global_step": global_step}
        if training:
            multiplier = solver.backbone_learning_rate_multiplier
            is_backbone = (components.is_backbone(model)
                           if multiplier != 1.0 else None)
            model_optimizer = optimizers.ModelOptimizer(
                solver, model.trainable_variables, is_backbone=is_backbone,
                gradients_aggregated=True)
            # Slots must exist before a restore, or it has nothing to fill.
            model_optimizer.build()
            if model_optimizer.backbone_optimizer is not None:
                logging.info("Backbone learning-rate multiplier %g on %d "
                             "variable(s)", multiplier,
                             model_optimizer.num_backbone_variables)
            jit = bool(trainer_options.use_xla) and num_replicas == 1 and (
                not is_tpu)
            if trainer_options.use_xla and not jit and not is_tpu:
                logging.warning(
                    "use_xla: the step is not jit-compiled under %s (its "
                    "cross-replica sums, e.g. sync batch norm, cannot run "
                    "inside a compiled function); set TF_XLA_FLAGS="
                    "--tf_xla_auto_jit=2 for XLA auto-clustering instead.",
                    type(strategy).__name__)
            step = train_step_lib.TrainStep(
                model, loss_fn, model_optimizer, train_batch,
                mixed_precision_policy=trainer_options.mixed_precision_policy,
                max_consecutive_nonfinite_steps=(
                    trainer_options.max_consecutive_nonfinite_steps),
                jit_compile=jit, use_asserts=not is_tpu)
            items.update(model_optimizer.checkpoint_items())
            items["train_step"] = tf.train.Checkpoint(
                **step.checkpoint_items())
    checkpoint = tf.train.Checkpoint(**items)

    initial = config.model_options.initial_checkpoint

    def init_fn():
        if initial:
            checkpoints.load_initial_checkpoint(
                model, initial,
                exclude_variables=initial_checkpoint_exclusions(
                    model, config.model_options))

    manager = tf.train.CheckpointManager(
        checkpoint, directory=write_dir,
        max_to_keep=trainer_options.num_checkpoints_to_keep,
        step_counter=global_step,
        checkpoint_interval=trainer_options.save_checkpoints_steps,
        init_fn=init_fn)
    if mode in ("eval", "export") and not manager.latest_checkpoint and (
            not initial):
        raise ValueError(
            f"mode {mode}: {model_dir} holds no checkpoint and "
            "model_options.initial_checkpoint is not set")

    trainer = None
    if training:
        def train_dataset_fn(input_context):
            dataset = components.build_dataset(config.train_dataset_options,
                                               True, input_context, True)
            return _without_strings(dataset) if is_tpu else dataset

        trainer = trainer_lib.Trainer(
            strategy, train_dataset_fn, step, global_step, train_batch,
            solver.training_number_of_steps,
            loss_names=getattr(loss_fn, "loss_terms", ()) or ())

    evaluator = None
    if evaluating:
        def eval_dataset_fn(input_context):
            # Every image is evaluated: a last partial batch is kept, except
            # on TPUs, which need static shapes.
            dataset = components.build_dataset(config.eval_dataset_options,
                                               False, input_context, is_tpu)
            return _without_strings(dataset) if is_tpu else dataset

        eval_options = config.evaluator_options
        save_dir = None
        if eval_options.save_predictions:
            save_dir = eval_options.override_save_dir or f"{model_dir}/vis"
        colormap = (descriptor.colormap
                    or visualization.default_colormap(descriptor.num_classes))
        evaluator = evaluator_lib.Evaluator(
            strategy, eval_dataset_fn, model, loss_fn,
            components.eval_hooks(config, descriptor), global_step, model_dir,
            colormap=colormap, label_divisor=descriptor.label_divisor,
            num_vis_samples=eval_options.num_vis_samples,
            save_predictions_dir=save_dir, write_files=chief)

    summary_dir = f"{write_dir}/train" if chief else None
    if trainer is None and evaluator is None:
        # Export only: restore (or initialise) without an orbit loop.
        with strategy.scope():
            restored = manager.restore_or_initialize()
        logging.info("Restored %s", restored or f"initial checkpoint {initial}")
        controller = None
    else:
        controller = orbit.Controller(
            strategy=strategy, trainer=trainer, evaluator=evaluator,
            global_step=global_step,
            steps_per_loop=(trainer_options.steps_per_loop if training
                            else None),
            checkpoint_manager=manager,
            summary_interval=(trainer_options.steps_per_loop
                              if training and chief else None),
            summary_dir=summary_dir,
            eval_summary_dir=f"{model_dir}/eval" if chief else None)

    result = {"eval": None, "train": None, "train_history": [],
              "export_dir": None, "jit_compile": jit}
    started = time.time()
    eval_steps = config.evaluator_options.eval_steps
    try:
        if mode == "train":
            controller.train(steps=solver.training_number_of_steps)
        elif mode == "train_and_eval":
            controller.train_and_evaluate(
                train_steps=solver.training_number_of_steps,
                eval_steps=eval_steps,
                eval_interval=config.evaluator_options.eval_interval)
        elif mode == "eval":
            controller.evaluate(steps=eval_steps)
        elif mode == "continuous_eval":
            timeout = config.evaluator_options.continuous_eval_timeout
            controller.evaluate_continuously(
                steps=eval_steps, timeout=None if timeout < 0 else timeout)
    except (tf.errors.InvalidArgumentError, FloatingPointError) as e:
        message = getattr(e, "message", None) or str(e)
        if train_step_lib.NONFINITE_ERROR in message:
            text = step.nonfinite_message(
                trainer_options.max_consecutive_nonfinite_steps)
            raise TrainingStopped(
                f"{text} Stopped at step {int(global_step.numpy())}; the "
                f"last checkpoint is {manager.latest_checkpoint}.") from None
        raise
    if evaluator is not None:
        result["eval"] = evaluator.last_metrics
    if trainer is not None:
        result["train"] = trainer.last_logs
        result["train_history"] = trainer.history
    if training:
        logging.info("Trained to step %d in %.1f s", int(global_step.numpy()),
                     time.time() - started)
    if mode == "export" or (training and trainer_options.export_after_training):
        export_dir = (config.export_options.export_dir
                      or f"{model_dir}/export")
        if chief:
            components.export(config, model, export_dir)
            logging.info("Exported a SavedModel to %s", export_dir)
        result["export_dir"] = export_dir
    result["global_step"] = int(global_step.numpy())
    if not chief and write_dir != model_dir and tf.io.gfile.exists(write_dir):
        tf.io.gfile.rmtree(write_dir)
    return result

"""Runs an experiment: strategy, model, optimizer, checkpoints, orbit.

`run_experiment(mode, config, model_dir, ...)` is what `trainer.main` calls.
It runs four named steps: `set_up` (strategy, input checks, MODEL_DIR),
`build_model_and_checkpoint`, `restore` and `run_mode` (orbit loops, export).
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
checkpoint intact, and re-running the same command resumes from it. The
`ckpt-N_temp/` folder an interrupted write leaves is removed when training
starts again. A checkpoint is never written while a variable is non-finite
(checkpoints.CheckpointManager refuses; the train step rolls such updates
back first).

Input position on resume: the input pipeline is re-created, so after a
restart the shards are read again from a fresh shuffle: the model sees a new
random draw of the data rather than replaying exactly the examples the
killed run would have seen next. Steps, weights, optimizer state and the
learning-rate schedule continue exactly.
"""

import dataclasses
import os
import platform
import time
from typing import Any, Callable, Dict, Optional

from absl import logging
import keras
import orbit
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

from max_deeplab_tf import cli
from max_deeplab_tf import model as model_lib
from max_deeplab_tf import optimizers
from max_deeplab_tf.training import checkpoints
from max_deeplab_tf.training import train_step as train_step_lib
from max_deeplab_tf.training import visualization
from trainer import distribution
from trainer import evaluator as evaluator_lib
from trainer import trainer as trainer_lib


MODES = ("train", "eval", "train_and_eval", "continuous_eval", "export")


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
      export: (config, model, export_root, global_step) -> version folder,
        writes the SavedModel EXPORT_ROOT/<global_step>.
      is_backbone: model -> predicate on variables (backbone multiplier).
      prepare_data: config -> None, makes the synthetic dataset if asked.
      check_data: (dataset_options, field prefix, is_training) -> None,
        raises cli.UserError naming the field when the data cannot feed the
        run (a pattern matching no file, shards without an example); None:
        no check.
    """

    build_model: Callable
    build_loss: Callable
    build_dataset: Callable
    descriptor: Callable
    eval_hooks: Callable
    export: Callable
    is_backbone: Callable
    prepare_data: Callable
    check_data: Optional[Callable] = None


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
        prepare_data=library_hooks.prepare_synthetic_data,
        check_data=library_hooks.check_data)


def _orbit_log(message: str) -> None:
    """orbit's Controller messages, to the absl log only.

    orbit prints each message to stdout and logs it, and its per-loop
    messages repeat the whole output dict (our Trainer and Evaluator log
    one line each already): those are dropped, the rest logged once.
    """
    if "| output:" in message or message.lstrip().startswith("eval |"):
        return
    if message.startswith(("restoring or initializing", "restored ")):
        return  # train_lib.restore logged it.
    logging.info("%s", message)


def quiet_orbit() -> None:
    """Routes orbit.Controller's messages through `_orbit_log` (orbit has
    no option for it: its Controller calls the module's `_log`)."""
    orbit.controller._log = _orbit_log  # pylint: disable=protected-access


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
        raise cli.UserError(
            "crop_size: the dataset options need [height, width] to build the "
            "model")
    return crop


def _worker_model_dir(model_dir, strategy):
    """Non-chief workers write checkpoints into a private directory (every
    worker has to take part in a save under MultiWorkerMirroredStrategy)."""
    if distribution.is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return f"{model_dir}/worker_tmp/{resolver.task_type}_{resolver.task_id}"


def _check_initial_checkpoint(config, mode: str, model_dir: str) -> None:
    """Eval and export of a MODEL_DIR without checkpoint read
    model_options.initial_checkpoint, which must then be set (config
    loading leaves a ${VARIABLE} there unexpanded for these modes)."""
    initial = config.model_options.initial_checkpoint
    if not initial:
        raise cli.UserError(
            f"--mode={mode}: {model_dir} holds no checkpoint and "
            "model_options.initial_checkpoint is not set; expected the "
            "model_dir of a training run")
    if "${" in initial:
        raise cli.UserError(
            f"model_options.initial_checkpoint: {initial!r} names an unset "
            f"environment variable, and {model_dir} holds no checkpoint for "
            f"--mode={mode}; expected the variable set or the model_dir of "
            "a training run")


def _make_model_dir(model_dir: str) -> None:
    """Creates MODEL_DIR, or says in one line why it cannot be."""
    try:
        tf.io.gfile.makedirs(model_dir)
        if tf.io.gfile.isdir(model_dir):
            return
        reason = "it is not a directory"
    except tf.errors.OpError as e:
        reason = cli.one_line(e.message)
    raise cli.UserError(
        f"model_dir {model_dir!r}: cannot create the directory ({reason}); "
        "expected a writable directory path")


# A training run records its experiment (overrides applied, variables
# expanded) as MODEL_DIR/experiment.textproto, the file
# Predictor.from_checkpoint(MODEL_DIR) and the importer's output use. The
# header marks the file as the trainer's, so that it never replaces one it
# did not write (the importer's).
EXPERIMENT_FILE = "experiment.textproto"
EXPERIMENT_HEADER = (
    "# Written by trainer.main: the experiment this model_dir was last "
    "trained with\n# (overrides applied, ${VARIABLES} expanded).\n")


def record_experiment(config, model_dir: str) -> Optional[str]:
    """Writes the experiment as MODEL_DIR/experiment.textproto.

    Returns:
      The path written, or None when a file of someone else's is there (it
      is kept).
    """
    from google.protobuf import text_format
    from max_deeplab_tf.training import files

    path = f"{model_dir.rstrip('/')}/{EXPERIMENT_FILE}"
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            if not f.read(len(EXPERIMENT_HEADER)) == EXPERIMENT_HEADER:
                logging.info("Keeping %s (not written by the trainer)", path)
                return None
    files.write_atomically(
        path, EXPERIMENT_HEADER + text_format.MessageToString(config))
    return path


@dataclasses.dataclass
class _Setup:
    """Where and how an experiment runs (step 1 of run_experiment)."""

    mode: str
    model_dir: str
    write_dir: str
    strategy: tf.distribute.Strategy
    components: Components
    chief: bool
    is_tpu: bool
    training: bool
    evaluating: bool
    descriptor: Any


@dataclasses.dataclass
class _Parts:
    """The model and what trains and saves it (step 2 of run_experiment)."""

    model: keras.Model
    global_step: tf.Variable
    loss_fn: Callable
    model_optimizer: Any
    step: Any
    jit: bool
    manager: tf.train.CheckpointManager


def set_up(mode: str, config, model_dir: str, tpu: Optional[str],
           num_gpus: int, components: Optional[Components],
           strategy: Optional[tf.distribute.Strategy]) -> _Setup:
    """Step 1: the strategy, the batch split, the data and the model dir.

    Checks what can be checked before anything is built (the batches divide
    over the replicas, eval and export have a checkpoint to read, the data
    the mode reads exists, MODEL_DIR can be made), makes the synthetic dataset if the config asks for one, removes
    unfinished checkpoint writes of a killed run, and sets the precision
    policy and the random seed.

    Returns:
      A _Setup.

    Raises:
      cli.UserError: naming the flag or field at fault.
    """
    if mode not in MODES:
        raise cli.UserError(f"--mode {mode!r}: expected one of {list(MODES)}")
    trainer_options = config.trainer_options
    if strategy is None:
        strategy = distribution.create_strategy(
            trainer_options.distribution_strategy or "auto", tpu, num_gpus)
    components = components or _library_components()
    chief = distribution.is_chief(strategy)
    is_tpu = isinstance(strategy, tf.distribute.TPUStrategy)
    num_replicas = strategy.num_replicas_in_sync
    training = "train" in mode
    evaluating = "eval" in mode
    logging.info("Experiment %s, mode %s, model_dir %s, %s with %d "
                 "replica(s)", config.experiment_name or "(unnamed)", mode,
                 model_dir, type(strategy).__name__, num_replicas)
    if training:
        distribution.per_replica_batch_size(
            config.train_dataset_options.batch_size, num_replicas,
            "train_dataset_options.batch_size")
    if evaluating:
        distribution.per_replica_batch_size(
            config.eval_dataset_options.batch_size, num_replicas,
            "eval_dataset_options.batch_size")

    if mode in ("eval", "export") and not tf.train.latest_checkpoint(
            model_dir):
        _check_initial_checkpoint(config, mode, model_dir)
    write_dir = _worker_model_dir(model_dir, strategy)
    _make_model_dir(write_dir)
    if training or evaluating:
        if chief:
            components.prepare_data(config)
        else:
            _wait_for_files(config)
        if components.check_data is not None:
            if training:
                components.check_data(config.train_dataset_options,
                                      "train_dataset_options", True)
            if evaluating:
                components.check_data(config.eval_dataset_options,
                                      "eval_dataset_options", False)
    keras.mixed_precision.set_global_policy(
        trainer_options.mixed_precision_policy or "float32")
    if trainer_options.random_seed:
        keras.utils.set_random_seed(trainer_options.random_seed)

    dataset_name = (config.train_dataset_options.dataset if training
                    else config.eval_dataset_options.dataset)
    descriptor = components.descriptor(dataset_name)
    if training:
        # Only a training process writes checkpoints into its write_dir.
        checkpoints.remove_stale_temporaries(write_dir)
        if chief:
            record_experiment(config, model_dir)
    return _Setup(mode=mode, model_dir=model_dir, write_dir=write_dir,
                  strategy=strategy, components=components, chief=chief,
                  is_tpu=is_tpu, training=training, evaluating=evaluating,
                  descriptor=descriptor)


def _onednn_left_off() -> bool:
    """Whether this is an x86 CPU-only process in which TensorFlow left
    oneDNN off by its own default (it turns it on only for CPUs with
    AVX-512 VNNI or BF16, AVX-VNNI or AMX) and the user did not choose."""
    if "TF_ENABLE_ONEDNN_OPTS" in os.environ:
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    if (tf.config.list_logical_devices("GPU")
            or tf.config.list_logical_devices("TPU")):
        return False
    return not _pywrap_util_port.IsMklEnabled()


def _xla_on_cpu_message() -> str:
    """What `use_xla` measured on a CPU with the kernels this process uses
    (benchmarks/README.md, vs_deeplab2.py, MaX-DeepLab-S at 129x129):
    oneDNN's kernels beat XLA's CPU code; TensorFlow's Eigen kernels, since
    be58374, do not. The compiled step loses in its matrix products, which
    XLA runs in Eigen's kernels (59% of the compiled function's time).
    XLA's own oneDNN rewrites could not be used: `--xla_cpu_use_onednn`
    refuses the dot of any matmul gradient (one operand transposed) and
    `--xla_cpu_use_thunk_runtime=false` failed to link (TensorFlow 2.20)."""
    if _pywrap_util_port.IsMklEnabled():
        return ("use_xla: compiling the step for the CPU; with oneDNN on, as "
                "here, the compiled MaX-DeepLab-S step measured 1.05-1.16 "
                "times slower than without XLA on an AMD EPYC with AVX-512 "
                "(at fe37647) and 1.4 times on an Intel Xeon (at 26eb9bf), "
                "as XLA runs the matrix products in Eigen's kernels, not "
                "oneDNN's; use_xla: false, the default, is likely faster "
                "here.")
    return ("use_xla: compiling the step for the CPU; with oneDNN off, as "
            "here, the compiled MaX-DeepLab-S step measured 0.89-0.96 times "
            "the step without XLA on an AMD EPYC, and the step without XLA "
            "but with TF_ENABLE_ONEDNN_OPTS=1 set before starting measured "
            "faster than either.")


def _build_optimizer_and_step(setup: _Setup, config, model, loss_fn):
    """The optimizer(s) (slots built, so that a restore fills them) and the
    train step, under the strategy's scope."""
    trainer_options = config.trainer_options
    solver = trainer_options.solver_options
    multiplier = solver.backbone_learning_rate_multiplier
    is_backbone = (setup.components.is_backbone(model)
                   if multiplier != 1.0 else None)
    model_optimizer = optimizers.ModelOptimizer(
        solver, model.trainable_variables, is_backbone=is_backbone,
        gradients_aggregated=True)
    model_optimizer.build()
    if model_optimizer.backbone_optimizer is not None:
        logging.info("Backbone learning-rate multiplier %g on %d "
                     "variable(s)", multiplier,
                     model_optimizer.num_backbone_variables)
    num_replicas = setup.strategy.num_replicas_in_sync
    jit = bool(trainer_options.use_xla) and num_replicas == 1 and (
        not setup.is_tpu)
    if trainer_options.use_xla and not jit and not setup.is_tpu:
        logging.warning(
            "use_xla: the step is not jit-compiled under %s (its "
            "cross-replica sums, e.g. sync batch norm, cannot run "
            "inside a compiled function); set TF_XLA_FLAGS="
            "--tf_xla_auto_jit=2 for XLA auto-clustering instead.",
            type(setup.strategy).__name__)
    if jit and not tf.config.list_logical_devices("GPU"):
        logging.warning(_xla_on_cpu_message())
    if not jit and _onednn_left_off():
        logging.info(
            "oneDNN is off (TensorFlow's default on this CPU); setting "
            "TF_ENABLE_ONEDNN_OPTS=1 before starting made the MaX-DeepLab-S "
            "train step 1.3-1.4 times faster on an AMD EPYC with AVX2 "
            "(benchmarks/README.md)")
    step = train_step_lib.TrainStep(
        model, loss_fn, model_optimizer,
        config.train_dataset_options.batch_size,
        mixed_precision_policy=trainer_options.mixed_precision_policy,
        max_consecutive_nonfinite_steps=(
            trainer_options.max_consecutive_nonfinite_steps),
        jit_compile=jit, use_asserts=not setup.is_tpu)
    if not step.optimize_graph:
        logging.info("CPU only: the train step runs without grappler's "
                     "graph optimisation (it made the first step about 7 s "
                     "slower and later steps no faster; "
                     "max_deeplab_tf.training.graph_optimizer)")
    return model_optimizer, step, jit


def build_model_and_checkpoint(setup: _Setup, config) -> _Parts:
    """Step 2: the model, loss, optimizer, train step and checkpoint manager.

    Training checkpoints hold the model, the global step, the optimizer(s)
    and the step's state. Evaluation and export build only the model and
    the global step, and read checkpoints with `expect_partial()` (the
    optimizer values in the file are not wanted there).

    Returns:
      _Parts.
    """
    trainer_options = config.trainer_options
    with setup.strategy.scope():
        model = setup.components.build_model(config)
        height, width = _model_input_size(config, setup.mode)
        model_lib.build_for_input_size(model, height, width)
        global_step = orbit.utils.create_global_step()
        loss_fn = setup.components.build_loss(config, setup.descriptor)
        items = {"model": checkpoints.model_view(model),
                 "global_step": global_step}
        guarded = list(model.variables)
        model_optimizer = step = None
        jit = False
        if setup.training:
            model_optimizer, step, jit = _build_optimizer_and_step(
                setup, config, model, loss_fn)
            items.update(model_optimizer.checkpoint_items())
            items["train_step"] = tf.train.Checkpoint(
                **step.checkpoint_items())
            guarded += list(model_optimizer.variables) + list(
                step.checkpoint_items().values())
            checkpoint = tf.train.Checkpoint(**items)
        else:
            checkpoint = checkpoints.ModelOnlyCheckpoint(**items)

    initial = config.model_options.initial_checkpoint

    def init_fn():
        if initial:
            if "${" in initial:  # continuous_eval of an empty MODEL_DIR.
                _check_initial_checkpoint(config, setup.mode,
                                          setup.model_dir)
            checkpoints.load_initial_checkpoint(
                model, initial,
                exclude_variables=initial_checkpoint_exclusions(
                    model, config.model_options))

    manager = checkpoints.CheckpointManager(
        checkpoint, directory=setup.write_dir,
        guarded_variables=guarded,
        max_to_keep=trainer_options.num_checkpoints_to_keep,
        step_counter=global_step,
        checkpoint_interval=trainer_options.save_checkpoints_steps,
        init_fn=init_fn)
    return _Parts(model=model, global_step=global_step, loss_fn=loss_fn,
                  model_optimizer=model_optimizer, step=step, jit=jit,
                  manager=manager)


def restore(setup: _Setup, parts: _Parts, config) -> Optional[str]:
    """Step 3: restores the latest checkpoint of MODEL_DIR, or else loads
    model_options.initial_checkpoint (or keeps the fresh initialisation
    when training).

    Returns:
      The checkpoint path restored, or None.
    """
    initial = config.model_options.initial_checkpoint
    if setup.mode == "continuous_eval":
        # Evaluates each checkpoint as it appears (orbit restores them).
        return None
    with setup.strategy.scope():
        restored = parts.manager.restore_or_initialize()
    if restored:
        logging.info("Restored %s (step %d)", restored,
                     int(parts.global_step.numpy()))
    elif initial:
        logging.info("Initialised the model from %s", initial)
    return restored


def _build_trainer(setup: _Setup, config, parts: _Parts):
    def train_dataset_fn(input_context):
        dataset = setup.components.build_dataset(
            config.train_dataset_options, True, input_context, True)
        return _without_strings(dataset) if setup.is_tpu else dataset

    return trainer_lib.Trainer(
        setup.strategy, train_dataset_fn, parts.step, parts.global_step,
        config.train_dataset_options.batch_size,
        config.trainer_options.solver_options.training_number_of_steps,
        loss_names=getattr(parts.loss_fn, "loss_terms", ()) or ())


def _build_evaluator(setup: _Setup, config, parts: _Parts):
    def eval_dataset_fn(input_context):
        # Every image is evaluated: a last partial batch is kept, except
        # on TPUs, which need static shapes.
        dataset = setup.components.build_dataset(
            config.eval_dataset_options, False, input_context, setup.is_tpu)
        return _without_strings(dataset) if setup.is_tpu else dataset

    eval_options = config.evaluator_options
    descriptor = setup.descriptor
    save_dir = None
    if eval_options.save_predictions:
        save_dir = eval_options.override_save_dir or (
            f"{setup.model_dir}/vis")
    colormap = (descriptor.colormap
                or visualization.default_colormap(descriptor.num_classes))
    return evaluator_lib.Evaluator(
        setup.strategy, eval_dataset_fn, parts.model, parts.loss_fn,
        setup.components.eval_hooks(config, descriptor), parts.global_step,
        setup.model_dir, colormap=colormap,
        label_divisor=descriptor.label_divisor,
        num_vis_samples=eval_options.num_vis_samples,
        save_predictions_dir=save_dir, write_files=setup.chief)


def _run_loops(setup: _Setup, config, parts: _Parts, trainer, evaluator):
    """Runs the orbit Controller for the mode.

    Raises:
      TrainingStopped: too many consecutive non-finite steps, or a
        checkpoint write refused because a variable is not finite.
    """
    trainer_options = config.trainer_options
    solver = trainer_options.solver_options
    eval_options = config.evaluator_options
    training = trainer is not None
    quiet_orbit()
    controller = orbit.Controller(
        strategy=setup.strategy, trainer=trainer, evaluator=evaluator,
        global_step=parts.global_step,
        steps_per_loop=trainer_options.steps_per_loop if training else None,
        checkpoint_manager=parts.manager,
        summary_interval=(trainer_options.steps_per_loop
                          if training and setup.chief else None),
        summary_dir=f"{setup.write_dir}/train" if setup.chief else None,
        eval_summary_dir=(f"{setup.model_dir}/eval" if setup.chief
                          else None))
    mode = setup.mode
    try:
        _run_controller(mode, controller, solver, eval_options)
    except checkpoints.NonFiniteCheckpointError as e:
        raise TrainingStopped(
            f"Training stopped at step {int(parts.global_step.numpy())}: "
            f"{e}") from None
    except (tf.errors.InvalidArgumentError, FloatingPointError) as e:
        message = getattr(e, "message", None) or str(e)
        if train_step_lib.NONFINITE_ERROR in message and parts.step:
            text = parts.step.nonfinite_message(
                trainer_options.max_consecutive_nonfinite_steps)
            raise TrainingStopped(
                f"{text} Stopped at step {int(parts.global_step.numpy())}; "
                f"the last checkpoint is {parts.manager.latest_checkpoint}."
            ) from None
        raise
    finally:
        # Everything written is on disk when run_experiment returns (main
        # exits without TensorFlow's slow teardown).
        for name in ("summary_manager", "eval_summary_manager"):
            manager = getattr(controller, name, None)
            if manager is not None:
                manager.flush()


def _run_controller(mode, controller, solver, eval_options) -> None:
    """The orbit Controller call that runs `mode`."""
    if mode == "train":
        controller.train(steps=solver.training_number_of_steps)
    elif mode == "train_and_eval":
        controller.train_and_evaluate(
            train_steps=solver.training_number_of_steps,
            eval_steps=eval_options.eval_steps,
            eval_interval=eval_options.eval_interval)
    elif mode == "eval":
        controller.evaluate(steps=eval_options.eval_steps)
    elif mode == "continuous_eval":
        timeout = eval_options.continuous_eval_timeout
        controller.evaluate_continuously(
            steps=eval_options.eval_steps,
            timeout=None if timeout < 0 else timeout)


def run_mode(setup: _Setup, config, parts: _Parts) -> Dict[str, Any]:
    """Step 4: trains and/or evaluates with orbit, then exports if asked.

    Returns:
      The result dict of run_experiment.
    """
    trainer = (_build_trainer(setup, config, parts) if setup.training
               else None)
    evaluator = (_build_evaluator(setup, config, parts) if setup.evaluating
                 else None)
    result = {"eval": None, "train": None, "train_history": [],
              "export_dir": None, "jit_compile": parts.jit}
    started = time.time()
    if trainer is not None or evaluator is not None:
        _run_loops(setup, config, parts, trainer, evaluator)
    if evaluator is not None:
        result["eval"] = evaluator.last_metrics
    if trainer is not None:
        result["train"] = trainer.last_logs
        result["train_history"] = trainer.history
        logging.info("Trained to step %d in %.1f s",
                     int(parts.global_step.numpy()), time.time() - started)
    if setup.mode == "export" or (
            setup.training and config.trainer_options.export_after_training):
        export_root = (config.export_options.export_dir
                       or f"{setup.model_dir}/export").rstrip("/")
        step = int(parts.global_step.numpy())
        # A version per global step, EXPORT_ROOT/<step>, as TF Serving reads.
        export_dir = f"{export_root}/{step}"
        if setup.chief:
            export_dir = setup.components.export(config, parts.model,
                                                 export_root, step)
            logging.info("Exported a SavedModel to %s", export_dir)
        result["export_dir"] = export_dir
    result["global_step"] = int(parts.global_step.numpy())
    return result


def run_experiment(mode: str, config, model_dir: str,
                   tpu: Optional[str] = None, num_gpus: int = 0,
                   components: Optional[Components] = None,
                   strategy: Optional[tf.distribute.Strategy] = None
                   ) -> Dict[str, Any]:
    """Runs `mode` of the experiment, in four steps: set up (strategy, data,
    MODEL_DIR), build (model, optimizer, checkpoint manager), restore, run
    the mode (orbit loops, export).

    Args:
      mode: 'train', 'eval', 'train_and_eval', 'continuous_eval' or 'export'.
      config: ExperimentOptions.
      model_dir: Checkpoints, summaries, metrics, exports (gfile path).
      tpu: TPU name or address.
      num_gpus: GPUs to use.
      components: Library pieces; defaults to max_deeplab_tf's.
      strategy: A ready strategy (otherwise created from the config).

    Returns:
      Dict with 'eval' (the last metrics dict, if evaluated), 'train' (the
      last loop's logs), 'train_history', 'export_dir', 'jit_compile' and
      'global_step'.

    Raises:
      TrainingStopped: too many consecutive non-finite steps.
      cli.UserError: bad configuration or input, with the field named.
    """
    setup = set_up(mode, config, model_dir, tpu, num_gpus, components,
                   strategy)
    parts = build_model_and_checkpoint(setup, config)
    restore(setup, parts, config)
    result = run_mode(setup, config, parts)
    if not setup.chief and setup.write_dir != model_dir and (
            tf.io.gfile.exists(setup.write_dir)):
        tf.io.gfile.rmtree(setup.write_dir)
    return result

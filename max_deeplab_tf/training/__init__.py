"""Library pieces of training; the orbit driver is the top-level `trainer/`.

  train_step.TrainStep: the distributed step (global-batch loss scaling,
    cross-replica gradient sums, non-finite guard, clipping, loss scaling,
    optional XLA).
  checkpoints.model_view(model): what to checkpoint so that Keras 3 models
    keeping layers in lists lose nothing; load_initial_checkpoint(model,
    path, ...) with a matched/unmatched report; CheckpointManager (no
    non-finite writes), ModelOnlyCheckpoint (quiet partial reads),
    remove_stale_temporaries (what a killed write left).
  graph_optimizer: grappler off for the train step on a CPU-only process
    (where it cost about 7 s of the first step and sped nothing up);
    TrainStep.graph_optimizer_scope() is the scope its calls run in.
  op_stack_traces.library_frames_dropped(): the scope in which the train
    and evaluation steps trace, so that their ops record only this
    package's and the user's stack frames (200+ MiB less peak memory).
  gradient_registrations.released_after_gradients(): the scope in which
    the train step traces, which takes the custom gradients its trace
    registered back out of TensorFlow's process-wide registry, so that
    a deleted step frees its graph, variables and slots.
  files: atomic writes through tf.io.gfile.
  visualization: panoptic maps as colour images.
"""

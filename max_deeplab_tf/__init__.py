"""max_deeplab_tf: MaX-DeepLab for TensorFlow 2 / Keras 3.

Public entry points:
  load_experiment(path, overrides=()) -> ExperimentOptions proto.
  build_model(experiment_options) -> keras.Model returning deeplab2's output
    dictionary.
  Predictor.from_saved_model(path) / .from_checkpoint(model_dir): a trained
    model on images (see max_deeplab_tf.inference.predictor).

Importing the package is light: TensorFlow is imported when one of these is
first used.
"""

__version__ = "0.1.0"


def load_experiment(path, overrides=()):
    """See `max_deeplab_tf.config.load_experiment`."""
    from max_deeplab_tf import config

    return config.load_experiment(path, overrides)


def build_model(experiment_options, **kwargs):
    """See `max_deeplab_tf.model.build_model`."""
    from max_deeplab_tf import model

    return model.build_model(experiment_options, **kwargs)


def __getattr__(name):
    # Predictor is looked up lazily so that `import max_deeplab_tf` stays
    # free of TensorFlow.
    if name == "Predictor":
        from max_deeplab_tf.inference.predictor import Predictor
        return Predictor
    raise AttributeError(f"module 'max_deeplab_tf' has no attribute {name!r}")

"""SavedModel export.

    export_saved_model(model, experiment_options, export_dir)

writes a SavedModel whose `serving_default` signature takes uint8 images
[batch, height, width, 3] of any size and returns panoptic_pred,
semantic_pred, instance_pred (int32), instance_scores, semantic_scores
(float32), all [batch, height, width], and transformer_class_probs [batch,
num_mask_slots, num_classes] (see `serving`). It loads with plain
`tf.saved_model.load` (no import of this project needed):

    served = tf.saved_model.load(export_dir).signatures["serving_default"]
    outputs = served(images=tf.constant(uint8_batch))

Beside the graph, EXPORT_DIR/assets.extra/ holds dataset_descriptor.json
(class names, colours, label divisor, category ids: what
`max_deeplab_tf.predict` needs to draw and write COCO files) and
experiment.textproto (the config it was exported with).
"""

import uuid
from typing import Optional

import tensorflow as tf

from max_deeplab_tf.export import serving

DESCRIPTOR_FILE = "assets.extra/dataset_descriptor.json"
CONFIG_FILE = "assets.extra/experiment.textproto"


def export_crop_size(experiment_options):
    """export_options.crop_size, else eval_dataset_options.crop_size."""
    crop = (list(experiment_options.export_options.crop_size)
            or list(experiment_options.eval_dataset_options.crop_size))
    if len(crop) != 2 or min(crop) < 1:
        raise ValueError(
            "export needs export_options.crop_size or "
            "eval_dataset_options.crop_size as [height, width], got "
            f"{crop}")
    return crop


def build_serving_module(model, experiment_options, descriptor=None):
    """The ServingModule for a model and its config (not yet saved)."""
    from max_deeplab_tf.data import dataset_info
    from max_deeplab_tf.inference import post_processing

    if descriptor is None:
        descriptor = dataset_info.get_dataset_descriptor(
            experiment_options.eval_dataset_options.dataset)
    crop = export_crop_size(experiment_options)
    post_processor = post_processing.PostProcessor(
        experiment_options.evaluator_options, descriptor, output_size=crop)
    include = experiment_options.export_options.include_class_probabilities
    return serving.ServingModule(model, post_processor, crop, include)


def export_saved_model(model, experiment_options, export_dir: str,
                       descriptor=None) -> str:
    """Writes the SavedModel of `model` into export_dir (replacing it).

    The SavedModel is written beside export_dir under a temporary name and
    renamed into place, so a reader never sees a half-written export. On
    object stores (gs://, ...), which cannot rename directories, the files
    are copied with saved_model.pb last.

    Args:
      model: keras model (images float32 0..255 -> output dictionary).
      experiment_options: ExperimentOptions (crop size, thresholds, dataset).
      export_dir: destination (any tf.io.gfile path).
      descriptor: DatasetDescriptor; default: that of
        eval_dataset_options.dataset.

    Returns:
      export_dir.
    """
    from google.protobuf import text_format

    module = build_serving_module(model, experiment_options, descriptor)
    descriptor = module.descriptor
    signature = module.serving_function()
    export_dir = export_dir.rstrip("/")
    parent, _, base = export_dir.rpartition("/")
    # A sibling whose name does not start with export_dir's: prefix-based
    # file systems (ram://) would otherwise see it inside export_dir.
    temporary = f"{parent or '.'}/.tmp-{uuid.uuid4().hex}-{base}"

    def write(directory):
        tf.saved_model.save(module, directory,
                            signatures={"serving_default": signature})
        tf.io.gfile.makedirs(f"{directory}/assets.extra")
        with tf.io.gfile.GFile(f"{directory}/{DESCRIPTOR_FILE}", "w") as f:
            f.write(descriptor.to_json())
        with tf.io.gfile.GFile(f"{directory}/{CONFIG_FILE}", "w") as f:
            f.write(text_format.MessageToString(experiment_options))

    write(temporary)
    if tf.io.gfile.exists(export_dir):
        _remove_tree(export_dir)
    if "://" not in export_dir:
        tf.io.gfile.rename(temporary, export_dir)
    else:
        # Object stores (gs://, ram://) have no atomic directory rename:
        # copy the files, saved_model.pb (what loaders look for) last.
        _copy_tree(temporary, export_dir)
        _remove_tree(temporary)
    return export_dir


def _files_under(directory):
    for parent, _, names in tf.io.gfile.walk(directory):
        for name in names:
            path = f"{parent.rstrip('/')}/{name}"
            # ram:// lists "assets.extra/x" under "assets" too, as ".extra/x".
            if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
                yield path


def _copy_tree(source: str, destination: str) -> None:
    paths = sorted(_files_under(source),
                   key=lambda p: p.endswith("/saved_model.pb"))
    for path in paths:
        target = destination + path[len(source):]
        tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
        try:
            tf.io.gfile.copy(path, target, overwrite=True)
        except tf.errors.OpError:  # file systems without a copy (ram://)
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
            with tf.io.gfile.GFile(target, "wb") as f:
                f.write(data)


def _remove_tree(directory: str) -> None:
    for path in list(_files_under(directory)):
        tf.io.gfile.remove(path)
    try:
        tf.io.gfile.rmtree(directory)
    except tf.errors.OpError:
        pass  # no directory objects on this file system


def load_descriptor(export_dir: str):
    """The DatasetDescriptor stored with an export, or None if absent."""
    from max_deeplab_tf.data import dataset_info

    path = f"{export_dir.rstrip('/')}/{DESCRIPTOR_FILE}"
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        return dataset_info.DatasetDescriptor.from_json(f.read(), source=path)

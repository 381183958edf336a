"""SavedModel export, versioned as TF Serving reads it.

    version_dir = export_saved_model(model, experiment_options, export_dir,
                                     global_step)

writes EXPORT_DIR/<global_step>/, a SavedModel whose `serving_default`
signature takes uint8 images [batch, height, width, 3] of any size and
returns panoptic_pred, semantic_pred, instance_pred (int32), instance_scores,
semantic_scores (float32), all [batch, height, width], and
transformer_class_probs [batch, num_mask_slots, num_classes] (see `serving`).
It loads with plain `tf.saved_model.load` (no import of this project needed):

    served = tf.saved_model.load(version_dir).signatures["serving_default"]
    outputs = served(images=tf.constant(uint8_batch))

Beside the graph, VERSION/assets.extra/ holds dataset_descriptor.json
(class names, colours, label divisor, category ids: what the Predictor and
`predict` need to draw and write COCO files), experiment.textproto (the config
it was exported with) and export_info.json (global step and a fingerprint of
weights, serving config and classes); and, when
export_options.tflite_variants asks for them, the LiteRT models
model.tflite, model_float16.tflite, model_int8.tflite (see `tflite`; asking
for them again for an existing version adds the missing ones).

Nothing is ever removed or overwritten (see `versions`): EXPORT_DIR must be
new, empty or an export root of ours; the version is written to a temporary
name inside EXPORT_DIR and renamed into place. Exporting a step that already
has a version writes nothing when that version is the same export (same
weights, config and classes: re-running a finished command is harmless) and
is refused otherwise.

Consumers take either the root (its newest version) or a version folder:
`resolve_saved_model(path)`.
"""

import hashlib
import json
from typing import Optional

from absl import logging
import tensorflow as tf

from max_deeplab_tf import cli
from max_deeplab_tf.export import serving
from max_deeplab_tf.export import versions as versions_lib
from max_deeplab_tf.export.versions import check_export_root
from max_deeplab_tf.export.versions import list_versions
from max_deeplab_tf.export.versions import resolve_saved_model

DESCRIPTOR_FILE = "assets.extra/dataset_descriptor.json"
CONFIG_FILE = "assets.extra/experiment.textproto"
INFO_FILE = "assets.extra/export_info.json"


def export_crop_size(experiment_options):
    """export_options.crop_size, else eval_dataset_options.crop_size."""
    crop = (list(experiment_options.export_options.crop_size)
            or list(experiment_options.eval_dataset_options.crop_size))
    if len(crop) != 2 or min(crop) < 1:
        raise cli.UserError(
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
                       global_step: int, descriptor=None) -> str:
    """Writes the SavedModel of `model` as version `global_step` of
    export_dir.

    Args:
      model: keras model (images float32 0..255 -> output dictionary).
      experiment_options: ExperimentOptions (crop size, thresholds, dataset).
      export_dir: the export root (any tf.io.gfile path): new, empty or
        holding only versions of ours.
      global_step: the version number (the training step of the weights).
      descriptor: DatasetDescriptor; default: that of
        eval_dataset_options.dataset.

    Returns:
      The version folder, EXPORT_DIR/<global_step>.

    Raises:
      cli.UserError: export_dir holds something that is not an export of
        ours, or version `global_step` exists and is a different export.
    """
    from google.protobuf import text_format

    export_dir = export_dir.rstrip("/") or "/"
    tflite_variants = list(experiment_options.export_options.tflite_variants)
    if tflite_variants:
        from max_deeplab_tf.export import tflite  # refuses unknown variants
        tflite.check_variants(tflite_variants)
    check_export_root(export_dir)
    leftovers = versions_lib.stale_temporaries(export_dir)
    if leftovers:
        logging.warning(
            "%s holds %d folder(s) of an interrupted or concurrent export "
            "(%s); left as they are (delete them when no export runs)",
            export_dir, len(leftovers), ", ".join(leftovers[:3]))
    target = versions_lib.version_dir(export_dir, global_step)
    module = build_serving_module(model, experiment_options, descriptor)
    descriptor = module.descriptor
    config_text = text_format.MessageToString(experiment_options)
    info = {"global_step": int(global_step),
            "fingerprint": _fingerprint(
                module.model_variables,
                _serving_config_text(experiment_options),
                descriptor.to_json())}
    if tf.io.gfile.exists(target):
        if _read_info(target) == info:
            logging.info("%s already holds this export (same weights, config "
                         "and classes); nothing written", target)
            if tflite_variants:
                # LiteRT models asked for now are added beside the
                # SavedModel (existing files are kept as they are).
                tflite.export_tflite(model, experiment_options, target,
                                     descriptor=descriptor)
            return target
        raise cli.UserError(
            f"export_dir {export_dir}: version {int(global_step)} exists and "
            f"is a different export ({target}); export a model of another "
            "step, or into another export_dir (nothing was overwritten)")

    signature = module.serving_function()
    temporary = f"{export_dir}/{versions_lib.temporary_name(global_step)}"
    tf.io.gfile.makedirs(export_dir)
    tf.saved_model.save(module, temporary,
                        signatures={"serving_default": signature})
    tf.io.gfile.makedirs(f"{temporary}/assets.extra")
    for name, text in ((DESCRIPTOR_FILE, descriptor.to_json()),
                       (CONFIG_FILE, config_text),
                       (INFO_FILE, json.dumps(info, indent=1) + "\n")):
        with tf.io.gfile.GFile(f"{temporary}/{name}", "w") as f:
            f.write(text)
    if tflite_variants:
        tflite.export_tflite(model, experiment_options, temporary,
                             descriptor=descriptor)
    _move_into_place(temporary, target)
    return target


def _serving_config_text(experiment_options) -> str:
    """The parts of a config that shape the served graph: the model, the
    post-processing thresholds, the export options and the eval crop size.
    Data paths, the training options and the export folder do not (they may
    differ between the run that trained and a later --mode=export)."""
    from google.protobuf import text_format

    relevant = type(experiment_options)()
    relevant.model_options.CopyFrom(experiment_options.model_options)
    relevant.model_options.ClearField("initial_checkpoint")
    relevant.evaluator_options.CopyFrom(experiment_options.evaluator_options)
    relevant.export_options.CopyFrom(experiment_options.export_options)
    relevant.export_options.ClearField("export_dir")
    # The LiteRT files are extras of a version, added to it on request.
    relevant.export_options.ClearField("tflite_variants")
    relevant.eval_dataset_options.crop_size[:] = (
        experiment_options.eval_dataset_options.crop_size)
    return text_format.MessageToString(relevant)


def _fingerprint(variables, config_text: str, descriptor_json: str) -> str:
    """sha256 of the weights (in order), the serving config and the
    classes."""
    digest = hashlib.sha256()
    for variable in variables:
        digest.update(variable.numpy().tobytes())
    digest.update(config_text.encode())
    digest.update(descriptor_json.encode())
    return digest.hexdigest()


def _read_info(version: str) -> Optional[dict]:
    path = f"{version}/{INFO_FILE}"
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return json.loads(f.read())
    except (ValueError, tf.errors.OpError):
        return None


def _move_into_place(temporary: str, target: str) -> None:
    """Renames our temporary version folder to its version name."""
    if tf.io.gfile.exists(target):
        # Another export of the same step won the race while this one wrote.
        raise cli.UserError(
            f"{target} appeared while this export was written; the new "
            f"export stays in {temporary} (nothing was overwritten)")
    if "://" not in target:
        tf.io.gfile.rename(temporary, target, overwrite=False)
        return
    # Object stores (gs://, ram://) have no atomic directory rename: copy the
    # files, saved_model.pb (what loaders look for) last, then remove the
    # temporary folder this export made.
    _copy_tree(temporary, target)
    _remove_tree(temporary)


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
            tf.io.gfile.copy(path, target, overwrite=False)
        except tf.errors.OpError:  # file systems without a copy (ram://)
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
            with tf.io.gfile.GFile(target, "wb") as f:
                f.write(data)


def _remove_tree(directory: str) -> None:
    """Removes a temporary folder this module wrote (and nothing else)."""
    for path in list(_files_under(directory)):
        tf.io.gfile.remove(path)
    try:
        tf.io.gfile.rmtree(directory)
    except tf.errors.OpError:
        pass  # no directory objects on this file system


def load_descriptor(saved_model: str):
    """The DatasetDescriptor stored with an export, or None if absent.

    Args:
      saved_model: an export root or version folder (`resolve_saved_model`).
    """
    from max_deeplab_tf.data import dataset_info

    path = f"{resolve_saved_model(saved_model)}/{DESCRIPTOR_FILE}"
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path, "r") as f:
        return dataset_info.DatasetDescriptor.from_json(f.read(), source=path)

"""LiteRT (TFLite) export: the network and the post-processing in one file.

    paths = export_tflite(model, experiment_options, version_dir,
                          variants=("float32", "int8"))

writes VERSION/assets.extra/model.tflite (float32), model_float16.tflite
(float16 weights) and/or model_int8.tflite (dynamic-range int8 weights)
beside the version's dataset_descriptor.json (the class table a Predictor
reads). `export_saved_model` calls it when export_options.tflite_variants is
set, so `python -m trainer.main --mode=export` writes them.

Each model runs at one fixed size, the export crop size (`export_crop_size`):

    input  images           float32 [1, crop_height, crop_width, 3], 0..255,
                            the image resized to fit and padded with 127.5
                            (`serving.resize_and_pad`)
    output panoptic_pred, semantic_pred, instance_pred int32 and
           instance_scores, semantic_scores float32, [1, crop_height,
           crop_width] (the maps of the padded image: crop the padding away
           and resize back with `serving.crop_and_resize_back`)

The post-processing (class and mask argmaxes, confidence thresholds, area
limits) is inside the graph, so the interpreter gives the panoptic map
directly:

    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_path=".../model.tflite").get_signature_runner()
    panoptic = runner(images=padded_float32_image)["panoptic_pred"]

Every op converts to a LiteRT builtin (the converter is run with
TFLITE_BUILTINS only, so a graph that would need the TF-ops fallback fails
to convert instead of silently needing the Flex delegate).

Each file is written under a temporary name in its folder and renamed into
place; an existing file is never replaced (a version's models are made from
the version's own weights, so an existing one is the same model).
"""

from typing import Dict, List, Optional, Sequence

import tensorflow as tf

from max_deeplab_tf import cli
from max_deeplab_tf import common

VARIANTS = ("float32", "float16", "int8")
# The float32 model is the plain model.tflite; the others are named by
# their weight type.
FILE_NAMES = {"float32": "model.tflite",
              "float16": "model_float16.tflite",
              "int8": "model_int8.tflite"}
# Folder of a version the models go to: beside dataset_descriptor.json, and
# inside what TF Serving and `versions` take as part of a SavedModel.
TFLITE_DIR = "assets.extra"
INPUT_NAME = "images"
MAP_KEYS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
            common.PRED_INSTANCE_KEY, common.PRED_INSTANCE_SCORES_KEY,
            common.PRED_SEMANTIC_SCORES_KEY)


def check_variants(variants: Sequence[str]) -> List[str]:
    """The variants, deduplicated in the order of VARIANTS.

    Raises:
      cli.UserError: a name that is not one of VARIANTS.
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise cli.UserError(
            f"export_options.tflite_variants: unknown {unknown[0]!r}; "
            f"expected any of {', '.join(VARIANTS)}")
    return [v for v in VARIANTS if v in variants]


class TFLiteModule:
    """The model and post-processing at a fixed size, frozen for the
    converter.

    Args:
      model: keras model (float32 images 0..255 -> output dictionary).
      post_processor: inference.PostProcessor.
      crop_size: [crop_height, crop_width] of the input and the maps.
    """

    def __init__(self, model, post_processor, crop_size: Sequence[int]):
        self._model = model
        self._post_processor = post_processor
        self._crop_size = [int(c) for c in crop_size]
        self._function = None

    @property
    def crop_size(self) -> List[int]:
        return list(self._crop_size)

    def __call__(self, images):
        """float32 [1, crop_h, crop_w, 3] -> dict of [1, crop_h, crop_w]."""
        outputs = self._model(images, training=False)
        processed = self._post_processor(outputs, output_size=self._crop_size)
        return {key: processed[key] for key in MAP_KEYS}

    def concrete_function(self):
        """The traced function, its variables frozen into constants (traced
        and frozen once, for all variants)."""
        if self._function is not None:
            return self._function
        # Not in TF's public API, but the converter's own freezing step:
        # freezing here once, rather than letting the converter save the
        # ~400 variables into a temporary SavedModel for each variant,
        # makes a conversion about three times faster.
        from tensorflow.python.framework import convert_to_constants

        spec = tf.TensorSpec([1] + self._crop_size + [3], tf.float32,
                             name=INPUT_NAME)
        traced = tf.function(self.__call__, input_signature=[spec]
                             ).get_concrete_function()
        frozen = convert_to_constants.convert_variables_to_constants_v2(
            traced)
        # The frozen function returns a flat list; the dictionary gives the
        # model's signature its output names (panoptic_pred, ...).
        self._function = tf.function(
            lambda images: tf.nest.pack_sequence_as(
                traced.structured_outputs, frozen(images)),
            input_signature=[spec]).get_concrete_function()
        return self._function


def build_tflite_module(model, experiment_options,
                        descriptor=None) -> TFLiteModule:
    """The TFLiteModule of a model at its config's export crop size."""
    from max_deeplab_tf import export
    from max_deeplab_tf.data import dataset_info
    from max_deeplab_tf.inference import post_processing

    if descriptor is None:
        descriptor = dataset_info.get_dataset_descriptor(
            experiment_options.eval_dataset_options.dataset)
    crop = export.export_crop_size(experiment_options)
    post_processor = post_processing.PostProcessor(
        experiment_options.evaluator_options, descriptor, output_size=crop)
    return TFLiteModule(model, post_processor, crop)


def convert(module: TFLiteModule, variant: str) -> bytes:
    """The .tflite flatbuffer of `module` in one variant.

    Args:
      module: a TFLiteModule.
      variant: "float32" (as trained), "float16" (weights stored as float16,
        computed in float32) or "int8" (dynamic-range quantisation: weights
        int8, activations quantised on the fly where a kernel supports it).

    Returns:
      The model as bytes.
    """
    check_variants([variant])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.concrete_function()], tf.Module())
    # Builtins only: a graph needing SELECT_TF_OPS fails here instead of
    # needing the Flex delegate at run time.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant in ("float16", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def tflite_path(version_dir: str, variant: str = "float32") -> str:
    """VERSION/assets.extra/<file of the variant>."""
    check_variants([variant])
    return f"{version_dir.rstrip('/')}/{TFLITE_DIR}/{FILE_NAMES[variant]}"


def write_file(data: bytes, path: str) -> bool:
    """Writes `data` to `path` through a temporary name in its folder.

    Returns:
      False (nothing written) when `path` exists: it is never replaced.
    """
    from max_deeplab_tf.training import files

    return files.write_atomically(path, data, binary=True, overwrite=False)


def export_tflite(model, experiment_options, version_dir: str,
                  variants: Optional[Sequence[str]] = None,
                  descriptor=None) -> Dict[str, str]:
    """Writes the .tflite models of `model` into VERSION/assets.extra/.

    Args:
      model: keras model (images float32 0..255 -> output dictionary), the
        one whose SavedModel is (or is being written) in version_dir.
      experiment_options: ExperimentOptions (crop size, thresholds,
        dataset).
      version_dir: the version folder (or its temporary folder).
      variants: any of VARIANTS; default export_options.tflite_variants.
      descriptor: DatasetDescriptor; default: that of
        eval_dataset_options.dataset.

    Returns:
      {variant: path} of every requested model (written now or already
      there).

    Raises:
      cli.UserError: an unknown variant.
    """
    from absl import logging

    if variants is None:
        variants = list(experiment_options.export_options.tflite_variants)
    variants = check_variants(variants)
    paths = {variant: tflite_path(version_dir, variant)
             for variant in variants}
    missing = [v for v in variants if not tf.io.gfile.exists(paths[v])]
    if missing:
        module = build_tflite_module(model, experiment_options, descriptor)
        for variant in missing:
            data = convert(module, variant)
            if write_file(data, paths[variant]):
                # The folder may still be the version's temporary name.
                logging.info("Wrote the %s LiteRT model %s/%s (%.2f MB)",
                             variant, TFLITE_DIR, FILE_NAMES[variant],
                             len(data) / 1e6)
    return paths

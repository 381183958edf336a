"""The Python inference API: a trained MaX-DeepLab on images, in three lines.

    from max_deeplab_tf import Predictor
    predictor = Predictor.from_saved_model("model/export")  # newest version
    result = predictor("photo.jpg")     # or a uint8 array, a PIL image, a list

`result` is a `Prediction`: the panoptic, semantic and instance maps at the
image's size, `result.segments` (id, class name, is_thing, area, score) and
`result.overlay()`, the image with its segments and a legend of class names.
A single image gives one Prediction; a batch ([batch, height, width, 3]
array, or a list of images of any sizes) gives a list.

Image files are decoded as the trainer's input pipeline decodes them
(`read_image`), so a file gives the prediction the trainer's evaluation
makes; arrays and PIL images are used as given.

`Predictor.from_checkpoint(model_dir)` builds the model from the experiment
config and restores the latest checkpoint instead (no export needed).
`Predictor.from_tflite("model/export/1500/assets.extra/model.tflite")` (or
`from_saved_model` given a .tflite path) runs a LiteRT model of the export
(`max_deeplab_tf.export.tflite`) with the LiteRT interpreter.

All three run what the exported `serving_default` signature runs (see
`max_deeplab_tf.export.serving`): resize to fit the crop size, the model,
deeplab2's post-processing, and the maps resized back to the image.
"""

import dataclasses
import functools
import io
import os
from typing import Any, Callable, List, Optional, Sequence, Union

import numpy as np

from max_deeplab_tf import cli
from max_deeplab_tf import common
from max_deeplab_tf.inference import visualization

# Images per call of the network when a batch is given.
DEFAULT_BATCH_SIZE = 8
# The config the importer writes into its output folder (a model_dir).
MODEL_DIR_CONFIG = "experiment.textproto"


@dataclasses.dataclass(frozen=True)
class Segment:
    """One segment of a panoptic prediction.

    Attributes:
      id: its value in `Prediction.panoptic` (semantic * label_divisor +
        instance).
      class_id: semantic id (index into the descriptor's classes).
      class_name: the class's name.
      is_thing: a countable object (its own instance) rather than stuff.
      area: pixels, at the image's size.
      score: mean over the segment's pixels of the mask slot's class
        confidence times the pixel's mask confidence (Mask2Former's
        segment score), in [0, 1].
      category_id: the source dataset's category id (COCO's 1..200), or the
        class id when the dataset has none.
    """

    id: int
    class_id: int
    class_name: str
    is_thing: bool
    area: int
    score: float
    category_id: int


@dataclasses.dataclass(repr=False)
class Prediction:
    """A model's panoptic prediction for one image.

    Attributes:
      image: uint8 [height, width, 3], the RGB image predicted on.
      panoptic: int32 [height, width], semantic * label_divisor + instance;
        void pixels are ignore_label * label_divisor.
      semantic: int32 [height, width], semantic ids (no void).
      instance: int32 [height, width], mask slot + 1.
      instance_scores: float32 [height, width], each pixel's mask confidence.
      semantic_scores: float32 [height, width], the class confidence of each
        pixel's mask slot.
      descriptor: the dataset's DatasetDescriptor (classes, label divisor).
    """

    image: np.ndarray
    panoptic: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray
    instance_scores: np.ndarray
    semantic_scores: np.ndarray
    descriptor: Any

    @functools.cached_property
    def segments(self) -> List[Segment]:
        """The non-void segments, by id."""
        descriptor = self.descriptor
        ids, inverse, areas = np.unique(self.panoptic.ravel(),
                                        return_inverse=True,
                                        return_counts=True)
        score_sums = np.bincount(
            inverse, weights=(self.semantic_scores * self.instance_scores
                              ).ravel().astype(np.float64),
            minlength=len(ids))
        things = set(descriptor.thing_class_ids)
        categories = descriptor.category_ids
        segments = []
        for value, area, score_sum in zip(ids.tolist(), areas.tolist(),
                                          score_sums.tolist()):
            class_id = value // descriptor.label_divisor
            if (class_id == descriptor.ignore_label or class_id < 0
                    or class_id >= descriptor.num_classes):
                continue
            segments.append(Segment(
                id=int(value), class_id=int(class_id),
                class_name=visualization.class_name(descriptor, class_id),
                is_thing=class_id in things, area=int(area),
                score=float(score_sum / area),
                category_id=int(categories[class_id]
                                if len(categories) == descriptor.num_classes
                                else class_id)))
        return segments

    def __repr__(self):
        height, width = self.panoptic.shape
        names = sorted({s.class_name for s in self.segments})
        return (f"Prediction({height}x{width}, {len(self.segments)} "
                f"segment(s): {', '.join(names) or 'none'})")

    def overlay(self, legend: bool = True):
        """The image with segment colours, white boundaries and a legend of
        the classes present (to its right).

        Returns:
          PIL.Image.Image, RGB, [width + legend width] x [height] (taller
          when the legend needs it).
        """
        from PIL import Image

        return Image.fromarray(visualization.overlay(
            self.image, self.panoptic, self.descriptor, show_legend=legend))


ImageInput = Union[np.ndarray, str, os.PathLike, "PIL.Image.Image"]


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
    """An image file (local or any tf.io.gfile path) -> uint8 [h, w, 3].

    Decoded as the converter and the input pipeline decode it (JPEG and PNG
    in RGB or grayscale by `data.tfrecord.decode_image`, other images through
    Pillow's RGB conversion), so that a file predicted here is, pixel for
    pixel, the image the trainer's evaluation sees. The EXIF orientation is
    then applied, grayscale is repeated over the channels and alpha is
    dropped.

    Raises:
      cli.UserError: naming the file when it cannot be read as an image.
    """
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    try:
        if "://" in path:
            import tensorflow as tf
            with tf.io.gfile.GFile(path, "rb") as f:
                data = f.read()
        else:
            with open(path, "rb") as f:
                data = f.read()
        with Image.open(io.BytesIO(data)) as image:
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
            if image.format in ("JPEG", "PNG") and image.mode in ("RGB", "L"):
                array = _decode_as_the_pipeline(data)
            else:
                array = np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError,
            Image.DecompressionBombError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, UnidentifiedImageError):
            reason = "not a known image format"
        raise cli.UserError(f"{path}: not a readable image ({reason})"
                            ) from None
    except Exception as e:  # pylint: disable=broad-except
        # gfile (remote paths) and the decoder raise tf.errors.*, which must
        # not surface as TensorFlow internals.
        if type(e).__module__.startswith("tensorflow"):
            message = getattr(e, "message", str(e)).strip().splitlines()
            raise cli.UserError(
                f"{path}: cannot read ({message[0] if message else e})"
            ) from None
        raise
    if orientation in _EXIF_TRANSPOSE:
        array = np.asarray(Image.fromarray(array).transpose(
            getattr(Image.Transpose, _EXIF_TRANSPOSE[orientation])))
    return array


# EXIF orientation tag -> the transposition that shows the image upright
# (as PIL.ImageOps.exif_transpose).
_EXIF_ORIENTATION = 0x0112
_EXIF_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM",
                   5: "TRANSPOSE", 6: "ROTATE_270", 7: "TRANSVERSE",
                   8: "ROTATE_90"}


def _decode_as_the_pipeline(data: bytes) -> np.ndarray:
    import tensorflow as tf

    from max_deeplab_tf.data import tfrecord

    return tfrecord.decode_image(tf.constant(data)).numpy()


def as_rgb(image: ImageInput, what: str = "image") -> np.ndarray:
    """One image (array, path or PIL image) -> uint8 [height, width, 3]."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if type(image).__module__.startswith("PIL."):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise cli.UserError(
            f"{what}: expected uint8 values 0..255, got dtype {array.dtype}")
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or min(
            array.shape[:2]) < 1:
        raise cli.UserError(
            f"{what}: expected [height, width, 3] (or [batch, height, width, "
            f"3]), got shape {array.shape}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


class Predictor:
    """Runs a MaX-DeepLab (SavedModel or checkpoint) on images.

    Args:
      predict_fn: uint8 tf.Tensor [batch, height, width, 3] -> dict with
        the serving signature's maps (panoptic_pred, ... at that size).
      descriptor: DatasetDescriptor of the model's classes.
      batch_size: images per call of predict_fn.
      source: what was loaded (for messages).
    """

    def __init__(self, predict_fn: Callable, descriptor,
                 batch_size: int = DEFAULT_BATCH_SIZE, source: str = ""):
        if batch_size < 1:
            raise cli.UserError(f"batch_size: expected >= 1, got {batch_size}")
        self._predict_fn = predict_fn
        self.descriptor = descriptor
        self.batch_size = int(batch_size)
        self.source = source

    @classmethod
    def from_saved_model(cls, path: str, dataset: Optional[str] = None,
                         batch_size: int = DEFAULT_BATCH_SIZE) -> "Predictor":
        """A Predictor of an export.

        Args:
          path: an export root (its newest version is used) or a version
            folder (see `max_deeplab_tf.export.resolve_saved_model`).
          dataset: dataset name or descriptor JSON; default the export's
            assets.extra/dataset_descriptor.json.
          batch_size: images per call.

        Raises:
          cli.UserError: the path is no SavedModel (one line; a model_dir
            is answered with its export folder) or has no class table.
        """
        import tensorflow as tf

        from max_deeplab_tf import export

        if os.fspath(path).endswith(".tflite"):
            return cls.from_tflite(path, dataset, batch_size)
        version = export.resolve_saved_model(path)
        descriptor = _descriptor(dataset, export.load_descriptor(version),
                                 version)
        try:
            loaded = tf.saved_model.load(version)
            served = loaded.signatures["serving_default"]
        except (OSError, KeyError, ValueError, tf.errors.OpError) as e:
            reason = getattr(e, "message", str(e)).strip().splitlines()
            raise cli.UserError(
                f"{version}: cannot load a SavedModel with a serving_default "
                f"signature ({reason[0] if reason else type(e).__name__})"
            ) from None

        def predict_fn(images):
            return served(images=images)

        predict_fn.loaded = loaded  # keeps the variables alive
        return cls(predict_fn, descriptor, batch_size, source=version)

    @classmethod
    def from_tflite(cls, path: str, dataset: Optional[str] = None,
                    batch_size: int = DEFAULT_BATCH_SIZE,
                    num_threads: Optional[int] = None) -> "Predictor":
        """A Predictor of a LiteRT (TFLite) model written by the export.

        The model runs at its fixed size [1, crop_height, crop_width, 3]:
        each image is resized to fit and padded, and the maps are cropped and
        resized back, by the functions the SavedModel's signature runs
        (`export.serving`), eagerly around the interpreter, one image at a
        time. The post-processing is inside the .tflite file.

        Args:
          path: a .tflite file (any tf.io.gfile path), or an export root or
            version folder (its assets.extra/model.tflite, the float32
            model).
          dataset: dataset name or descriptor JSON; default the
            dataset_descriptor.json beside the file (the export writes both
            into VERSION/assets.extra/).
          batch_size: images per group of same-size images (the interpreter
            still runs one at a time).
          num_threads: interpreter threads; default os.cpu_count().

        Raises:
          cli.UserError: no such file, not a model of our export (one line),
            or no class table.
        """
        import tensorflow as tf

        from max_deeplab_tf import export
        from max_deeplab_tf.data import dataset_info
        from max_deeplab_tf.export import serving
        from max_deeplab_tf.export import tflite

        path = os.fspath(path).rstrip("/")
        if not path.endswith(".tflite"):
            path = tflite.tflite_path(export.resolve_saved_model(path))
        if not tf.io.gfile.exists(path):
            raise cli.UserError(
                f"{path}: no such LiteRT (.tflite) model (the export writes "
                "them with export_options.tflite_variants)")
        stored = None
        descriptor_path = f"{os.path.dirname(path) or '.'}/{_DESCRIPTOR_NAME}"
        if not dataset and tf.io.gfile.exists(descriptor_path):
            with tf.io.gfile.GFile(descriptor_path, "r") as f:
                stored = dataset_info.DatasetDescriptor.from_json(
                    f.read(), source=descriptor_path)
        if not dataset and stored is None:
            raise cli.UserError(
                f"{path}: no {_DESCRIPTOR_NAME} beside it; name the dataset "
                "(--dataset / dataset=) as a dataset name or descriptor JSON")
        descriptor = _descriptor(dataset, stored, path)
        runner, crop = _tflite_runner(path, num_threads)

        def predict_fn(images):
            output_size = tf.shape(images)[1:3]
            padded, resized_size = serving.resize_and_pad(images, crop)
            outputs = [runner(**{tflite.INPUT_NAME: padded[i:i + 1].numpy()})
                       for i in range(padded.shape[0])]
            return {key: serving.crop_and_resize_back(
                tf.constant(np.concatenate([o[key] for o in outputs])),
                resized_size, output_size) for key in tflite.MAP_KEYS}

        return cls(predict_fn, descriptor, batch_size, source=path)

    @classmethod
    def from_checkpoint(cls, model_dir: str,
                        config_file: Optional[str] = None,
                        config_overrides: Sequence[str] = (),
                        checkpoint: Optional[str] = None,
                        dataset: Optional[str] = None,
                        batch_size: int = DEFAULT_BATCH_SIZE) -> "Predictor":
        """A Predictor of a trainer's (or the importer's) checkpoint.

        Args:
          model_dir: the folder of the checkpoints.
          config_file: the experiment textproto; default
            MODEL_DIR/experiment.textproto (written by the deeplab2
            importer). Its data paths are not read, so unset ${VARIABLES}
            are left as they are.
          config_overrides: textproto snippets applied to the config.
          checkpoint: a checkpoint prefix; default the latest in model_dir.
          dataset: dataset name or descriptor JSON; default the config's
            eval_dataset_options.dataset.
          batch_size: images per call.
        """
        import tensorflow as tf

        import max_deeplab_tf
        from max_deeplab_tf import config as config_lib
        from max_deeplab_tf import export
        from max_deeplab_tf import model as model_lib
        from max_deeplab_tf.data import dataset_info
        from max_deeplab_tf.training import checkpoints

        model_dir = model_dir.rstrip("/")
        config_file = config_file or f"{model_dir}/{MODEL_DIR_CONFIG}"
        if not tf.io.gfile.exists(config_file):
            raise cli.UserError(
                f"{config_file}: no experiment config; pass config_file= "
                "(the textproto the model was trained with)")
        config = config_lib.load_experiment(
            config_file, config_overrides, environ=_KeepUnsetVariables())
        prefix = checkpoint or tf.train.latest_checkpoint(model_dir)
        if not prefix:
            raise cli.UserError(f"{model_dir}: holds no checkpoint")
        descriptor = (dataset_info.get_dataset_descriptor(dataset) if dataset
                      else dataset_info.get_dataset_descriptor(
                          config.eval_dataset_options.dataset))
        crop = export.export_crop_size(config)
        model = max_deeplab_tf.build_model(config)
        model_lib.build_for_input_size(model, crop[0], crop[1])
        try:
            # Training checkpoints also hold the optimizer; only the model is
            # read (expect_partial), and every model variable must be there.
            tf.train.Checkpoint(model=checkpoints.model_view(model)).restore(
                prefix).expect_partial().assert_existing_objects_matched()
        except (AssertionError, ValueError, tf.errors.OpError) as e:
            reason = str(getattr(e, "message", e)).strip().splitlines()
            raise cli.UserError(
                f"{prefix}: not a checkpoint of the model of {config_file} "
                f"({reason[0] if reason else type(e).__name__})") from None
        module = export.build_serving_module(model, config, descriptor)
        predict_fn = module.serving_function()
        return cls(lambda images: predict_fn(images=images), descriptor,
                   batch_size, source=prefix)

    def __call__(self, images) -> Union[Prediction, List[Prediction]]:
        """Predicts on one image or a batch.

        Args:
          images: one image: uint8 [height, width, 3] (or [h, w] gray, or
            RGBA), a file path, a PIL image; or a batch: uint8 [batch,
            height, width, 3], or a list/tuple of single images of any sizes.

        Returns:
          A Prediction for one image, a list of them for a batch.
        """
        if isinstance(images, (list, tuple)):
            return self._predict_many(
                [as_rgb(image, f"images[{index}]")
                 for index, image in enumerate(images)])
        if isinstance(images, np.ndarray) and images.ndim == 4:
            return self._predict_many(
                [as_rgb(image, f"images[{index}]")
                 for index, image in enumerate(images)])
        return self._predict_many([as_rgb(images)])[0]

    def _predict_many(self, images: List[np.ndarray]) -> List[Prediction]:
        """Runs consecutive images of one size together, batch_size at a
        time."""
        results = []
        start = 0
        while start < len(images):
            end = start + 1
            while (end < len(images) and end - start < self.batch_size
                   and images[end].shape == images[start].shape):
                end += 1
            results.extend(self._predict_batch(np.stack(images[start:end])))
            start = end
        return results

    def _predict_batch(self, batch: np.ndarray) -> List[Prediction]:
        import tensorflow as tf

        outputs = {key: value.numpy() for key, value in
                   self._predict_fn(tf.constant(batch, tf.uint8)).items()}
        return [Prediction(
            image=image,
            panoptic=outputs[common.PRED_PANOPTIC_KEY][i],
            semantic=outputs[common.PRED_SEMANTIC_KEY][i],
            instance=outputs[common.PRED_INSTANCE_KEY][i],
            instance_scores=outputs[common.PRED_INSTANCE_SCORES_KEY][i],
            semantic_scores=outputs[common.PRED_SEMANTIC_SCORES_KEY][i],
            descriptor=self.descriptor) for i, image in enumerate(batch)]

    def __repr__(self):
        return (f"Predictor({self.source!r}, dataset "
                f"{self.descriptor.name!r}, {self.descriptor.num_classes} "
                "classes)")


# The class table the export writes beside its .tflite files.
_DESCRIPTOR_NAME = "dataset_descriptor.json"


def _tflite_runner(path: str, num_threads: Optional[int]):
    """(signature runner, [crop_height, crop_width]) of a .tflite file of
    our export (input `images` [1, h, w, 3], outputs panoptic_pred, ...).

    Raises:
      cli.UserError: the file is no LiteRT model or not one of ours.
    """
    import tensorflow as tf

    from max_deeplab_tf.export import tflite

    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        raise cli.UserError(
            f"{path}: running a .tflite model needs the LiteRT interpreter: "
            "pip install ai-edge-litert") from None

    with tf.io.gfile.GFile(path, "rb") as f:
        content = f.read()
    try:
        interpreter = Interpreter(model_content=content,
                                  num_threads=num_threads or os.cpu_count())
        signatures = interpreter.get_signature_list()
        runner = interpreter.get_signature_runner()
    except (ValueError, RuntimeError) as e:
        reason = str(e).strip().splitlines()
        raise cli.UserError(
            f"{path}: not a LiteRT model with one signature "
            f"({reason[0] if reason else type(e).__name__})") from None
    (signature,) = signatures.values()
    inputs = runner.get_input_details()
    shape = (list(inputs[tflite.INPUT_NAME]["shape"])
             if tflite.INPUT_NAME in inputs else [])
    missing = sorted(set(tflite.MAP_KEYS) - set(signature["outputs"]))
    if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or missing:
        raise cli.UserError(
            f"{path}: not a model of this project's LiteRT export (expected "
            f"input {tflite.INPUT_NAME!r} [1, height, width, 3] and outputs "
            f"{', '.join(tflite.MAP_KEYS)}; got {signature})")
    # The runner holds the interpreter.
    return runner, [int(shape[1]), int(shape[2])]


def _descriptor(dataset: Optional[str], stored, saved_model: str):
    """The class table: --dataset / dataset= wins over the export's."""
    from max_deeplab_tf.data import dataset_info

    if dataset:
        try:
            return dataset_info.get_dataset_descriptor(dataset)
        except ValueError as e:
            raise cli.UserError(f"dataset {dataset!r}: {e}") from None
    if stored is None:
        raise cli.UserError(
            f"{saved_model}: has no assets.extra/dataset_descriptor.json; "
            "name the dataset (--dataset / dataset=) as a dataset name or "
            "descriptor JSON")
    return stored


class _KeepUnsetVariables(dict):
    """An environment in which an unset ${NAME} stays '${NAME}': inference
    reads no data, so the data paths of a config need not be set."""

    def __init__(self):
        super().__init__(os.environ)

    def __contains__(self, name):
        return True

    def __getitem__(self, name):
        return os.environ.get(name, "${" + name + "}")

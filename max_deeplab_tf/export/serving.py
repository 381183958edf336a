"""The serving module exported as a SavedModel, and the pre/post steps.

Serving takes uint8 images of any size, [batch, height, width, 3], and:

1. Resizes them, keeping the aspect ratio, to fit in the crop size
   (deeplab2's eval resizing: bilinear with corners aligned), to
   [resized_height, resized_width] with scale = min(crop_h / height,
   crop_w / width).
2. Pads at the bottom and right to the crop size with 127.5, i.e. with 0
   after the model's x / 127.5 - 1 normalisation, as deeplab2 pads.
3. Runs the model and the post-processing at the crop size (the area limits
   therefore count pixels at the network's resolution, as in evaluation).
4. Crops the padding away and resizes the maps back to [height, width] with
   nearest neighbour (corners aligned), as deeplab2's
   undo_preprocessing_for_predictions.

Outputs: panoptic_pred, semantic_pred, instance_pred int32 and
instance_scores, semantic_scores float32, all [batch, height, width]; and
transformer_class_probs float32 [batch, num_mask_slots, num_classes] (softmax
over the classes, void last) when asked for.
"""

from typing import Dict, Sequence

import tensorflow as tf

from max_deeplab_tf import common

PRED_TRANSFORMER_CLASS_PROBS_KEY = "transformer_class_probs"
# Value of the padding before normalisation: 0 after x / 127.5 - 1.
PAD_VALUE = 127.5

_MAP_KEYS = (common.PRED_PANOPTIC_KEY, common.PRED_SEMANTIC_KEY,
             common.PRED_INSTANCE_KEY, common.PRED_INSTANCE_SCORES_KEY,
             common.PRED_SEMANTIC_SCORES_KEY)


def fit_size(height: tf.Tensor, width: tf.Tensor,
             crop_size: Sequence[int]) -> tf.Tensor:
    """[resized_height, resized_width] int32: the largest size with the
    image's aspect ratio that fits in crop_size (each at least 1)."""
    h = tf.cast(height, tf.float64)
    w = tf.cast(width, tf.float64)
    scale = tf.minimum(crop_size[0] / h, crop_size[1] / w)
    # Halves round up (tf.round would round them to even).
    size = tf.floor(tf.stack([h * scale, w * scale]) + 0.5)
    size = tf.clip_by_value(size, 1.0, tf.constant(
        [float(crop_size[0]), float(crop_size[1])], tf.float64))
    return tf.cast(size, tf.int32)


def resize_and_pad(images: tf.Tensor, crop_size: Sequence[int]):
    """Step 1 and 2.

    Args:
      images: [batch, height, width, 3], any numeric dtype, values 0..255.
      crop_size: static [crop_height, crop_width].

    Returns:
      (float32 [batch, crop_height, crop_width, 3], int32 [2] resized size).
    """
    shape = tf.shape(images)
    resized_size = fit_size(shape[1], shape[2], crop_size)
    resized = tf.raw_ops.ResizeBilinear(
        images=tf.cast(images, tf.float32), size=resized_size,
        align_corners=True, half_pixel_centers=False)
    padded = tf.pad(resized,
                    [[0, 0], [0, crop_size[0] - resized_size[0]],
                     [0, crop_size[1] - resized_size[1]], [0, 0]],
                    constant_values=PAD_VALUE)
    padded = tf.ensure_shape(padded, [None, crop_size[0], crop_size[1], 3])
    return padded, resized_size


def _nearest_indices(source: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Align-corners nearest source index of each of `target` positions."""
    scale = tf.cast(source - 1, tf.float32) / tf.cast(
        tf.maximum(target - 1, 1), tf.float32)
    positions = tf.cast(tf.range(target), tf.float32) * scale
    return tf.minimum(tf.cast(tf.floor(positions + 0.5), tf.int32),
                      source - 1)


def crop_and_resize_back(maps: tf.Tensor, resized_size: tf.Tensor,
                         output_size: tf.Tensor) -> tf.Tensor:
    """Step 4 for one [batch, crop_height, crop_width] map."""
    cropped = maps[:, :resized_size[0], :resized_size[1]]
    rows = _nearest_indices(resized_size[0], output_size[0])
    cols = _nearest_indices(resized_size[1], output_size[1])
    return tf.gather(tf.gather(cropped, rows, axis=1), cols, axis=2)


def predict(model, post_processor, images: tf.Tensor,
            crop_size: Sequence[int],
            include_class_probabilities: bool = True) -> Dict[str, tf.Tensor]:
    """Steps 1 to 4 (what the SavedModel signature computes).

    Args:
      model: keras model, float32 [batch, crop_h, crop_w, 3] (0..255) ->
        output dictionary.
      post_processor: inference.PostProcessor.
      images: [batch, height, width, 3] uint8 (or float 0..255).
      crop_size: [crop_height, crop_width].
      include_class_probabilities: also return the per-slot class softmax.

    Returns:
      Dict of [batch, height, width] maps (see the module docstring).
    """
    images = tf.convert_to_tensor(images)
    images.shape.assert_has_rank(4)
    output_size = tf.shape(images)[1:3]
    padded, resized_size = resize_and_pad(images, crop_size)
    outputs = model(padded, training=False)
    processed = post_processor(outputs, output_size=list(crop_size))
    result = {key: crop_and_resize_back(processed[key], resized_size,
                                        output_size)
              for key in _MAP_KEYS}
    if include_class_probabilities:
        result[PRED_TRANSFORMER_CLASS_PROBS_KEY] = tf.nn.softmax(tf.cast(
            outputs[common.PRED_TRANSFORMER_CLASS_LOGITS_KEY], tf.float32),
            axis=-1)
    return result


class _Untracked:
    """Holds an object out of sight of tf.Module's dependency tracking."""

    def __init__(self, value):
        self.value = value


class ServingModule(tf.Module):
    """tf.Module holding the model variables; serving_function() is what
    the serving_default signature runs.

    Args:
      model: the keras model.
      post_processor: inference.PostProcessor.
      crop_size: [crop_height, crop_width] the network runs at.
      include_class_probabilities: see `predict`.
    """

    def __init__(self, model, post_processor, crop_size: Sequence[int],
                 include_class_probabilities: bool = True):
        super().__init__(name="max_deeplab_serving")
        # Only the variables are tracked: walking the keras object graph
        # makes tf.saved_model.save trace every layer function it finds
        # (slow), and serving needs nothing but the weights.
        self.model_variables = list(model.variables)
        self._model = _Untracked(model)
        self._post_processor = post_processor
        self._crop_size = [int(c) for c in crop_size]
        self._include_probs = include_class_probabilities

    @property
    def descriptor(self):
        return self._post_processor.descriptor

    def __call__(self, images):
        """uint8 [batch, height, width, 3] -> dict of maps at that size."""
        return predict(self._model.value, self._post_processor, images,
                       self._crop_size, self._include_probs)

    def serving_function(self):
        """The concrete function to save as the serving_default signature.

        Not kept on the module: tf.saved_model.save would trace a tf.function
        attribute again for the object graph, doubling the export time.
        """
        return tf.function(self.__call__, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")
        ]).get_concrete_function()

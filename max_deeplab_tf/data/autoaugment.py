"""AutoAugment for panoptic segmentation: deeplab2's policies, label-aware.

deeplab2 trains its COCO MaX-DeepLab models with
`augmentations { autoaugment_policy_name: "simple_classification_policy" }`
(Cityscapes and Panoptic-DeepLab with "..._magnitude_scale_0.2"). A policy is
a list of sub-policies, each a list of (operation, probability, magnitude);
per image one sub-policy is drawn uniformly and each of its operations is
applied with its probability (Cubuk et al., "AutoAugment", CVPR 2019).

    augment = AutoAugment("simple_classification_policy",
                          label_fill_value=ignore_label * label_divisor)
    image, label = augment(image, label)   # float [H, W, 3] 0..255, int [H, W]

Operations and their magnitude-to-argument mapping (magnitude 0..10) are
those of deeplab2's data/preprocessing/autoaugment_utils.py, which are the
ones of tf-models-official's `official.vision.ops.augment`; its functions are
used wherever they compute the same thing. Two things are written here:

- `Contrast`, because deeplab2's differs from tf-models-official's
  (`tf.image.adjust_contrast`, per-channel mean): deeplab2 blends towards a
  constant grey image whose value is the image's PIXEL COUNT / 256 (the sum
  of its 256-bin histogram over 256, clipped to 255), not its mean grey
  level. It is reproduced as is, so that a model trained here sees the inputs
  a deeplab2 model saw (on COCO-sized inputs the constant is 255).
- the geometric operations (`Rotate`, `ShearX`, `ShearY`, `TranslateX`,
  `TranslateY`), which move the label with the image: both are resampled
  with the same nearest-neighbour transform, image pixels from outside the
  input take deeplab2's replace value 128 and label pixels the label fill
  value (deeplab2 passes ignore_label there, which for panoptic labels is
  ignore_label * label_divisor). deeplab2's published policies use only
  photometric operations (its search space is the reduced one below); the
  geometric ones serve custom policies (`AutoAugment(policy=[...])`).

Photometric operations change the image only. Everything is graph-mode
TensorFlow (tf.cond per operation, no Python callbacks), keeps the input's
shape (static where the input's is) and runs inside tf.data.
"""

import math
from typing import Callable, Dict, Optional, Sequence, Tuple

import tensorflow as tf
from official.vision.ops import augment

from max_deeplab_tf import cli

# The largest magnitude a policy may give (_MAX_LEVEL of deeplab2, tf-models).
MAX_LEVEL = 10.0
# Image fill of the geometric operations (deeplab2's replace_value).
IMAGE_FILL_VALUE = 128
# Pixels moved by a translation of magnitude MAX_LEVEL (tf-models-official's
# AutoAugment default, from the AutoAugment paper).
TRANSLATE_CONST = 250.0

# deeplab2's reduced operation space and probability grid, in which its
# policies are encoded (autoaugment_policy.py).
REDUCED_OPERATIONS = ("AutoContrast", "Equalize", "Invert", "Posterize",
                      "Solarize", "Color", "Contrast", "Brightness",
                      "Sharpness")
PROBABILITIES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

# deeplab2's simple_classification_policy, decoded from its integer form:
# five sub-policies of two (operation, probability, magnitude) each.
SIMPLE_CLASSIFICATION_POLICY = (
    (("Sharpness", 0.4, 7), ("Brightness", 0.2, 10)),
    (("Equalize", 0.0, 9), ("Contrast", 0.2, 10)),
    (("Sharpness", 0.2, 9), ("Color", 0.2, 9)),
    (("Solarize", 0.2, 7), ("Equalize", 0.6, 9)),
    (("Sharpness", 0.2, 1), ("Equalize", 0.2, 7)),
)

Policy = Sequence[Sequence[Tuple[str, float, float]]]


def _scaled(policy: Policy, magnitude_scale: float) -> Policy:
    return tuple(tuple((name, probability, magnitude * magnitude_scale)
                       for name, probability, magnitude in sub_policy)
                 for sub_policy in policy)


# deeplab2's policy names (its autoaugment_policy.available_policies).
POLICIES: Dict[str, Policy] = {
    "simple_classification_policy": _scaled(SIMPLE_CLASSIFICATION_POLICY, 1),
    "simple_classification_policy_magnitude_scale_0.2": _scaled(
        SIMPLE_CLASSIFICATION_POLICY, 0.2),
}


def contrast(image: tf.Tensor, factor: float) -> tf.Tensor:
    """deeplab2's Contrast (see the module docstring for how it differs).

    Args:
      image: uint8 [height, width, 3].
      factor: Blend factor (0: the constant image, 1: the input).

    Returns:
      uint8 [height, width, 3].
    """
    grey = tf.cast(tf.image.rgb_to_grayscale(image), tf.int32)
    histogram = tf.histogram_fixed_width(grey, [0, 255], nbins=256)
    # The histogram's sum is the pixel count: deeplab2's "mean".
    level = tf.reduce_sum(tf.cast(histogram, tf.float32)) / 256.0
    degenerate = tf.cast(tf.clip_by_value(
        tf.ones_like(grey, tf.float32) * level, 0.0, 255.0), tf.uint8)
    return augment.blend(tf.image.grayscale_to_rgb(degenerate), image, factor)


def _affine(image: tf.Tensor, label: Optional[tf.Tensor],
            transform: tf.Tensor, label_fill_value: int):
    """Resamples image and label with one output->input affine transform.

    Args:
      image: uint8 [height, width, 3].
      label: int32 [height, width] or None.
      transform: float32 [8], tf-models' (and ImageProjectiveTransform's)
        convention: output (x, y) reads input (a0 x + a1 y + a2,
        b0 x + b1 y + b2).
      label_fill_value: Label of pixels mapped from outside the input.

    Returns:
      (image, label), nearest neighbour, outside pixels filled.
    """
    image = augment.transform(image, transform, interpolation="nearest",
                              fill_mode="constant",
                              fill_value=float(IMAGE_FILL_VALUE))
    if label is not None:
        label = augment.transform(
            label[:, :, tf.newaxis], transform, interpolation="nearest",
            fill_mode="constant", fill_value=float(label_fill_value))[:, :, 0]
    return image, label


def rotate(image, label, degrees, label_fill_value):
    """Rotates both about the image centre (tf-models' `rotate` geometry:
    positive degrees turn the content counter-clockwise on screen)."""
    radians = tf.cast(degrees, tf.float32) * (math.pi / 180.0)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(radians), tf.sin(radians)
    # Output (x, y) reads the input point rotated about the centre.
    x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
    y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
    transform = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])
    return _affine(image, label, transform, label_fill_value)


def shear_x(image, label, level, label_fill_value):
    """PIL's ShearX: output (x, y) reads input (x + level * y, y)."""
    transform = tf.stack([1.0, tf.cast(level, tf.float32), 0.0,
                          0.0, 1.0, 0.0, 0.0, 0.0])
    return _affine(image, label, transform, label_fill_value)


def shear_y(image, label, level, label_fill_value):
    """PIL's ShearY: output (x, y) reads input (x, level * x + y)."""
    transform = tf.stack([1.0, 0.0, 0.0,
                          tf.cast(level, tf.float32), 1.0, 0.0, 0.0, 0.0])
    return _affine(image, label, transform, label_fill_value)


def translate_x(image, label, pixels, label_fill_value):
    """PIL's TranslateX: output (x, y) reads input (x + pixels, y)."""
    transform = tf.stack([1.0, 0.0, tf.cast(pixels, tf.float32),
                          0.0, 1.0, 0.0, 0.0, 0.0])
    return _affine(image, label, transform, label_fill_value)


def translate_y(image, label, pixels, label_fill_value):
    """PIL's TranslateY: output (x, y) reads input (x, y + pixels)."""
    transform = tf.stack([1.0, 0.0, 0.0,
                          0.0, 1.0, tf.cast(pixels, tf.float32), 0.0, 0.0])
    return _affine(image, label, transform, label_fill_value)


# Operations on the image only, uint8 [H, W, 3] -> uint8 [H, W, 3].
PHOTOMETRIC_OPS: Dict[str, Callable] = {
    "AutoContrast": augment.autocontrast,
    "Equalize": augment.equalize,
    "Invert": augment.invert,
    "Posterize": augment.posterize,
    "Solarize": augment.solarize,
    "Color": augment.color,
    "Contrast": contrast,
    "Brightness": augment.brightness,
    "Sharpness": augment.sharpness,
}
# Operations that move the label with the image:
# (image, label, argument, label_fill_value) -> (image, label).
GEOMETRIC_OPS: Dict[str, Callable] = {
    "Rotate": rotate,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
}
OPERATIONS = tuple(PHOTOMETRIC_OPS) + tuple(GEOMETRIC_OPS)


def operation_arguments(name: str, magnitude: float,
                        translate_const: float = TRANSLATE_CONST) -> tuple:
    """The arguments an operation gets for a magnitude (0..MAX_LEVEL).

    deeplab2's mapping, which is tf-models-official's `level_to_arg`:
    enhancements (Color, Contrast, Brightness, Sharpness) a factor
    magnitude / 10 * 1.8 + 0.1; Posterize int(magnitude / 10 * 4) bits;
    Solarize threshold int(magnitude / 10 * 256); Rotate magnitude / 10 * 30
    degrees, shears magnitude / 10 * 0.3 and translations magnitude / 10 *
    translate_const pixels, each negated with probability 1/2 (a tensor).
    """
    return augment.level_to_arg(cutout_const=0.0,
                                translate_const=translate_const)[name](
                                    magnitude)


def apply_operation(name: str, image: tf.Tensor, label: Optional[tf.Tensor],
                    magnitude: float, label_fill_value: int,
                    translate_const: float = TRANSLATE_CONST):
    """Applies one operation at a magnitude, always.

    Args:
      name: One of OPERATIONS.
      image: uint8 [height, width, 3].
      label: int32 [height, width] or None.
      magnitude: 0..MAX_LEVEL.
      label_fill_value: See `_affine`.
      translate_const: See `operation_arguments`.

    Returns:
      (image, label) with the input shapes.
    """
    arguments = operation_arguments(name, magnitude, translate_const)
    if name in PHOTOMETRIC_OPS:
        result = PHOTOMETRIC_OPS[name](image, *arguments)
    else:
        result, label = GEOMETRIC_OPS[name](image, label, *arguments,
                                            label_fill_value)
        if label is not None:
            label = tf.ensure_shape(label, image.shape[:2])
    return tf.ensure_shape(result, image.shape), label


def _with_probability(probability: float, apply, image, label):
    """deeplab2's rule: applied iff floor(uniform[0, 1) + probability)."""
    chosen = tf.cast(tf.floor(tf.random.uniform([]) + probability), tf.bool)
    if label is None:
        return tf.cond(chosen, lambda: apply(image, None)[0],
                       lambda: image), None
    return tf.cond(chosen, lambda: apply(image, label),
                   lambda: (image, label))


class AutoAugment:
    """A policy applied to (image, label) pairs.

    Args:
      policy_name: A key of POLICIES (deeplab2's names), or None with
        `policy`.
      policy: Sub-policies of (operation, probability, magnitude), names
        from OPERATIONS, instead of a named policy.
      label_fill_value: Label of pixels that geometric operations bring in
        from outside the image (the pipeline passes ignore_label *
        label_divisor, the value of its padding).
      translate_const: Translation in pixels at magnitude MAX_LEVEL.

    Raises:
      cli.UserError (a ValueError): naming an unknown policy name.
      ValueError: naming an unknown operation, or a probability or magnitude
        out of range.
    """

    def __init__(self, policy_name: Optional[str] = None,
                 policy: Optional[Policy] = None, label_fill_value: int = 0,
                 translate_const: float = TRANSLATE_CONST):
        if (policy_name is None) == (policy is None):
            raise ValueError("AutoAugment: give either policy_name or policy")
        if policy is None:
            if policy_name not in POLICIES:
                raise cli.UserError(
                    f"augmentations.autoaugment_policy_name: unknown policy "
                    f"{policy_name!r}; expected one of {sorted(POLICIES)}")
            policy = POLICIES[policy_name]
        self.policy = tuple(tuple(tuple(op) for op in sub) for sub in policy)
        if not self.policy or not all(self.policy):
            raise ValueError("AutoAugment: the policy has an empty "
                             "(sub-)policy")
        for sub_policy in self.policy:
            for name, probability, magnitude in sub_policy:
                if name not in OPERATIONS:
                    raise ValueError(
                        f"AutoAugment: unknown operation {name!r}; expected "
                        f"one of {list(OPERATIONS)}")
                if not 0.0 <= probability <= 1.0:
                    raise ValueError(f"AutoAugment: probability {probability}"
                                     f" of {name} is outside [0, 1]")
                if not 0.0 <= magnitude <= MAX_LEVEL:
                    raise ValueError(f"AutoAugment: magnitude {magnitude} of "
                                     f"{name} is outside [0, {MAX_LEVEL:g}]")
        self.label_fill_value = int(label_fill_value)
        self.translate_const = float(translate_const)

    def _sub_policy(self, sub_policy):
        def run(image, label):
            for name, probability, magnitude in sub_policy:
                def apply(image_, label_, name=name, magnitude=magnitude):
                    return apply_operation(name, image_, label_, magnitude,
                                           self.label_fill_value,
                                           self.translate_const)
                image, label = _with_probability(probability, apply, image,
                                                 label)
            return image, label
        return run

    def __call__(self, image: tf.Tensor, label: Optional[tf.Tensor] = None):
        """Applies one randomly drawn sub-policy.

        Args:
          image: [height, width, 3], uint8 or float in 0..255 (a float image
            is clipped and truncated to uint8 first, as deeplab2 does, and
            returned as float32).
          label: int [height, width] panoptic (or semantic) label, or None.

        Returns:
          (image, label): same shapes; image in the input's dtype (float32
          for float input), label int32.
        """
        input_dtype = image.dtype
        shape = image.shape
        if input_dtype != tf.uint8:
            image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
        if label is not None:
            label = tf.cast(label, tf.int32)
        sub_policies = [self._sub_policy(sub) for sub in self.policy]
        if label is None:
            # tf-models' selector carries a second value through its conds.
            image, _ = augment.select_and_apply_random_policy(
                [lambda i, _, p=p: (p(i, None)[0], _) for p in sub_policies],
                image, tf.zeros([], tf.int32))
        else:
            image, label = augment.select_and_apply_random_policy(
                sub_policies, image, label)
            label = tf.ensure_shape(label, shape[:2])
        image = tf.ensure_shape(tf.cast(image, input_dtype), shape)
        return image, label

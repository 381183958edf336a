"""Activation functions selected by name, as deeplab2's configs name them."""

from typing import Callable, Optional

import tensorflow as tf

_NO_ACTIVATION = (None, "none", "linear", "identity")


def _identity(x):
    return x


def _gelu(x):
    return tf.nn.gelu(x, approximate=False)


def _approximated_gelu(x):
    return tf.nn.gelu(x, approximate=True)


_ACTIVATIONS = {
    "relu": tf.nn.relu,
    "swish": tf.nn.silu,
    "silu": tf.nn.silu,
    "gelu": _gelu,
    "approximated_gelu": _approximated_gelu,
    "elu": tf.nn.elu,
    "sigmoid": tf.math.sigmoid,
    # Attention weights are normalised over the key axis, the last one.
    "softmax": tf.nn.softmax,
}


def is_identity(name: Optional[str]) -> bool:
    """Whether `name` means "no activation"."""
    return name is None or name.lower() in _NO_ACTIVATION[1:]


def get_activation(name: Optional[str]) -> Callable:
    """Returns the activation function called `name`.

    Args:
      name: One of 'relu', 'swish' (or 'silu'), 'gelu', 'approximated_gelu',
        'elu', 'sigmoid', 'softmax', or None / 'none' / 'linear' / 'identity'
        for no activation.

    Returns:
      A function mapping a tensor to a tensor of the same shape.

    Raises:
      ValueError: if the name is unknown.
    """
    if is_identity(name):
        return _identity
    key = name.lower()
    if key not in _ACTIVATIONS:
        raise ValueError(
            f"unknown activation {name!r}: expected one of "
            f"{sorted(_ACTIVATIONS) + ['none']}")
    return _ACTIVATIONS[key]

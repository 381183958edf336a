"""Helpers shared by the layer and model tests."""

import numpy as np


def randomize_weights(layer, seed=0):
    """Gives every variable of a built layer non-trivial values.

    Batch-norm gammas and variances become positive (0.5..1.5), every other
    variable gets N(0, 0.5) values, so that no branch is an identity and no
    statistic is the 0/1 default.
    """
    rng = np.random.RandomState(seed)
    for variable in layer.weights:
        shape = tuple(variable.shape)
        name = variable.path.rsplit("/", 1)[-1]
        if name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, size=shape)
        else:
            value = rng.normal(0.0, 0.5, size=shape)
        variable.assign(value.astype(variable.dtype))


def bn_inference(x, layer, broadcast_shape=None):
    """Numpy batch norm with a built BN layer's moving statistics."""
    def get(name):
        value = np.asarray(getattr(layer, name).numpy(), np.float64)
        return value.reshape(broadcast_shape) if broadcast_shape else value
    return ((x - get("moving_mean")) / np.sqrt(get("moving_variance")
                                               + layer.epsilon)
            * get("gamma") + get("beta"))


def softmax(x, axis=-1):
    x = x - x.max(axis=axis, keepdims=True)
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def conv2d_reference(x, kernel, stride, rate, pad_begin, pad_end):
    """Direct correlation with explicit zero padding (NHWC, HWIO)."""
    x = np.pad(x, [(0, 0), (pad_begin, pad_end), (pad_begin, pad_end),
                   (0, 0)])
    k = kernel.shape[0]
    span = (k - 1) * rate + 1
    out_h = (x.shape[1] - span) // stride + 1
    out_w = (x.shape[2] - span) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
    for i in range(out_h):
        for j in range(out_w):
            for a in range(k):
                for b in range(k):
                    patch = x[:, i * stride + a * rate, j * stride + b * rate]
                    out[:, i, j] += patch @ kernel[a, b]
    return out


def bilinear_align_corners(x, out_h, out_w):
    """Textbook align-corners bilinear interpolation (NHWC, numpy)."""
    _, in_h, in_w, _ = x.shape

    def coords(n_out, n_in):
        if n_out == 1:
            return np.zeros(1)
        return np.arange(n_out) * (n_in - 1) / (n_out - 1)

    out = np.zeros((x.shape[0], out_h, out_w, x.shape[3]))
    for i, y in enumerate(coords(out_h, in_h)):
        y0 = int(np.floor(y))
        y1 = min(y0 + 1, in_h - 1)
        dy = y - y0
        for j, xx in enumerate(coords(out_w, in_w)):
            x0 = int(np.floor(xx))
            x1 = min(x0 + 1, in_w - 1)
            dx = xx - x0
            out[:, i, j] = ((1 - dy) * (1 - dx) * x[:, y0, x0]
                            + (1 - dy) * dx * x[:, y0, x1]
                            + dy * (1 - dx) * x[:, y1, x0]
                            + dy * dx * x[:, y1, x1])
    return out


def fake_accelerator(monkeypatch, accelerator):
    """Makes tf.config.list_logical_devices report exactly `accelerator`
    ('GPU', 'TPU' or None) as the process's accelerator, whatever the
    machine has, so that device-dependent tracing is tested the same on a
    CPU-only machine and on one with a GPU."""
    import tensorflow as tf
    real = tf.config.list_logical_devices

    def list_logical_devices(device_type=None):
        if device_type in ("GPU", "TPU"):
            if device_type != accelerator:
                return []
            return [tf.config.LogicalDevice(f"/device:{accelerator}:0",
                                            accelerator)]
        return real(device_type)

    monkeypatch.setattr(tf.config, "list_logical_devices",
                        list_logical_devices)

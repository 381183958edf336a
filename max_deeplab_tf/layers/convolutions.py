"""Convolution + batch norm + activation building blocks.

The 2D convolutions pad like deeplab2 (and TF1 DeepLab): a strided
convolution pads its input explicitly and symmetrically, (k - 1) // 2 on the
top-left and the rest on the bottom-right, so that with inputs of size
k * stride + 1 the kernel centres stay aligned with the input's corner pixels;
Keras's 'same' padding would put the extra row at the bottom-right. Stride-1
convolutions use 'same' padding, which is then symmetric.

Attribute names (`_conv`, `_batch_norm`, `_depthwise`, `_pointwise`,
`_conv1_bn_act`, ...) follow deeplab2 so that checkpoint keys line up.
"""

from typing import Any, Dict, Optional

import keras
import tensorflow as tf
from tensorflow.python.util import _pywrap_util_port

from max_deeplab_tf.layers import activations
from max_deeplab_tf.layers import base
from max_deeplab_tf.layers import normalization
from max_deeplab_tf.layers.xla_context import in_xla_compilation
from max_deeplab_tf.layers.xla_context import xla_compiling_for_cpu


def padding_size(kernel_size: int, atrous_rate: int):
    """(begin, end) explicit padding of a strided convolution."""
    effective = kernel_size + (kernel_size - 1) * (atrous_rate - 1)
    total = effective - 1
    begin = total // 2
    return begin, total - begin


def native_dilation_differentiable(dtype: tf.DType) -> bool:
    """Whether a dilated convolution traced here may be one `Conv2D` op.

    TensorFlow's `tf.nn.convolution` (and so Keras' `Conv2D`) turns a
    dilated convolution into space-to-batch, a convolution on [rate^2 *
    batch] small tiles and batch-to-space, because TensorFlow's own CPU
    kernels cannot differentiate a dilated `Conv2D`. That rewrite is slow:
    at a 129x129 crop the ASPP's rate-6 branch took about 150 ms of a
    0.8 s training step on oneDNN, and under XLA on a CPU its input
    gradient became one 1.7 s convolution in a layout Eigen does not take.
    The dilated `Conv2D` op runs everywhere forward; its gradient kernels
    exist under XLA (CPU, GPU, TPU), in oneDNN and in cuDNN. Only the plain
    CPU kernels lack them, so the op is used when compiling with XLA, or in
    float32 when oneDNN is on (oneDNN takes bfloat16 only on CPUs that have
    it, and float16 not at all). TensorFlow turns oneDNN on by default only
    on CPUs with AVX-512 VNNI or BF16, AVX-VNNI or AMX (not, e.g., an AMD
    EPYC with AVX2); elsewhere `Conv2DSame` uses `dilated_conv2d_as_matmul`
    where space-to-batch's tiles would be small.

    Args:
      dtype: The convolution's compute dtype.

    Returns:
      True when the dilated `Conv2D` op and its gradient will run.
    """
    if in_xla_compilation():
        return True
    return dtype == tf.float32 and _pywrap_util_port.IsMklEnabled()


# Where a dilated convolution cannot be one `Conv2D` op, space-to-batch
# convolves [rate^2 * batch] tiles of about ceil(size / rate) pixels across.
# With TensorFlow's own (Eigen) CPU kernels, small tiles are slow: for the
# ASPP's 3x3 rate-6 branch on [2048 -> 256] channels, forward and both
# gradients, an AMD EPYC (AVX2, oneDNN off by default) took 661 ms on two
# 9x9 maps (tiles of 2) against 71 ms as one matmul over the shifted copies
# (im2col); space-to-batch was still 1.3-1.4 times slower at tiles of 4-5
# (21x21 and 25x25 at rate 6, 41x41 at rate 12) and faster than the matmul
# from tiles of 6 (33x33: 394 against 455 ms; 41x41: 501 against 688 ms).
# benchmarks/README.md has the table.
MAX_SPACE_TO_BATCH_TILE_FOR_MATMUL = 5


def dilated_conv2d_as_matmul(x: tf.Tensor, kernel: tf.Tensor,
                             dilations) -> tf.Tensor:
    """A stride-1 'same' dilated convolution as one matmul (im2col).

    The input is padded as 'same' pads it, and the kernel_height *
    kernel_width copies of it shifted by (i, j) * dilations are concatenated
    along the channels (tap-major, so that they line up with the kernel's
    [kernel_height * kernel_width * in_channels, out_channels] reshape).
    The same values as `tf.nn.conv2d` up to the order of summation; its
    gradients are matmuls and slices, differentiable on every device.

    Args:
      x: A [batch, height, width, in_channels] tensor.
      kernel: A [kernel_height, kernel_width, in_channels, out_channels]
        tensor of x's dtype.
      dilations: (rate along the height, rate along the width).

    Returns:
      A [batch, height, width, out_channels] tensor.
    """
    kernel_height, kernel_width, in_channels, out_channels = kernel.shape
    rate_h, rate_w = dilations
    pad_h = (kernel_height - 1) * rate_h
    pad_w = (kernel_width - 1) * rate_w
    padded = tf.pad(x, [[0, 0], [pad_h // 2, pad_h - pad_h // 2],
                        [pad_w // 2, pad_w - pad_w // 2], [0, 0]])
    dynamic_shape = tf.shape(x)
    height = x.shape[1] if x.shape[1] is not None else dynamic_shape[1]
    width = x.shape[2] if x.shape[2] is not None else dynamic_shape[2]
    columns = tf.concat(
        [padded[:, i * rate_h:i * rate_h + height,
                j * rate_w:j * rate_w + width, :]
         for i in range(kernel_height) for j in range(kernel_width)],
        axis=-1)
    taps_and_channels = kernel_height * kernel_width * in_channels
    y = tf.matmul(tf.reshape(columns, [-1, taps_and_channels]),
                  tf.reshape(kernel, [taps_and_channels, out_channels]))
    return tf.reshape(y, tf.concat([dynamic_shape[:3], [out_channels]], 0))


def pointwise_conv_as_matmul(x: tf.Tensor, kernel: tf.Tensor,
                             strides: int = 1) -> tf.Tensor:
    """A 1x1 convolution as one matmul over [pixels, channels].

    For XLA on a CPU. XLA's CPU backend puts every convolution's kernel in
    [height, width, in, out] order; a convolution's input gradient reads the
    kernel with `in` and `out` swapped, so each 1x1 convolution's input
    gradient became a physical transpose of its kernel (a loop over memory,
    up to 20 ms for a [1024, 2048] kernel) before the matmul: 231 ms of
    HLO time per MaX-DeepLab-S training step at 129x129 (TF profiler with
    XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true, and the optimised HLO
    dump). A matmul's input gradient is a matmul with `transpose_b`, which
    XLA's CPU backend passes to Eigen as a flag: the transposes went, the
    dots took 74 ms more, and the XLA step went 1.61 / 1.69 -> 1.56 /
    1.58 s (2 alternating pairs on an AMD EPYC, with Conv2DSame's 1x1
    convolutions only; Conv1DBN's were added after). Forward values are the
    convolution's (XLA lowers a 1x1 convolution to the same dot). Not used
    outside XLA, where TensorFlow's own 1x1 convolution is a matmul
    already, nor under XLA for a GPU or TPU (not measured).

    Args:
      x: A [batch, height, width, in_channels] or [batch, length,
        in_channels] tensor.
      kernel: A [1, 1, in_channels, out_channels] or [1, in_channels,
        out_channels] tensor of x's dtype.
      strides: Stride along height and width (a 1x1 'valid' convolution
        with stride s reads pixels 0, s, 2s, ...); 1 for sequences.

    Returns:
      A [batch, ceil(height / strides), ceil(width / strides),
      out_channels] (or [batch, length, out_channels]) tensor.
    """
    if strides > 1:
        x = x[:, ::strides, ::strides, :]
    in_channels, out_channels = kernel.shape[-2:]
    y = tf.matmul(tf.reshape(x, [-1, in_channels]),
                  tf.reshape(kernel, [in_channels, out_channels]))
    return tf.reshape(y, tf.concat([tf.shape(x)[:-1], [out_channels]], 0))


def _static_or_dynamic_shape(x: tf.Tensor):
    """x's dimensions, each a Python int where static, else a scalar
    tensor."""
    dynamic = tf.shape(x)
    return [size if size is not None else dynamic[axis]
            for axis, size in enumerate(x.shape)]


def _shifted_sum(x: tf.Tensor, kernel: tf.Tensor, atrous_rate: int,
                 begin: int, end: int) -> tf.Tensor:
    """Sum over taps (i, j) of x, zero-padded by (begin, end) along height
    and width and shifted by (i, j) * atrous_rate, times kernel[i, j, :, 0].

    Args:
      x: A [batch, height, width, channels] tensor.
      kernel: A [k, k, channels, 1] tensor of x's dtype.
      atrous_rate: Spacing of the taps.
      begin: Zeros before the first row and column.
      end: Zeros after the last; begin + end = (k - 1) * atrous_rate.

    Returns:
      A [batch, height, width, channels] tensor.
    """
    _, height, width, _ = _static_or_dynamic_shape(x)
    padded = tf.pad(x, [[0, 0], [begin, end], [begin, end], [0, 0]])
    kernel_size = kernel.shape[0]
    y = None
    for i in range(kernel_size):
        for j in range(kernel_size):
            shifted = padded[:, i * atrous_rate:i * atrous_rate + height,
                             j * atrous_rate:j * atrous_rate + width, :]
            term = shifted * kernel[i, j, :, 0]
            y = term if y is None else y + term
    return y


def _depthwise_kernel_gradient(x: tf.Tensor, dy: tf.Tensor, kernel_size: int,
                               atrous_rate: int, begin: int,
                               end: int) -> tf.Tensor:
    """Gradient of `_shifted_sum` with respect to its kernel, from one
    batched matmul.

    The gradient for tap (i, j) and channel c is
    sum over n, h, w of padded[n, h + i * rate, w + j * rate, c] *
    dy[n, h, w, c]. Written as one sum per tap, XLA's CPU backend ran each
    as a product written to memory and a loop over it (33 ms for a 5x5
    kernel on [2, 33, 33, 288]); here, per channel, one matmul contracts
    over batch and rows for every row offset i at once,
    g[c, w, i * padded_width + w'] = sum over n, h of dy[n, h, w, c] *
    padded[n, h + i * rate, w', c], and the gradient is the sum of g along
    the diagonals w' = w + j * rate (10 ms).

    Args:
      x: The convolution's [batch, height, width, channels] input.
      dy: The [batch, height, width, channels] gradient of its output.
      kernel_size: k.
      atrous_rate: Spacing of the taps.
      begin: Padding before the first row and column.
      end: Padding after the last.

    Returns:
      A [k, k, channels, 1] tensor.
    """
    batch, height, width, channels = _static_or_dynamic_shape(x)
    padded_width = width + begin + end
    row_length = kernel_size * padded_width
    # [channels, batch, padded height, padded width]
    padded = tf.transpose(
        tf.pad(x, [[0, 0], [begin, end], [begin, end], [0, 0]]),
        [3, 0, 1, 2])
    # rows[c, n * height + h, i * padded_width + w'] =
    #     padded[c, n, h + i * rate, w'].
    rows = tf.concat([padded[:, :, i * atrous_rate:i * atrous_rate + height]
                      for i in range(kernel_size)], axis=-1)
    rows = tf.reshape(rows, [channels, batch * height, row_length])
    dy_rows = tf.reshape(tf.transpose(dy, [3, 0, 1, 2]),
                         [channels, batch * height, width])
    gram = tf.matmul(dy_rows, rows, transpose_a=True)  # [c, w, row_length]
    # Entry (w, i * padded_width + w + j * rate) sits at flat position
    # w * (row_length + 1) + i * padded_width + j * rate: rows of
    # row_length + 1 line the diagonals up in columns.
    flat = tf.pad(tf.reshape(gram, [channels, width * row_length]),
                  [[0, 0], [0, width]])
    diagonal_sums = tf.reduce_sum(
        tf.reshape(flat, [channels, width, row_length + 1]), axis=1)
    taps = tf.reshape(diagonal_sums[:, :row_length],
                      [channels, kernel_size, padded_width])
    taps = taps[:, :, 0:(kernel_size - 1) * atrous_rate + 1:atrous_rate]
    return tf.transpose(taps, [1, 2, 0])[..., tf.newaxis]


def depthwise_conv_as_shifted_sum(x: tf.Tensor, kernel: tf.Tensor,
                                  atrous_rate: int = 1) -> tf.Tensor:
    """A stride-1 'same' depthwise convolution as a sum of shifted, scaled
    copies of its input, for XLA on a CPU.

    XLA's CPU backend runs a depthwise convolution (a convolution with one
    feature group per channel) and its gradients as plain loops, outside
    Eigen: forward and gradients of a 5x5 kernel on [2, 33, 33, 288] took
    150 ms, against 5 ms for TensorFlow's kernels. As sums of shifted
    copies, the pass and its input gradient are one fused loop each (1.4
    ms); the kernel gradient is `_depthwise_kernel_gradient`. All three:
    14-15 ms, against 52 ms when TensorFlow differentiated the shifted sum
    (minimum of 20 jit-compiled calls, 2 alternating runs, AMD EPYC).

    Args:
      x: A [batch, height, width, channels] tensor.
      kernel: A [k, k, channels, 1] tensor of x's dtype.
      atrous_rate: Dilation of the kernel.

    Returns:
      A [batch, height, width, channels] tensor.
    """
    kernel_size = kernel.shape[0]
    begin, end = padding_size(kernel_size, atrous_rate)

    @tf.custom_gradient
    def convolve(x, kernel):
        def gradient(dy):
            # y[h] = sum_i x[h + i * rate - begin] * kernel[i], so
            # dx[h] = sum_i dy[h - i * rate + begin] * kernel[i]: the same
            # sum over dy padded (end, begin), with the kernel flipped.
            dx = _shifted_sum(dy, kernel[::-1, ::-1], atrous_rate, end, begin)
            # Under mixed precision the kernel gradient sums products over
            # the whole batch and map in float32.
            accumulate = (tf.float32 if x.dtype in (tf.float16, tf.bfloat16)
                          else x.dtype)
            kernel_gradient = _depthwise_kernel_gradient(
                tf.cast(x, accumulate), tf.cast(dy, accumulate), kernel_size,
                atrous_rate, begin, end)
            return dx, tf.cast(kernel_gradient, kernel.dtype)

        return _shifted_sum(x, kernel, atrous_rate, begin, end), gradient

    return convolve(x, kernel)


def space_to_batch_tiles_are_small(x: tf.Tensor, dilations) -> bool:
    """Whether space-to-batch would cut x into tiles at most
    MAX_SPACE_TO_BATCH_TILE_FOR_MATMUL pixels across along every dilated
    axis (static sizes only).

    Args:
      x: A [batch, height, width, channels] tensor.
      dilations: (rate along the height, rate along the width).
    """
    for size, rate in zip(x.shape[1:3], dilations):
        if rate == 1:
            continue
        if size is None or -(-size // rate) > (
                MAX_SPACE_TO_BATCH_TILE_FOR_MATMUL):
            return False
    return True


def conv_bn_act_name(index: int, use_bn: bool, activation: Optional[str]) -> str:
    """deeplab2's attribute name of the index-th conv of a stack."""
    name = f"_conv{index + 1}"
    if use_bn:
        name += "_bn"
    if not activations.is_identity(activation):
        name += "_act"
    return name


def _check_bias_and_bn(layer_name: str, use_bias: bool, use_bn: bool):
    if use_bias and use_bn:
        raise ValueError(
            f"{layer_name}: use_bias and use_bn are both set; a bias before "
            "batch norm is redundant")


class _PaddedConvBNAct(base.ComposedLayer):
    """A convolution with deeplab2's padding, optional batch norm, activation.

    Subclasses create their convolution (under deeplab2's attribute name)
    between `__init__` and `_build_bn_and_activation`, so that the weights
    keep deeplab2's order, and return it from `_convolution`.
    """

    def __init__(self, kernel_size: int, strides: int, atrous_rate: int,
                 use_bias: bool, use_bn: bool, activation: Optional[str],
                 batch_norm_config: Optional[Dict[str, Any]], **kwargs):
        super().__init__(**kwargs)
        _check_bias_and_bn(self.name, use_bias, use_bn)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.atrous_rate = int(atrous_rate)
        self.use_bias = use_bias
        self.use_bn = use_bn
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        if self.strides == 1:
            self._padding = None
            self._conv_padding = "same"
        else:
            self._padding = padding_size(self.kernel_size, self.atrous_rate)
            self._conv_padding = "valid"

    def _build_bn_and_activation(self, **batch_norm_kwargs):
        if self.use_bn:
            self._batch_norm = normalization.batch_norm(
                axis=3, name="batch_norm",
                batch_norm_config=self.batch_norm_config, **batch_norm_kwargs)
        self._activation_fn = activations.get_activation(self.activation)

    def _convolution(self):
        raise NotImplementedError

    def _convolve(self, x):
        return self._convolution()(x)

    def call(self, inputs, training=None):
        x = inputs
        if self._padding is not None:
            begin, end = self._padding
            x = tf.pad(x, [[0, 0], [begin, end], [begin, end], [0, 0]])
        x = self._convolve(x)
        if self.use_bn:
            x = self._batch_norm(x, training=training)
        return self._activation_fn(x)

    def get_config(self):
        config = super().get_config()
        config.update({
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "atrous_rate": self.atrous_rate,
            "use_bias": self.use_bias,
            "use_bn": self.use_bn,
            "activation": self.activation,
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class Conv2DSame(_PaddedConvBNAct):
    """2D convolution with deeplab2's padding, optional batch norm, activation.

    Args:
      output_channels: Filters of the convolution.
      kernel_size: Size of the square kernel.
      strides: Stride of the convolution.
      atrous_rate: Dilation rate.
      use_bias: Whether the convolution has a bias (not with use_bn).
      use_bn: Whether a batch norm follows the convolution.
      bn_gamma_initializer: Initialiser of the batch norm's gamma.
      activation: Activation name, None or 'none' for no activation.
      kernel_initializer: Initialiser of the kernel (deeplab2: he_normal).
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, height, width, channels] tensor.
      training: Batch norm mode.

    Returns:
      A [batch, ceil(height / strides), ceil(width / strides),
      output_channels] tensor.
    """

    def __init__(self, output_channels: int, kernel_size: int,
                 strides: int = 1, atrous_rate: int = 1,
                 use_bias: bool = True, use_bn: bool = False,
                 bn_gamma_initializer="ones",
                 activation: Optional[str] = None,
                 kernel_initializer="he_normal",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(kernel_size, strides, atrous_rate, use_bias, use_bn,
                         activation, batch_norm_config, **kwargs)
        self.output_channels = int(output_channels)
        self.bn_gamma_initializer = keras.initializers.get(bn_gamma_initializer)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self._conv = keras.layers.Conv2D(
            self.output_channels, self.kernel_size, strides=self.strides,
            padding=self._conv_padding, use_bias=use_bias,
            dilation_rate=self.atrous_rate,
            kernel_initializer=self.kernel_initializer, name="conv")
        self._build_bn_and_activation(
            gamma_initializer=self.bn_gamma_initializer)

    def _convolution(self):
        return self._conv

    def _taps_in_reach(self, x):
        """(rows, columns) of the kernel that can meet the input: all of
        them, or only the centre one along a dimension where the dilation
        is at least the input's (static) size, so that every other tap of
        a 'same' convolution reads padding only."""
        taps = []
        for size in x.shape[1:3]:
            if (self.strides == 1 and self.atrous_rate > 1
                    and self.kernel_size > 1 and size is not None
                    and self.atrous_rate >= size):
                taps.append(1)
            else:
                taps.append(self.kernel_size)
        return tuple(taps)

    def _convolve(self, x):
        # An atrous convolution whose rate reaches past the whole feature
        # map (the ASPP's rates 12 and 18 on the 9x9 stride-16 map of a
        # 129x129 crop) multiplies all but its centre taps by padding: the
        # same values (and the same zero gradients for those taps) come
        # from the centre taps alone, for a ninth of the work. A dilation
        # that remains is one Conv2D op where its gradient can be taken
        # (native_dilation_differentiable), else one matmul where
        # space-to-batch's tiles would be small, else Keras' space-to-batch.
        # Under XLA for a CPU a 1x1 convolution is a matmul
        # (pointwise_conv_as_matmul).
        taps = self._taps_in_reach(x)
        dilations = [1 if t == 1 else self.atrous_rate for t in taps]
        full = taps == (self.kernel_size, self.kernel_size)
        dilated = self.strides == 1 and max(dilations) > 1
        native = dilated and native_dilation_differentiable(x.dtype)
        as_matmul = (dilated and not native
                     and space_to_batch_tiles_are_small(x, dilations))
        pointwise = self.kernel_size == 1 and xla_compiling_for_cpu()
        if full and not native and not as_matmul and not pointwise:
            return self._conv(x)
        if not self._conv.built:
            self._conv.build(x.shape)
        kernel = self._conv.kernel
        if not full:
            centre = self.kernel_size // 2
            rows = (slice(centre, centre + 1) if taps[0] == 1
                    else slice(None))
            columns = (slice(centre, centre + 1) if taps[1] == 1
                       else slice(None))
            kernel = kernel[rows, columns]
        kernel = tf.cast(kernel, x.dtype)
        if pointwise:
            y = pointwise_conv_as_matmul(x, kernel, self.strides)
        elif native:
            y = tf.nn.conv2d(x, kernel, strides=1, padding="SAME",
                             dilations=dilations)
        elif as_matmul:
            y = dilated_conv2d_as_matmul(x, kernel, dilations)
        else:
            y = tf.nn.convolution(x, kernel, padding="SAME",
                                  dilations=dilations)
        if self.use_bias:
            y = tf.nn.bias_add(y, tf.cast(self._conv.bias, x.dtype))
        return y

    def get_config(self):
        config = super().get_config()
        config.update({
            "output_channels": self.output_channels,
            "bn_gamma_initializer": keras.initializers.serialize(
                self.bn_gamma_initializer),
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer),
        })
        return config


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class DepthwiseConv2DSame(_PaddedConvBNAct):
    """Depthwise 2D convolution with deeplab2's padding, batch norm, activation.

    Args:
      kernel_size: Size of the square kernel.
      strides: Stride.
      atrous_rate: Dilation rate.
      use_bias: Whether the convolution has a bias (not with use_bn).
      use_bn: Whether a batch norm follows.
      activation: Activation name or None.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, height, width, channels] tensor.
      training: Batch norm mode.

    Returns:
      A [batch, ceil(height / strides), ceil(width / strides), channels]
      tensor.
    """

    def __init__(self, kernel_size: int, strides: int = 1,
                 atrous_rate: int = 1, use_bias: bool = True,
                 use_bn: bool = False, activation: Optional[str] = None,
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(kernel_size, strides, atrous_rate, use_bias, use_bn,
                         activation, batch_norm_config, **kwargs)
        self._depthwise_conv = keras.layers.DepthwiseConv2D(
            kernel_size=self.kernel_size, strides=self.strides,
            padding=self._conv_padding, use_bias=use_bias,
            dilation_rate=self.atrous_rate, name="depthwise_conv")
        self._build_bn_and_activation()

    def _convolution(self):
        return self._depthwise_conv

    def _convolve(self, x):
        # Under XLA for a CPU, see depthwise_conv_as_shifted_sum (the
        # MaX-DeepLab-S XLA step went 1.25 -> 1.04 s with the shifted sum,
        # and about 0.1 s less again with its kernel gradient as matmuls).
        # Outside XLA, and under XLA for a GPU or TPU (whose depthwise
        # convolutions are native; not measured here), the depthwise
        # convolution stays, as in deeplab2.
        if self.strides == 1 and xla_compiling_for_cpu():
            return self._depthwise_as_shifted_sum(x)
        return self._depthwise_conv(x)

    def _depthwise_as_shifted_sum(self, x):
        conv = self._depthwise_conv
        if not conv.built:
            conv.build(x.shape)
        y = depthwise_conv_as_shifted_sum(
            x, tf.cast(conv.kernel, x.dtype), self.atrous_rate)
        if self.use_bias:
            y = y + tf.cast(conv.bias, x.dtype)
        return y


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class SeparableConv2DSame(base.ComposedLayer):
    """Depthwise conv (+BN+act) followed by a 1x1 conv (+BN+act).

    Args:
      output_channels: Filters of the pointwise convolution.
      kernel_size: Depthwise kernel size.
      strides: Depthwise stride.
      atrous_rate: Depthwise dilation rate.
      use_bias: Whether both convolutions have biases (not with use_bn).
      use_bn: Whether a batch norm follows each convolution.
      activation: Activation after each convolution, or None.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, height, width, channels] tensor.
      training: Batch norm mode.

    Returns:
      A [batch, ceil(height / strides), ceil(width / strides),
      output_channels] tensor.
    """

    def __init__(self, output_channels: int, kernel_size: int,
                 strides: int = 1, atrous_rate: int = 1,
                 use_bias: bool = True, use_bn: bool = False,
                 activation: Optional[str] = None,
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        _check_bias_and_bn(self.name, use_bias, use_bn)
        self.output_channels = int(output_channels)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.atrous_rate = int(atrous_rate)
        self.use_bias = use_bias
        self.use_bn = use_bn
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        self._depthwise = DepthwiseConv2DSame(
            kernel_size, strides=strides, atrous_rate=atrous_rate,
            use_bias=use_bias, use_bn=use_bn, activation=activation,
            batch_norm_config=self.batch_norm_config, name="depthwise")
        self._pointwise = Conv2DSame(
            output_channels, 1, use_bias=use_bias, use_bn=use_bn,
            activation=activation, batch_norm_config=self.batch_norm_config,
            name="pointwise")

    def call(self, inputs, training=None):
        x = self._depthwise(inputs, training=training)
        return self._pointwise(x, training=training)

    def get_config(self):
        config = super().get_config()
        config.update({
            "output_channels": self.output_channels,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "atrous_rate": self.atrous_rate,
            "use_bias": self.use_bias,
            "use_bn": self.use_bn,
            "activation": self.activation,
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config


CONV_TYPES = ("standard_conv", "depthwise_separable_conv")


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class StackedConv2DSame(base.ComposedLayer):
    """`num_layers` Conv2DSame or SeparableConv2DSame applied in sequence.

    The i-th convolution is the attribute `_conv{i}[_bn][_act]`, as deeplab2.

    Args:
      num_layers: Number of convolutions.
      conv_type: 'standard_conv' or 'depthwise_separable_conv'.
      output_channels: Filters of each convolution.
      kernel_size: Kernel size of each convolution.
      strides: Stride of each convolution.
      atrous_rate: Dilation rate of each convolution.
      use_bias: Whether convolutions have biases (not with use_bn).
      use_bn: Whether each convolution is followed by batch norm.
      activation: Activation after each convolution, or None.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, height, width, channels] tensor.
      training: Batch norm mode.

    Returns:
      A [batch, height', width', output_channels] tensor.
    """

    def __init__(self, num_layers: int, conv_type: str, output_channels: int,
                 kernel_size: int, strides: int = 1, atrous_rate: int = 1,
                 use_bias: bool = True, use_bn: bool = False,
                 activation: Optional[str] = None,
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        if conv_type == "standard_conv":
            conv_class = Conv2DSame
        elif conv_type == "depthwise_separable_conv":
            conv_class = SeparableConv2DSame
        else:
            raise ValueError(
                f"{self.name}: conv_type {conv_type!r} is not one of "
                f"{list(CONV_TYPES)}")
        self.num_layers = int(num_layers)
        self.conv_type = conv_type
        self.output_channels = int(output_channels)
        self.kernel_size = int(kernel_size)
        self.strides = int(strides)
        self.atrous_rate = int(atrous_rate)
        self.use_bias = use_bias
        self.use_bn = use_bn
        self.activation = activation
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        self._conv_names = []
        for index in range(self.num_layers):
            attribute = conv_bn_act_name(index, use_bn, activation)
            setattr(self, attribute, conv_class(
                output_channels, kernel_size, strides=strides,
                atrous_rate=atrous_rate, use_bias=use_bias, use_bn=use_bn,
                activation=activation, batch_norm_config=self.batch_norm_config,
                name=attribute[1:]))
            self._conv_names.append(attribute)

    def call(self, inputs, training=None):
        x = inputs
        for attribute in self._conv_names:
            x = getattr(self, attribute)(x, training=training)
        return x

    def get_config(self):
        config = super().get_config()
        config.update({
            "num_layers": self.num_layers,
            "conv_type": self.conv_type,
            "output_channels": self.output_channels,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "atrous_rate": self.atrous_rate,
            "use_bias": self.use_bias,
            "use_bn": self.use_bn,
            "activation": self.activation,
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config


@keras.saving.register_keras_serializable(package="max_deeplab_tf")
class Conv1DBN(base.ComposedLayer):
    """1D convolution (kernel 1 by default), optional batch norm, activation.

    Used on [batch, length, channels] sequences: the memory path of the
    dual-path transformer and the heads on the memory.

    Args:
      output_channels: Filters.
      use_bias: Whether the convolution has a bias (not with use_bn).
      use_bn: Whether a batch norm (over the channel axis) follows.
      bn_gamma_initializer: Initialiser of the batch norm's gamma.
      activation: Activation name or None.
      kernel_initializer: Initialiser of the kernel.
      kernel_size: Kernel size.
      padding: 'valid' or 'same'.
      batch_norm_config: See normalization.default_batch_norm_config.

    Call arguments:
      inputs: A [batch, length, channels] tensor.
      training: Batch norm mode.

    Returns:
      A [batch, length', output_channels] tensor.
    """

    def __init__(self, output_channels: int, use_bias: bool = True,
                 use_bn: bool = False, bn_gamma_initializer="ones",
                 activation: Optional[str] = None,
                 kernel_initializer="he_normal", kernel_size: int = 1,
                 padding: str = "valid",
                 batch_norm_config: Optional[Dict[str, Any]] = None,
                 **kwargs):
        super().__init__(**kwargs)
        _check_bias_and_bn(self.name, use_bias, use_bn)
        self.output_channels = int(output_channels)
        self.use_bias = use_bias
        self.use_bn = use_bn
        self.bn_gamma_initializer = keras.initializers.get(bn_gamma_initializer)
        self.activation = activation
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_size = int(kernel_size)
        self.padding = padding
        self.batch_norm_config = normalization.default_batch_norm_config(
            batch_norm_config)
        self._conv = keras.layers.Conv1D(
            self.output_channels, kernel_size=self.kernel_size, strides=1,
            padding=padding, use_bias=use_bias,
            kernel_initializer=self.kernel_initializer, name="conv")
        if use_bn:
            self._batch_norm = normalization.batch_norm(
                axis=2, name="batch_norm",
                gamma_initializer=self.bn_gamma_initializer,
                batch_norm_config=self.batch_norm_config)
        self._activation_fn = activations.get_activation(activation)

    def call(self, inputs, training=None):
        if self.kernel_size == 1 and xla_compiling_for_cpu():
            # See pointwise_conv_as_matmul.
            if not self._conv.built:
                self._conv.build(inputs.shape)
            x = pointwise_conv_as_matmul(
                inputs, tf.cast(self._conv.kernel, inputs.dtype))
            if self.use_bias:
                x = tf.nn.bias_add(x, tf.cast(self._conv.bias, inputs.dtype))
        else:
            x = self._conv(inputs)
        if self.use_bn:
            x = self._batch_norm(x, training=training)
        return self._activation_fn(x)

    def get_config(self):
        config = super().get_config()
        config.update({
            "output_channels": self.output_channels,
            "use_bias": self.use_bias,
            "use_bn": self.use_bn,
            "bn_gamma_initializer": keras.initializers.serialize(
                self.bn_gamma_initializer),
            "activation": self.activation,
            "kernel_initializer": keras.initializers.serialize(
                self.kernel_initializer),
            "kernel_size": self.kernel_size,
            "padding": self.padding,
            "batch_norm_config": dict(self.batch_norm_config),
        })
        return config

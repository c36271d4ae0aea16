"""The convolutions of the original coupling networks and priors (not flow layers).

openai/glow pads 3x3 convolutions explicitly and appends one input channel that is 1 on the
padded border and 0 inside ("edge padding"), so the network can tell image borders from zeros.
The border channel is the same for every image, so its contribution is a constant map,
`conv_valid(border, W_edge)`, which `EdgePaddedConv2D` adds to an ordinary zero-padded
convolution of the input in one of two forms, the same function either way:
- wide inputs (the last convolution, 512 -> 2c): as an offset map, one small matrix product of
  the border's (constant) patches with `W_edge`, instead of copying every activation to append
  a channel;
- thin inputs (the first convolution, c/2 -> 512): as a ones channel appended to the input
  (`sum(W_edge) - conv_same(1, W_edge)`), which leaves a per-channel bias, so the convolution,
  the bias and the ReLU after it run as one fused operation.

The zero-padded convolution itself (`conv_same`) is the backend's, except where oneDNN would
mostly compute padding: a 1x1 kernel's gradients (`pointwise_conv`), and with TensorFlow on
a CPU a k x k kernel with a thin side of at most 4 channels (a grey image's first level),
whose thin side is shifted tap by tap while one matrix product mixes the channels
(`tap_sum_conv`, `thin_input_conv`). Every form computes the same function.
"""

import functools

import keras
import numpy as np
from keras import ops

from keras_flow.layers.shared_weights import derived


def border_indicator(inputs, kernel_size):
    """`(1, H + k - 1, W + k - 1, 1)` map: 1 on the zero-padding border, 0 over the image."""
    pad = (kernel_size - 1) // 2
    shape = ops.shape(inputs)
    inside = ops.ones((1, shape[1], shape[2], 1), dtype="float32")
    return 1.0 - ops.pad(inside, ((0, 0), (pad, pad), (pad, pad), (0, 0)))


def kernel_taps(border, height, width, kernel_size):
    """The `k * k` shifted `(height, width)` windows of a padded border map, one per tap."""
    return [border[dy:dy + height, dx:dx + width]
            for dy in range(kernel_size) for dx in range(kernel_size)]


THIN = 4  # channels; oneDNN's direct convolutions compute channels in blocks of 16


def conv_same(inputs, kernel):
    """Stride-1 'same' convolution of NHWC `inputs` with a `(k, k, in, out)` kernel. A 1x1
    kernel runs as `pointwise_conv`; on oneDNN (`on_onednn_cpu`), a k x k kernel with a thin
    side (`is_thin`) runs as `tap_sum_conv` (thin outputs) or `thin_input_conv` (thin inputs)."""
    size, _, channels, filters = kernel.shape
    if size == 1 and kernel.shape[1] == 1:
        return pointwise_conv(inputs, kernel)
    if is_thin(filters, channels, size) and on_onednn_cpu():
        return tap_sum_conv(inputs, kernel)
    if is_thin(channels, filters, size) and on_onednn_cpu():
        return thin_input_conv(inputs, kernel)
    return ops.conv(inputs, kernel, padding="same")


def is_thin(thin, wide, kernel_size):
    """Whether a convolution's side of `thin` channels is worth computing tap by tap: at most
    `THIN` channels facing at least `k * k` times as many. oneDNN computes the channels a
    convolution produces (outputs forward, inputs in the input gradient) in blocks of 16, so
    with 3 or 4 of them most of its work is padding (Glow's coupling network on a grey
    image's first level: 4 outputs of the last convolution, 3 inputs of the first)."""
    return thin <= THIN and wide >= kernel_size * kernel_size * thin


@functools.lru_cache(maxsize=1)
def on_onednn_cpu():
    """Whether convolutions run on oneDNN's CPU kernels, whose blocking `is_thin` is about:
    TensorFlow without a GPU. (Under JAX, XLA's CPU convolutions ran W2 twice as fast
    without the thin forms as with them.)"""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_logical_devices("GPU")


def one_hot_taps(kernel_size):
    """`(k, k, k * k)`: 1 at `[dy, dx, t]` for the tap `t = dy * k + dx`, 0 elsewhere."""
    taps = kernel_size * kernel_size
    return np.eye(taps, dtype="float32").reshape(kernel_size, kernel_size, taps)


@functools.lru_cache(maxsize=16)
def tap_selector(kernel_size, filters):
    """The `(k, k, k * k * filters, 1)` depthwise kernel whose channel `t * filters + c` is 1
    at tap t only: its 'same' convolution shifts each channel by its tap's offset."""
    return np.repeat(one_hot_taps(kernel_size), filters, axis=2)[..., None]


@functools.lru_cache(maxsize=16)
def patch_selector(kernel_size, channels):
    """The `(k, k, channels, k * k)` depthwise kernel whose output channel `c * k * k + t` is
    input channel c at tap t's offset: its 'same' convolution gives every pixel's k x k patch."""
    return np.repeat(one_hot_taps(kernel_size)[:, :, None, :], channels, axis=2)


def tap_sum_conv(inputs, kernel):
    """`conv_same(inputs, kernel)` as one matrix product to every tap's outputs and a
    shifted sum, for a k x k kernel with few outputs:

        T = X @ [W_1, ..., W_kk]                       (P pixels, k * k * out columns)
        y[p, c] = sum over taps t of T[p + offset_t, t * out + c]   (0 outside the image)

    The same function as the direct convolution without its padded output channels
    (`is_thin`); the shifted sum is a depthwise convolution with a one-hot kernel
    (`tap_selector`) and a sum over the taps. On the project's CPU it ran Glow's last coupling
    convolution of a grey image 1.7x as fast, forward and backward (BENCHMARKS.md)."""
    size, _, channels, filters = kernel.shape
    taps = size * size
    shape = ops.shape(inputs)
    spatial = (shape[0], shape[1], shape[2])
    per_tap_kernel = ops.reshape(ops.transpose(kernel, (2, 0, 1, 3)), (channels, taps * filters))
    per_tap = ops.reshape(ops.matmul(ops.reshape(inputs, (-1, channels)), per_tap_kernel),
                          spatial + (taps * filters,))
    selector = ops.cast(tap_selector(size, filters), inputs.dtype)
    shifted = ops.depthwise_conv(per_tap, selector, padding="same")
    return ops.sum(ops.reshape(shifted, spatial + (taps, filters)), axis=3)


@ops.custom_gradient
def thin_input_conv(inputs, kernel):
    """`conv_same(inputs, kernel)` for inputs with few channels: the direct convolution
    forward (which fuses with a bias and ReLU after it), and gradients without its padded
    channels (`is_thin`):

        d_inputs = conv_same(d_out, W')     W'[dy, dx] = W[k-1-dy, k-1-dx]^T, as a tap_sum_conv
        d_W = patches(X)^T @ d_out          (P pixels; k * k * in patch columns)

    the values autodiff gives."""
    outputs = ops.conv(inputs, kernel, padding="same")

    def gradient(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        size, _, channels, filters = kernel.shape
        transposed = ops.flip(ops.transpose(kernel, (0, 1, 3, 2)), axis=(0, 1))
        d_inputs = tap_sum_conv(upstream, transposed)
        patches = ops.depthwise_conv(
            inputs, ops.cast(patch_selector(size, channels), inputs.dtype), padding="same")
        d_kernel = ops.matmul(
            ops.transpose(ops.reshape(patches, (-1, channels * size * size))),
            ops.reshape(upstream, (-1, filters)))
        d_kernel = ops.transpose(ops.reshape(d_kernel, (channels, size, size, filters)),
                                 (1, 2, 0, 3))
        return d_inputs, d_kernel

    return outputs, gradient


@ops.custom_gradient
def pointwise_conv(inputs, kernel):
    """A 1x1 convolution whose gradients are matrix products over all `P` pixels:

        d_inputs = d_out @ W^T,   d_W = X^T @ d_out   (X: `(P, in)`, d_out: `(P, out)`)

    the values autodiff gives, but oneDNN runs the product several times faster than its 1x1
    weight gradient (`Conv2DBackpropFilter`) in bfloat16 at Glow's shapes. The forward stays a
    convolution, so it still fuses with the bias and ReLU that follow it."""
    outputs = ops.conv(inputs, kernel, padding="same")

    def gradient(*args, upstream=None):
        upstream = args[0] if upstream is None else upstream
        channels, filters = kernel.shape[-2], kernel.shape[-1]
        d_outputs = ops.reshape(upstream, (-1, filters))
        matrix = ops.reshape(kernel, (channels, filters))
        d_inputs = ops.matmul(d_outputs, ops.transpose(matrix))
        d_kernel = ops.matmul(ops.transpose(ops.reshape(inputs, (-1, channels))), d_outputs)
        return (ops.reshape(d_inputs, ops.shape(inputs)),
                ops.reshape(d_kernel, kernel.shape))

    return outputs, gradient


def with_ones_channel(inputs):
    """`inputs` with one more channel, all ones."""
    return ops.concatenate([inputs, ops.ones_like(inputs[..., :1])], axis=-1)


@functools.lru_cache(maxsize=64)
def static_border_patches(height, width, kernel_size):
    """`border_patches` for a static image size, as a NumPy array (one constant in a graph)."""
    pad = (kernel_size - 1) // 2
    border = np.pad(np.zeros((height, width), "float32"), pad, constant_values=1.0)
    taps = kernel_taps(border, height, width, kernel_size)
    return np.stack(taps, axis=-1).reshape(-1, kernel_size * kernel_size)


def border_patches(inputs, kernel_size):
    """`(H * W, k * k)` patches of the border map: `conv_valid(border, W_edge)` equals
    `border_patches @ reshape(W_edge, (k * k, filters))`. A constant for a static image size;
    built from the input's dynamic shape otherwise."""
    shape = ops.shape(inputs)
    height, width = shape[1], shape[2]
    if isinstance(height, int) and isinstance(width, int):
        return static_border_patches(height, width, kernel_size)
    border = border_indicator(inputs, kernel_size)[0, :, :, 0]
    taps = kernel_taps(border, height, width, kernel_size)
    return ops.reshape(ops.stack(taps, axis=-1), (-1, kernel_size * kernel_size))


@keras.saving.register_keras_serializable(package="keras_flow")
class EdgePaddedConv2D(keras.layers.Layer):
    """Stride-1 'same' convolution with openai/glow's edge-padding channel (optional).

        y = conv_same(x, W) [+ conv_valid(border, W_edge)] [+ b]

    `call(x, output_scale=s, output_shift=t)` returns `y * s + t` (per output channel) with the
    scale folded into `W`, `W_edge` and `b`, so an actnorm after the convolution costs no pass
    over the activations. Weights are float32 under every policy; the folded kernel is cast to
    the compute dtype.

    Args:
        filters: output channels.
        kernel_size: odd square kernel size (3 or 1).
        use_bias: add a bias.
        edge_padding: add the border-indicator term (openai/glow: True).
        kernel_initializer, bias_initializer: Keras initialisers.
    """

    def __init__(self, filters, kernel_size=3, use_bias=True, edge_padding=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        if int(filters) <= 0 or int(kernel_size) % 2 != 1:
            raise ValueError(
                f"EdgePaddedConv2D needs filters > 0 and an odd kernel_size; received "
                f"filters={filters}, kernel_size={kernel_size}.")
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.use_bias = bool(use_bias)
        self.edge_padding = bool(edge_padding) and self.kernel_size > 1
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        k = self.kernel_size
        self.kernel = self.add_weight(
            name="kernel", shape=(k, k, input_shape[-1], self.filters),
            initializer=self.kernel_initializer, autocast=False)
        if self.edge_padding:
            self.edge_kernel = self.add_weight(
                name="edge_kernel", shape=(k, k, 1, self.filters),
                initializer=self.kernel_initializer, autocast=False)
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias", shape=(self.filters,), initializer=self.bias_initializer,
                autocast=False)

    def call(self, inputs, output_scale=None, output_shift=None):
        key = ("folded", str(inputs.dtype), tuple(inputs.shape[1:3]))
        kernel, offset = derived(self, key,
                                 lambda: self.folded(inputs, output_scale, output_shift),
                                 depends_on=(output_scale, output_shift))
        if self.border_as_channel(inputs):
            inputs = with_ones_channel(inputs)
        outputs = conv_same(inputs, kernel)
        return outputs if offset is None else outputs + offset

    def border_as_channel(self, inputs):
        """Whether the border term runs as an extra input channel of ones (thin inputs) rather
        than as a `(1, H, W, filters)` offset map (see `folded`)."""
        return self.edge_padding and inputs.shape[-1] < self.filters

    def folded(self, inputs, output_scale=None, output_shift=None):
        """`(kernel, offset)` in the inputs' dtype, with `output_scale` and `output_shift`
        folded in: the convolution is `conv(inputs, kernel) [+ offset]`, or
        `conv(with_ones_channel(inputs), kernel) + offset` when `border_as_channel`.

        The border term as a channel: `conv_valid(border, W_edge) = sum(W_edge) -
        conv_same(1, W_edge)`, since the taps that fall on the border are all taps minus those
        inside the image. So a ones channel with kernel `-W_edge` plus the per-channel bias
        `sum(W_edge)` give it, and the offset is per channel: the convolution, its offset and
        the ReLU after it run as one fused operation."""
        kernel, offset = self.kernel, self.offset(inputs)
        if self.border_as_channel(inputs):
            kernel = ops.concatenate([kernel, -self.edge_kernel], axis=2)
        if output_scale is not None:  # (Keras casts tensor arguments to the compute dtype)
            output_scale = ops.cast(output_scale, "float32")
            kernel = kernel * output_scale
            offset = None if offset is None else offset * output_scale
        if output_shift is not None:
            output_shift = ops.cast(output_shift, "float32")
            offset = output_shift if offset is None else offset + output_shift
        compute_dtype = inputs.dtype
        return (ops.cast(kernel, compute_dtype),
                None if offset is None else ops.cast(offset, compute_dtype))

    def offset(self, inputs):
        """The part of the outputs that does not depend on the input values, float32: the
        border term plus the bias, `(1, H, W, filters)`; `(filters,)` when the border runs as a
        ones channel (its constant part `sum(W_edge)`) or without edge padding; None without
        either."""
        offset = self.bias if self.use_bias else None
        if not self.edge_padding:
            return offset
        if self.border_as_channel(inputs):
            border = ops.sum(self.edge_kernel, axis=(0, 1, 2))
        else:
            k, shape = self.kernel_size, ops.shape(inputs)
            border = ops.reshape(
                ops.matmul(border_patches(inputs, k),
                           ops.reshape(self.edge_kernel, (k * k, -1))),
                (1, shape[1], shape[2], self.filters))
        return border if offset is None else border + offset

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters, kernel_size=self.kernel_size, use_bias=self.use_bias,
            edge_padding=self.edge_padding,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            bias_initializer=keras.initializers.serialize(self.bias_initializer))
        return config


@keras.saving.register_keras_serializable(package="keras_flow")
class ZeroConv2D(EdgePaddedConv2D):
    """openai/glow's `conv2d_zeros`: a zero-initialised convolution with a learned output scale.

        y = (conv(x, W) + b) * exp(log_scale_factor * logs)

    `W`, `b` and `logs` start at zero, so the layer outputs zeros until trained: the couplings
    it ends start as the identity (additive) or a fixed contraction (affine), and the priors it
    feeds start as N(0, I).
    """

    def __init__(self, filters, kernel_size=3, edge_padding=True, log_scale_factor=3.0, **kwargs):
        kwargs.pop("use_bias", None)
        kwargs.pop("kernel_initializer", None)
        kwargs.pop("bias_initializer", None)
        super().__init__(filters, kernel_size=kernel_size, use_bias=True,
                         edge_padding=edge_padding, kernel_initializer="zeros",
                         bias_initializer="zeros", **kwargs)
        self.log_scale_factor = float(log_scale_factor)

    def build(self, input_shape):
        super().build(input_shape)
        self.logs = self.add_weight(name="logs", shape=(self.filters,), initializer="zeros",
                                    autocast=False)

    def call(self, inputs):
        scale = derived(self, "output_scale", lambda: ops.exp(self.log_scale_factor * self.logs))
        return super().call(inputs, output_scale=scale)

    def get_config(self):
        config = super().get_config()
        config.update(log_scale_factor=self.log_scale_factor)
        return config


@keras.saving.register_keras_serializable(package="keras_flow")
class WeightNormConv2D(keras.layers.Layer):
    """RealNVP's weight-normalised 'same' convolution: `w = g * v / ||v||` per output channel.

    `v ~ U(-s, s)` with `s = sqrt(2 / fan_in_channels)`; the gain `g` (when `use_gain`) starts
    at `s * sqrt(fan_in / 12)` as in tensorflow/models real_nvp_utils.
    """

    def __init__(self, filters, kernel_size=3, use_gain=True, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self.use_gain = bool(use_gain)
        self.use_bias = bool(use_bias)

    def build(self, input_shape):
        k, channels = self.kernel_size, int(input_shape[-1])
        limit = (2.0 / channels) ** 0.5
        self.direction = self.add_weight(
            name="direction", shape=(k, k, channels, self.filters),
            initializer=keras.initializers.RandomUniform(-limit, limit))
        if self.use_gain:
            self.gain = self.add_weight(
                name="gain", shape=(self.filters,),
                initializer=keras.initializers.Constant(limit * (channels * k * k / 12.0) ** 0.5))
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    def call(self, inputs):
        norm = ops.sqrt(ops.sum(ops.square(self.direction), axis=(0, 1, 2)) + 1e-12)
        kernel = self.direction / norm
        if self.use_gain:
            kernel = kernel * self.gain
        outputs = conv_same(inputs, kernel)
        if self.use_bias:
            outputs = outputs + self.bias
        return outputs

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, kernel_size=self.kernel_size,
                      use_gain=self.use_gain, use_bias=self.use_bias)
        return config

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

The zero-padded convolution itself is the one `keras_flow.kernels.conv_same_for` picks for
the kernel's shape when the layer is built (the seam for speed; `keras.ops.conv` is its
reference), so no layer probes the platform while it runs.
"""

import keras
import numpy as np
from keras import ops

from keras_flow import kernels
from keras_flow.kernels.batch_shards import derive


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


def with_ones_channel(inputs):
    """`inputs` with one more channel, all ones."""
    return ops.concatenate([inputs, ops.ones_like(inputs[..., :1])], axis=-1)


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

    The 'same' convolution is the one `keras_flow.kernels.conv_same_for` picks for the
    kernel's shape at build time (`keras.ops.conv` or a faster form of the same function).
    `call(x, output_scale=s, output_shift=t, shared=None)` returns `y * s + t` (per output channel) with the
    scale folded into `W`, `W_edge` and `b`, so an actnorm after the convolution costs no pass
    over the activations; a model's `SharedDerivations` (`shared`) folds once for all its
    batch shards. Weights are float32 under every policy; the folded kernel is cast to
    the compute dtype.

    Args:
        filters: output channels.
        kernel_size: odd square kernel size (3 or 1).
        use_bias: add a bias.
        edge_padding: add the border-indicator term (openai/glow: True).
        kernel_initializer, bias_initializer: Keras initialisers.

    Example:
        >>> x = np.ones((2, 8, 8, 3), "float32")
        >>> tuple(keras_flow.layers.EdgePaddedConv2D(16, 3)(x).shape)
        (2, 8, 8, 16)

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039; openai/glow `conv2d` (edge padding).
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
        channels = input_shape[-1] + int(self.border_as_channel(input_shape[-1]))
        self.conv_same = kernels.conv_same_for((k, k, channels, self.filters))

    def call(self, inputs, output_scale=None, output_shift=None, shared=None):
        key = ("folded", str(inputs.dtype), tuple(inputs.shape[1:3]))
        kernel, offset = derive(shared, self, key,
                                lambda: self.folded(inputs, output_scale, output_shift),
                                depends_on=(output_scale, output_shift))
        if self.border_as_channel(inputs.shape[-1]):
            inputs = with_ones_channel(inputs)
        outputs = self.conv_same(inputs, kernel)
        return outputs if offset is None else outputs + offset

    def border_as_channel(self, channels):
        """Whether, for inputs of `channels` channels, the border term runs as an extra input
        channel of ones (thin inputs) rather than as a `(1, H, W, filters)` offset map (see
        `folded`)."""
        return self.edge_padding and channels < self.filters

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
        if self.border_as_channel(inputs.shape[-1]):
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
        if self.border_as_channel(inputs.shape[-1]):
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
    feeds start as N(0, I). It is an `EdgePaddedConv2D` whose bias and initialisers are fixed
    (`FIXED`): other values raise instead of being dropped. (A subclass, not a wrapper, so the
    weights keep their paths in `.keras` files.)

    Example:
        >>> x = np.ones((2, 8, 8, 3), "float32")
        >>> float(np.max(np.abs(keras_flow.layers.ZeroConv2D(4)(x))))  # zeros until trained
        0.0

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, section 3.3; openai/glow `conv2d_zeros`.
    """

    FIXED = dict(use_bias=True, kernel_initializer="zeros", bias_initializer="zeros")

    def __init__(self, filters, kernel_size=3, edge_padding=True, log_scale_factor=3.0, **kwargs):
        for name, fixed in self.FIXED.items():  # configs of keras_flow 0.1.0 still carry them
            given = kwargs.pop(name, fixed)
            same = given == fixed if name == "use_bias" else (  # Zeros has no config
                type(keras.initializers.get(given)) is type(keras.initializers.get(fixed)))
            if not same:
                raise ValueError(f"ZeroConv2D fixes {name}={fixed!r} (a zero-initialised, "
                                 f"biased convolution); got {given!r}. Use EdgePaddedConv2D "
                                 "for another convolution.")
        super().__init__(filters, kernel_size=kernel_size, edge_padding=edge_padding,
                         **self.FIXED, **kwargs)
        self.log_scale_factor = float(log_scale_factor)

    def build(self, input_shape):
        super().build(input_shape)
        self.logs = self.add_weight(name="logs", shape=(self.filters,), initializer="zeros",
                                    autocast=False)

    def call(self, inputs, shared=None):
        scale = derive(shared, self, "output_scale",
                       lambda: ops.exp(self.log_scale_factor * self.logs))
        return super().call(inputs, output_scale=scale, shared=shared)

    def get_config(self):
        config = {key: value for key, value in super().get_config().items()
                  if key not in self.FIXED}
        config.update(log_scale_factor=self.log_scale_factor)
        return config


@keras.saving.register_keras_serializable(package="keras_flow")
class WeightNormConv2D(keras.layers.Layer):
    """RealNVP's weight-normalised 'same' convolution: `w = g * v / ||v||` per output channel.

    `v ~ U(-s, s)` with `s = sqrt(2 / fan_in_channels)`; the gain `g` (when `use_gain`) starts
    at `s * sqrt(fan_in / 12)` as in tensorflow/models real_nvp_utils.

    Example:
        >>> x = np.ones((2, 8, 8, 3), "float32")
        >>> tuple(keras_flow.layers.WeightNormConv2D(16, 3)(x).shape)
        (2, 8, 8, 16)

    Reference: Salimans & Kingma, "Weight Normalization", arXiv:1602.07868; Dinh et al.,
    arXiv:1605.08803.
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
        self.conv_same = kernels.conv_same_for((k, k, channels, self.filters))

    def call(self, inputs):
        norm = ops.sqrt(ops.sum(ops.square(self.direction), axis=(0, 1, 2)) + 1e-12)
        kernel = self.direction / norm
        if self.use_gain:
            kernel = kernel * self.gain
        outputs = self.conv_same(inputs, kernel)
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

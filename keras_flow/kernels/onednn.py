"""Convolutions for oneDNN's CPU kernels (TensorFlow without a GPU), by thin side.

oneDNN computes the channels a convolution produces (outputs forward, inputs in the input
gradient) in blocks of 16, so with 3 or 4 of them most of its work is padding: Glow's coupling
network on a grey image's first level has 4 outputs of the last convolution and 3 inputs of
the first. These forms compute the same function without the padded channels:
- `tap_sum_conv` (thin outputs): one matrix product to every tap's outputs and a shifted sum;
- `thin_input_conv` (thin inputs): the direct convolution forward (it fuses with the bias and
  ReLU after it) and gradients as matrix products over the pixels' patches.
Backend-neutral `keras.ops` code; `keras_flow.kernels` chooses it only on oneDNN.
"""

import numpy as np
from keras import ops

THIN = 4  # channels; oneDNN's direct convolutions compute channels in blocks of 16


def is_thin(thin, wide, kernel_size):
    """Whether a convolution's side of `thin` channels is worth computing tap by tap: at most
    `THIN` channels facing at least `k * k` times as many. oneDNN computes the channels a
    convolution produces (outputs forward, inputs in the input gradient) in blocks of 16, so
    with 3 or 4 of them most of its work is padding (Glow's coupling network on a grey
    image's first level: 4 outputs of the last convolution, 3 inputs of the first)."""
    return thin <= THIN and wide >= kernel_size * kernel_size * thin


def one_hot_taps(kernel_size):
    """`(k, k, k * k)`: 1 at `[dy, dx, t]` for the tap `t = dy * k + dx`, 0 elsewhere."""
    taps = kernel_size * kernel_size
    return np.eye(taps, dtype="float32").reshape(kernel_size, kernel_size, taps)


def tap_selector(kernel_size, filters):
    """The `(k, k, k * k * filters, 1)` depthwise kernel whose channel `t * filters + c` is 1
    at tap t only: its 'same' convolution shifts each channel by its tap's offset."""
    return np.repeat(one_hot_taps(kernel_size), filters, axis=2)[..., None]


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

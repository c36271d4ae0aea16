"""The one seam for speed: which convolution kernels the layers run, chosen at build time.

Every form here computes the same function as `keras.ops.conv(x, W, padding="same")`, the
reference; they differ in speed on a given platform. A layer asks `conv_same_for` once, in its
`build`, and keeps the function it gets, so nothing is probed while the model runs:

| kernels       | 1x1 kernels                        | k x k kernels with a thin side (<= 4)  |
|---------------|------------------------------------|----------------------------------------|
| `"reference"` | `keras.ops.conv`                   | `keras.ops.conv`                       |
| `"portable"`  | `pointwise.pointwise_conv`         | `keras.ops.conv`                       |
| `"onednn"`    | `pointwise.pointwise_conv`         | `onednn.tap_sum_conv` / `thin_input_conv` |

`"auto"` is `"onednn"` with TensorFlow on a CPU (oneDNN's kernels, whose channel blocking the
thin forms avoid) and `"portable"` elsewhere (under JAX, XLA's CPU convolutions ran W2 twice
as fast without the thin forms as with them). The other speed machinery sits beside it:
`keras_flow.kernels.batch_shards` (data parallelism over the cores inside one step, and the
weight-derived tensors its shards share) and `keras_flow.kernels.fused_updates` (TensorFlow's
one-op optimizer updates).
"""

import functools

from keras import ops

from keras_flow.kernels.onednn import is_thin
from keras_flow.kernels.onednn import tap_sum_conv
from keras_flow.kernels.onednn import thin_input_conv
from keras_flow.kernels.pointwise import pointwise_conv

KERNELS = ("auto", "reference", "portable", "onednn")


def reference_conv(inputs, kernel):
    """Stride-1 'same' convolution of NHWC `inputs` with a `(k, k, in, out)` kernel."""
    return ops.conv(inputs, kernel, padding="same")


@functools.cache
def detected_kernels():
    """`"onednn"` for TensorFlow without a GPU, else `"portable"` (asked once per process)."""
    import keras

    if keras.backend.backend() != "tensorflow":
        return "portable"
    import tensorflow as tf

    return "portable" if tf.config.list_logical_devices("GPU") else "onednn"


def resolve(kernels="auto"):
    """The kernel set `kernels` names, with `"auto"` resolved for this process."""
    if kernels not in KERNELS:
        raise ValueError(f"Unknown kernels {kernels!r}; choose one of {KERNELS}.")
    return detected_kernels() if kernels == "auto" else kernels


def conv_same_for(kernel_shape, kernels="auto"):
    """The function `(inputs, kernel) -> 'same' convolution` to use for a kernel of
    `kernel_shape` `(k, k, in, out)` with the kernel set `kernels` (see the table above)."""
    kernels = resolve(kernels)
    size, _, channels, filters = kernel_shape
    if kernels == "reference":
        return reference_conv
    if size == 1 and kernel_shape[1] == 1:
        return pointwise_conv
    if kernels == "onednn" and is_thin(filters, channels, size):
        return tap_sum_conv
    if kernels == "onednn" and is_thin(channels, filters, size):
        return thin_input_conv
    return reference_conv

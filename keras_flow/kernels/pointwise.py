"""The 1x1 convolution with matrix-product gradients (every backend)."""

from keras import ops


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

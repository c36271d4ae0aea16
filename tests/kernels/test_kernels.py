"""`keras_flow.kernels`: every form computes the reference 'same' convolution and its
gradients, and the seam picks them by platform and kernel shape."""

import keras
import numpy as np
import pytest

from keras_flow import kernels
from keras_flow.kernels.onednn import tap_sum_conv
from keras_flow.kernels.onednn import thin_input_conv
from keras_flow.kernels.pointwise import pointwise_conv
from tests.flow_checks import random_images


@pytest.mark.parametrize("shape", [(2, 4, 5, 6), (3, 1, 1, 2)])
def test_pointwise_conv_gradients_equal_autodiff_of_the_convolution(shape):
    """`pointwise_conv`'s matrix-product gradients == TensorFlow's gradients of the 1x1 conv."""
    import tensorflow as tf

    x = tf.constant(random_images(shape, seed=4))
    rng = np.random.default_rng(5)
    kernel = tf.constant(rng.normal(size=(1, 1, shape[-1], 7)).astype("float32"))
    upstream = tf.constant(rng.normal(size=shape[:3] + (7,)).astype("float32"))

    def gradients(conv):
        with tf.GradientTape() as tape:
            tape.watch([x, kernel])
            loss = tf.reduce_sum(conv(x, kernel) * upstream)
        return tape.gradient(loss, [x, kernel])

    got = gradients(pointwise_conv)
    expected = gradients(lambda a, w: keras.ops.conv(a, w, padding="same"))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(pointwise_conv(x, kernel)),
                               keras.ops.convert_to_numpy(keras.ops.conv(x, kernel)), atol=1e-6)
    for g, e in zip(got, expected):
        assert g.shape == e.shape
        np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-5)


def conv_and_gradients(conv, x, kernel, upstream):
    """`conv(x, kernel)` and the gradients of `sum(conv(x, kernel) * upstream)`."""
    import tensorflow as tf

    with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        outputs = conv(x, kernel)
        loss = tf.reduce_sum(outputs * upstream)
    return [outputs] + tape.gradient(loss, [x, kernel])


@pytest.mark.parametrize("conv, shape, size, filters", [
    (tap_sum_conv, (2, 5, 6, 40), 3, 4), (tap_sum_conv, (3, 4, 4, 9), 3, 1),
    (tap_sum_conv, (1, 6, 5, 26), 5, 1),
    (thin_input_conv, (2, 5, 6, 3), 3, 40), (thin_input_conv, (3, 4, 4, 1), 3, 9),
    (thin_input_conv, (1, 6, 5, 2), 5, 50)])
def test_thin_side_convs_equal_the_direct_convolution_and_its_gradients(conv, shape, size,
                                                                        filters):
    """`tap_sum_conv` and `thin_input_conv`: the same outputs and gradients (input and kernel)
    as the 'same' convolution, borders included, at a static and an unknown image size."""
    import tensorflow as tf

    x = tf.constant(random_images(shape, seed=6))
    rng = np.random.default_rng(7)
    kernel = tf.constant(rng.normal(size=(size, size, shape[-1], filters)).astype("float32"))
    upstream = tf.constant(rng.normal(size=shape[:3] + (filters,)).astype("float32"))
    expected = conv_and_gradients(lambda a, w: keras.ops.conv(a, w, padding="same"), x,
                                  kernel, upstream)
    for got in (conv_and_gradients(conv, x, kernel, upstream),
                tf.function(lambda a, w: conv_and_gradients(conv, a, w, upstream),
                            input_signature=[tf.TensorSpec((None, None, None, shape[-1])),
                                             tf.TensorSpec(kernel.shape)])(x, kernel)):
        for g, e in zip(got, expected):
            assert g.shape == e.shape
            np.testing.assert_allclose(g.numpy(), e.numpy(), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("channels, filters, size, path", [
    (36, 4, 3, "tap_sum_conv"), (35, 4, 3, None), (128, 5, 3, None),
    (3, 27, 3, "thin_input_conv"), (3, 26, 3, None), (5, 128, 3, None), (128, 4, 1, None)])
def test_onednn_kernels_take_the_thin_side_forms_for_few_of_many_channels(
        channels, filters, size, path):
    """<= 4 outputs of >= k*k*out inputs: `tap_sum_conv`; <= 4 inputs to >= k*k*in outputs:
    `thin_input_conv`; else the direct convolution (1x1: `pointwise_conv`)."""
    chosen = kernels.conv_same_for((size, size, channels, filters), "onednn")
    default = "pointwise_conv" if size == 1 else "reference_conv"
    assert chosen.__name__ == (path or default)


def test_auto_kernels_are_onednn_for_tensorflow_on_this_cpu_and_reference_is_plain():
    assert kernels.resolve("auto") == "onednn"
    for shape in ((3, 3, 36, 4), (1, 1, 8, 8), (3, 3, 3, 27)):
        assert kernels.conv_same_for(shape, "reference") is kernels.reference_conv
        assert kernels.conv_same_for(shape, "portable").__name__ != "tap_sum_conv"
    with pytest.raises(ValueError, match="Unknown kernels"):
        kernels.resolve("fast")


def test_tap_sum_conv_in_bfloat16_stays_within_a_few_rounding_steps():
    """Under a bfloat16 policy the taps' products are rounded to bfloat16 before their sum
    (the direct convolution rounds once): the result, in bfloat16, stays within a few
    bfloat16 steps of the float32 convolution of the same values (about one step here,
    against two thirds of one for the direct bfloat16 convolution)."""
    x = keras.ops.cast(random_images((2, 5, 6, 40), seed=8), "bfloat16")
    kernel = keras.ops.cast(np.random.default_rng(9).normal(size=(3, 3, 40, 4)), "bfloat16")
    got = tap_sum_conv(x, kernel)
    assert keras.backend.standardize_dtype(got.dtype) == "bfloat16"
    expected = keras.ops.convert_to_numpy(keras.ops.conv(
        keras.ops.cast(x, "float32"), keras.ops.cast(kernel, "float32"), padding="same"))
    error = np.abs(keras.ops.convert_to_numpy(keras.ops.cast(got, "float32")) - expected)
    assert np.max(error) <= 4 * 2.0 ** -8 * np.max(np.abs(expected))

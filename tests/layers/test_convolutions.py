import keras
import numpy as np
import pytest

from keras_flow.layers import EdgePaddedConv2D
from keras_flow.layers import ZeroConv2D
from keras_flow.layers import convolutions
from keras_flow.layers.convolutions import pointwise_conv
from keras_flow.layers.convolutions import tap_sum_conv
from keras_flow.layers.convolutions import thin_input_conv
from tests.flow_checks import perturb_weights
from tests.flow_checks import random_images


def explicit_border_channel_conv(layer, x):
    """openai/glow's way: VALID conv of concat(zero-pad(x), border indicator), 3x3, no bias."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    border = np.pad(np.zeros(x.shape[:3] + (1,), "float32"), ((0, 0), (1, 1), (1, 1), (0, 0)),
                    constant_values=1.0)
    kernel = np.concatenate([keras.ops.convert_to_numpy(layer.kernel),
                             keras.ops.convert_to_numpy(layer.edge_kernel)], axis=2)
    return keras.ops.convert_to_numpy(
        keras.ops.conv(np.concatenate([padded, border], -1), kernel, padding="valid"))


# The border term runs as a ones channel for thin inputs (3 -> 4 filters) and as an offset
# map otherwise (3 -> 2 filters): both forms are checked against openai/glow's.
BORDER_FORMS = {"ones_channel": 4, "offset_map": 2}


def edge_padded_conv(form, **kwargs):
    layer = EdgePaddedConv2D(BORDER_FORMS[form], 3, **kwargs)
    assert layer.border_as_channel(random_images((1, 2, 2, 3))) == (form == "ones_channel")
    return layer


@pytest.mark.parametrize("form", BORDER_FORMS)
def test_edge_padding_equals_openai_glow_explicit_border_channel(form):
    """conv_same(x) + conv_valid(border) == VALID conv of concat(pad(x), border) (openai/glow)."""
    x = random_images((2, 5, 6, 3))
    layer = edge_padded_conv(form, use_bias=False)
    layer.build(x.shape)
    perturb_weights(layer, scale=0.3)
    got = keras.ops.convert_to_numpy(layer(x))
    expected = explicit_border_channel_conv(layer, x)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The same through the dynamic-shape path (image size unknown when traced).
    import tensorflow as tf
    dynamic = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 3))])
    np.testing.assert_allclose(dynamic(x).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("form", BORDER_FORMS)
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_folded_output_affine_equals_explicit_scale_and_shift(form, use_bias, affine):
    """call(x, output_scale=s, output_shift=t) == (openai/glow's conv + b) * s + t, with s, t
    folded into the weights; static and dynamic image sizes."""
    import tensorflow as tf

    x = random_images((2, 5, 6, 3))
    layer = edge_padded_conv(form, use_bias=use_bias)
    filters = layer.filters
    layer.build(x.shape)
    perturb_weights(layer, scale=0.3)
    rng = np.random.default_rng(1)
    scale, shift = (rng.uniform(0.5, 2.0, filters).astype("float32"),
                    rng.normal(size=filters).astype("float32")) if affine else (None, None)
    expected = explicit_border_channel_conv(layer, x)
    if use_bias:
        expected = expected + keras.ops.convert_to_numpy(layer.bias)
    if affine:
        expected = expected * scale + shift
    got = layer(x, output_scale=scale, output_shift=shift)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-5, atol=1e-5)
    dynamic = tf.function(lambda images: layer(images, output_scale=scale, output_shift=shift),
                          input_signature=[tf.TensorSpec((None, None, None, 3))])
    np.testing.assert_allclose(dynamic(x).numpy(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor", [None, 1.0])
def test_zero_conv_starts_at_zero_and_scales_by_exp_factor_logs(factor):
    """Default factor 3 (openai/glow), or the one given."""
    x = random_images((2, 4, 4, 3))
    layer = ZeroConv2D(5) if factor is None else ZeroConv2D(5, log_scale_factor=factor)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x)), 0.0)
    perturb_weights(layer, scale=0.1)
    logs = keras.ops.convert_to_numpy(layer.logs)
    base = keras.ops.convert_to_numpy(EdgePaddedConv2D.call(layer, x))
    expected = base * np.exp((3.0 if factor is None else factor) * logs)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)), expected, rtol=1e-5,
                               atol=1e-6)


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
def test_conv_same_takes_the_thin_side_forms_for_few_of_many_channels_on_onednn(
        monkeypatch, channels, filters, size, path):
    """<= 4 outputs of >= k*k*out inputs: `tap_sum_conv`; <= 4 inputs to >= k*k*in outputs:
    `thin_input_conv`; else the direct convolution (TensorFlow on this CPU: oneDNN)."""
    calls = []
    for name in ("tap_sum_conv", "thin_input_conv"):
        monkeypatch.setattr(convolutions, name, lambda inputs, kernel, name=name: calls.append(
            name) or keras.ops.conv(inputs, kernel, padding="same"))
    x = random_images((1, 4, 4, channels))
    convolutions.conv_same(x, np.ones((size, size, channels, filters), "float32"))
    assert convolutions.on_onednn_cpu()
    assert calls == ([path] if path else [])


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

import keras
import numpy as np
import pytest

from keras_flow.layers import EdgePaddedConv2D
from keras_flow.layers import ZeroConv2D
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
    assert layer.border_as_channel(3) == (form == "ones_channel")
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


def test_zero_conv_refuses_other_fixed_settings_but_loads_old_configs():
    with pytest.raises(ValueError, match="ZeroConv2D fixes kernel_initializer"):
        ZeroConv2D(4, kernel_initializer="glorot_uniform")
    with pytest.raises(ValueError, match="ZeroConv2D fixes use_bias"):
        ZeroConv2D(4, use_bias=False)
    layer = ZeroConv2D(4, log_scale_factor=2.0)
    assert not set(ZeroConv2D.FIXED) & set(layer.get_config())
    old_config = {**layer.get_config(), "use_bias": True,  # as keras_flow 0.1.0 saved it
                  "kernel_initializer": keras.initializers.serialize(keras.initializers.Zeros()),
                  "bias_initializer": keras.initializers.serialize(keras.initializers.Zeros())}
    assert ZeroConv2D.from_config(old_config).log_scale_factor == 2.0

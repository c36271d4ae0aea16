import numpy as np
import pytest
import keras

from keras_flow.layers import AdditiveCoupling
from keras_flow.layers import AffineCoupling
from tests.flow_checks import random_images
from tests.flow_checks import run_flow_checks

VARIANTS = {
    "additive": lambda **kw: AdditiveCoupling(hidden_width=16, **kw),
    "affine": lambda **kw: AffineCoupling(hidden_width=16, **kw),
    "affine-parity1": lambda **kw: AffineCoupling(hidden_width=16, mask_parity=1, **kw),
    "affine-exp": lambda **kw: AffineCoupling(hidden_width=16, scale_fn="exp", **kw),
    "additive-checkerboard": lambda **kw: AdditiveCoupling(
        hidden_width=16, mask="checkerboard", **kw),
    "realnvp-checkerboard": lambda **kw: AffineCoupling(
        hidden_width=16, mask="checkerboard", network="resnet", residual_blocks=1,
        scale_fn="tanh", tanh_scale_init=0.0, **kw),
    "realnvp-channel": lambda **kw: AffineCoupling(
        hidden_width=16, network="resnet", residual_blocks=1, scale_fn="tanh", **kw),
    # keras_flow 0.1.0's s/t network: raw input, no skip path (what old files rebuild)
    "realnvp-checkerboard-0.1.0": lambda **kw: AffineCoupling(
        hidden_width=16, mask="checkerboard", network="resnet", residual_blocks=1,
        scale_fn="tanh", tanh_scale_init=0.0, resnet_input_norm=False, resnet_skip=False, **kw),
    # thin sides (convolutions.is_thin), on oneDNN: the first convolution as a
    # `thin_input_conv` (3 inputs, 36 outputs), the last as a `tap_sum_conv` (36 -> 4, 20 -> 2)
    "affine-thin-sides": lambda **kw: AffineCoupling(hidden_width=36, **kw),
    "additive-thin-output": lambda **kw: AdditiveCoupling(hidden_width=20, **kw),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_flow_contract(name, tmp_path):
    run_flow_checks(VARIANTS[name], (4, 8, 8, 4), tmp_path, perturb_scale=0.1)


@pytest.mark.parametrize("channels", [3, 5])
@pytest.mark.parametrize("make", [AdditiveCoupling, AffineCoupling])
def test_odd_channel_counts(make, channels, tmp_path):
    run_flow_checks(lambda **kw: make(hidden_width=8, **kw), (2, 4, 4, channels), tmp_path,
                    perturb_scale=0.1, tiny_shape=(2, 4, 4, channels))


def test_untrained_additive_is_the_identity():
    x = random_images((2, 4, 4, 4))
    y, log_det = AdditiveCoupling(hidden_width=8)(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(y), x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(log_det), 0.0)


def test_untrained_affine_is_the_sigmoid_2_contraction():
    x = random_images((2, 4, 4, 4))
    y, log_det = AffineCoupling(hidden_width=8)(x)
    y = keras.ops.convert_to_numpy(y)
    scale = 1.0 / (1.0 + np.exp(-2.0))
    np.testing.assert_array_equal(y[..., :2], x[..., :2])
    np.testing.assert_allclose(y[..., 2:], x[..., 2:] * scale, rtol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(log_det), 32 * np.log(scale), rtol=1e-5)


def test_checkerboard_keeps_the_given_pixels():
    x = random_images((2, 4, 4, 1))
    layer = AffineCoupling(hidden_width=8, mask="checkerboard")
    layer(x)
    for weight in layer.trainable_weights:
        weight.assign(weight + 0.1)
    y = keras.ops.convert_to_numpy(layer(x)[0])
    given = (np.add.outer(np.arange(4), np.arange(4)) % 2 == 0)
    np.testing.assert_array_equal(y[:, given], x[:, given])
    assert not np.allclose(y[:, ~given], x[:, ~given])


def test_one_channel_without_a_spatial_mask_raises():
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 1\).*mask='checkerboard'"):
        AffineCoupling(hidden_width=8)(np.zeros((2, 4, 4, 1), "float32"))


def test_bad_options_raise():
    with pytest.raises(ValueError, match="mask"):
        AffineCoupling(mask="stripes")
    with pytest.raises(ValueError, match="scale_fn"):
        AffineCoupling(scale_fn="softplus")
    with pytest.raises(ValueError, match="hidden_width"):
        AdditiveCoupling(hidden_width=0)


def test_default_width_is_glow_512():
    assert AffineCoupling().hidden_width == 512 and AdditiveCoupling().hidden_width == 512


def test_inverse_is_finite_when_the_scale_vanishes():
    x = random_images((2, 4, 4, 2))
    layer = AffineCoupling(hidden_width=8)
    layer(x)
    layer.network.conv_out.bias.assign(np.full((2,), -1e4, "float32"))
    y, log_det = layer(x)
    x_back, _ = layer(y, inverse=True)
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(x_back)))
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(log_det)))


@pytest.mark.parametrize("log_scale_clip", [15.0, 4.0, None])
def test_sigmoid_scale_matches_the_log_sigmoid_formula(log_scale_clip):
    """The sigmoid coupling computes `scale = max(sigmoid(raw + 2), exp(-clip))` and its log;
    the reference is openai/glow's formula in log space, `clip(log_sigmoid(raw + 2))`, with
    raw values spread so that the clip acts on some of them."""
    x = random_images((2, 4, 4, 4))
    layer = AffineCoupling(hidden_width=8, log_scale_clip=log_scale_clip)
    layer(x)
    rng = np.random.default_rng(3)
    conv_out = layer.network.conv_out
    for weight in (conv_out.kernel, conv_out.edge_kernel, conv_out.bias):
        weight.assign(rng.normal(0.0, 10.0, weight.shape).astype("float32"))
    y, log_det = (keras.ops.convert_to_numpy(v) for v in layer(x))
    h = keras.ops.convert_to_numpy(layer.network(x[..., :2])).astype("float64")
    shift, raw = h[..., 0::2], h[..., 1::2]
    log_scale = -np.logaddexp(0.0, -(raw + 2.0))
    if log_scale_clip is not None:
        assert (log_scale < -log_scale_clip).any() and (log_scale > -log_scale_clip).any()
        log_scale = np.maximum(log_scale, -log_scale_clip)
    expected = (x[..., 2:] + shift) * np.exp(log_scale)
    np.testing.assert_allclose(y[..., :2], x[..., :2])
    np.testing.assert_allclose(y[..., 2:], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(log_det, log_scale.sum(axis=(1, 2, 3)), rtol=1e-5)
    x_back, inverse_log_det = (keras.ops.convert_to_numpy(v)
                               for v in layer(layer(x)[0], inverse=True))
    np.testing.assert_allclose(x_back, x, atol=1e-4)
    np.testing.assert_allclose(inverse_log_det, -log_det, rtol=1e-6)


def test_a_config_without_the_resnet_options_rebuilds_the_0_1_0_network():
    config = AffineCoupling(hidden_width=8, network="resnet").get_config()
    assert config["resnet_input_norm"] and config["resnet_skip"]
    del config["resnet_input_norm"], config["resnet_skip"]
    old = AffineCoupling.from_config(config)
    old.build((None, 4, 4, 4))
    assert not old.network.input_norm and not old.network.skip
    assert old.network.get_config()["masked_input"] is False


def test_checkerboard_tells_the_network_its_input_carries_the_mask():
    layer = AffineCoupling(hidden_width=8, network="resnet", mask="checkerboard")
    layer.build((None, 4, 4, 2))
    assert layer.network.masked_input
    assert layer.network.conv_in.direction.shape[2] == 2 * 2 + 1

import numpy as np
import keras
import pytest

from keras_flow.layers import BatchNormFlow
from tests.flow_checks import random_images
from tests.flow_checks import run_flow_checks

VARIANTS = {
    "all-units": lambda **kw: BatchNormFlow(**kw),
    "all-units-affine (0.1.0)": lambda **kw: BatchNormFlow(center=True, scale=True, **kw),
    "checkerboard": lambda **kw: BatchNormFlow(mask="checkerboard", **kw),
    "checkerboard-parity1-affine": lambda **kw: BatchNormFlow(
        mask="checkerboard", mask_parity=1, center=True, scale=True, **kw),
    "channel": lambda **kw: BatchNormFlow(mask="channel", **kw),
    "channel-parity1": lambda **kw: BatchNormFlow(mask="channel", mask_parity=1, **kw),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_flow_contract_in_inference_mode(name, tmp_path):
    """Each layer first sees a training batch, so its moving statistics are far from (0, 1)."""
    def make(**kw):
        layer = VARIANTS[name](momentum=0.5, **kw)
        layer(random_images((16, 4, 4, 3), seed=9, scale=3.0) + 2.0, training=True)
        return layer

    run_flow_checks(make, (4, 8, 8, 3), tmp_path, tiny_shape=(2, 4, 4, 3))


def test_training_uses_batch_statistics_and_updates_moving_averages():
    x = random_images((32, 4, 4, 2), scale=3.0) + 5.0
    layer = BatchNormFlow(momentum=0.5)
    y, log_det = layer(x, training=True)
    y = keras.ops.convert_to_numpy(y)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    var = x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(log_det),
                               16 * np.sum(-0.5 * np.log(var + 1e-4)), rtol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.moving_mean),
                               0.5 * x.mean(axis=(0, 1, 2)), rtol=1e-4)


def test_the_original_has_no_learned_scale_or_shift():
    layer = BatchNormFlow()
    layer.build((None, 4, 4, 3))
    assert [w.path.split("/")[-1] for w in layer.weights] == ["moving_mean", "moving_variance"]
    assert not layer.trainable_weights


@pytest.mark.parametrize("parity", [0, 1])
def test_checkerboard_mask_normalises_the_changed_pixels_as_the_realnvp_code(parity):
    """Only the pixels the coupling changed move; their statistics are those of `x * active`
    over (batch, height, width), the given pixels counting as zeros (tensorflow/models
    real_nvp `bn_out`)."""
    x = random_images((16, 4, 4, 2), scale=3.0) + 5.0
    y, log_det = BatchNormFlow(mask="checkerboard", mask_parity=parity)(x, training=True)
    y, log_det = keras.ops.convert_to_numpy(y), keras.ops.convert_to_numpy(log_det)
    changed = (np.add.outer(np.arange(4), np.arange(4)) + parity) % 2 == 1
    np.testing.assert_array_equal(y[:, ~changed], x[:, ~changed])
    masked = x * changed[None, :, :, None]
    mean, var = masked.mean(axis=(0, 1, 2)), masked.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y[:, changed], (x[:, changed] - mean) / np.sqrt(var + 1e-4),
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(log_det, changed.sum() * np.sum(-0.5 * np.log(var + 1e-4)),
                               rtol=1e-5)


@pytest.mark.parametrize("parity, changed", [(0, slice(2, 5)), (1, slice(0, 2))])
def test_channel_mask_normalises_the_changed_channels(parity, changed):
    x = random_images((16, 4, 4, 5), scale=3.0) + 5.0
    y, log_det = BatchNormFlow(mask="channel", mask_parity=parity)(x, training=True)
    y, log_det = keras.ops.convert_to_numpy(y), keras.ops.convert_to_numpy(log_det)
    given = np.ones(5, bool)
    given[changed] = False
    np.testing.assert_array_equal(y[..., given], x[..., given])
    np.testing.assert_allclose(y[..., changed].mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    var = x[..., changed].var(axis=(0, 1, 2))
    np.testing.assert_allclose(log_det, 16 * np.sum(-0.5 * np.log(var + 1e-4)), rtol=1e-5)


def test_a_config_without_the_new_keys_is_the_0_1_0_layer():
    config = BatchNormFlow(momentum=0.8, name="bn").get_config()
    for key in ("center", "scale", "mask", "mask_parity"):
        config.pop(key)
    old = BatchNormFlow.from_config(config)
    assert (old.center, old.scale, old.mask, old.momentum) == (True, True, None, 0.8)
    new = BatchNormFlow.from_config(BatchNormFlow(mask="channel").get_config())
    assert (new.center, new.scale, new.mask) == (False, False, "channel")


def test_bad_options_raise():
    with pytest.raises(ValueError, match="Unknown mask 'stripes'"):
        BatchNormFlow(mask="stripes")
    with pytest.raises(ValueError, match="mask_parity must be 0 or 1"):
        BatchNormFlow(mask_parity=2)
    with pytest.raises(ValueError, match="at least 2 channels"):
        BatchNormFlow(mask="channel")(np.zeros((2, 4, 4, 1), "float32"))

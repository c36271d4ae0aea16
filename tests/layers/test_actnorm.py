import numpy as np
import pytest
import keras

from keras_flow.layers import Actnorm
from tests.flow_checks import LayerHolder
from tests.flow_checks import random_images
from tests.flow_checks import run_flow_checks


def test_flow_contract(tmp_path):
    run_flow_checks(Actnorm, (4, 8, 8, 5), tmp_path)


def test_initialize_normalises_each_channel():
    x = random_images((16, 6, 6, 3), scale=4.0) + np.array([1.0, -3.0, 10.0], "float32")
    layer = Actnorm()
    layer.initialize(x)
    y, log_det = layer(x)
    y = keras.ops.convert_to_numpy(y)
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0.0, atol=1e-3)
    np.testing.assert_allclose(y.std(axis=(0, 1, 2)), 1.0, atol=1e-3)
    assert layer.is_initialized
    expected = 36 * np.sum(np.log(1.0 / x.std(axis=(0, 1, 2))))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(log_det), expected, rtol=1e-4)


def test_initialises_only_when_asked_and_only_once():
    x = random_images((8, 4, 4, 2), scale=3.0)
    layer = Actnorm()
    y_before, _ = layer(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(y_before), x)  # identity, no init
    assert not layer.is_initialized
    layer(x, initialize=True)
    bias = keras.ops.convert_to_numpy(layer.bias).copy()
    layer(x * 10.0 + 5.0, initialize=True)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer.bias), bias)


def test_reloaded_layer_keeps_values_and_never_reinitialises(tmp_path):
    x = random_images((8, 4, 4, 2), scale=3.0)
    holder = LayerHolder(Actnorm())
    holder(x, initialize=True)
    path = str(tmp_path / "actnorm.keras")
    holder.save(path)
    loaded = keras.saving.load_model(path)
    assert loaded.flow.is_initialized
    loaded(x * 7.0 - 2.0, initialize=True)
    for a, b in zip(holder.flow.get_weights(), loaded.flow.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_initialize_under_mixed_precision_assigns_float32():
    layer = Actnorm(dtype="mixed_float16")
    layer.initialize(random_images((8, 4, 4, 3), scale=2.0).astype("float16"))
    assert keras.backend.standardize_dtype(layer.bias.dtype) == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(layer.log_scale)))


def test_rejects_bad_options_and_shapes():
    with pytest.raises(ValueError, match="log_scale_factor"):
        Actnorm(log_scale_factor=0)
    with pytest.raises(ValueError, match=r"received shape \(2, 3\)"):
        Actnorm()(np.zeros((2, 3), "float32"))

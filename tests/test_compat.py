"""keras_flow.compat: one test per shim of a Keras (or tf.distribute) internal, and the version
check. Run these first after upgrading Keras."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_flow import Glow
from keras_flow import compat
from keras_flow.layers import Actnorm
from keras_flow.optimizers import LinearWarmup
from tests.flow_checks import preprocessed_images


def _tiny_glow():
    return Glow(levels=1, depth=1, hidden_width=4, image_shape=(4, 4, 1))


def test_installed_keras_is_in_the_range_and_others_warn():
    assert compat.keras_version_warning() is None, keras.__version__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.check_keras_version() is None
    for version in ("3.99.0", "4.0.0", "3.14.2"):
        with pytest.warns(UserWarning, match=f"written for Keras 3.15.x; Keras {version}"):
            compat.check_keras_version(version)


def test_all_sublayers_finds_nested_layers():
    model = _tiny_glow()
    layers = compat.all_sublayers(model)
    assert model not in layers
    assert any(isinstance(layer, Actnorm) for layer in layers)
    # every weight belongs to one of them (or to the model itself)
    owned = {id(weight) for layer in layers for weight in layer.weights}
    assert all(id(weight) in owned for weight in model.weights
               if weight.path.count("/") > 1)


def test_recording_calls_sees_each_call_and_unwraps():
    model = _tiny_glow()
    actnorms = [layer for layer in compat.all_sublayers(model) if isinstance(layer, Actnorm)]
    records = []
    with compat.recording_calls(actnorms, lambda layer, outputs: records.append(layer)):
        model.encode(preprocessed_images((2, 4, 4, 1)))
    assert records and set(map(id, records)) <= set(map(id, actnorms))
    assert all("call" not in layer.__dict__ for layer in actnorms)
    count = len(records)
    model.encode(preprocessed_images((2, 4, 4, 1)))
    assert len(records) == count


def test_optimizer_slots_are_the_moments_of_a_variable():
    variable = keras.Variable(np.ones((2, 3), "float32"))
    optimizer = keras.optimizers.Adam(0.1, beta_1=0.9)
    optimizer.apply_gradients([(np.full((2, 3), 2.0, "float32"), variable)])
    m, v = compat.optimizer_slots(optimizer, variable, "_momentums", "_velocities")
    np.testing.assert_allclose(m.numpy(), 0.1 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(v.numpy(), 0.001 * 4.0, rtol=1e-5)


def test_learning_rate_schedule_is_the_one_the_optimizer_was_built_with():
    schedule = LinearWarmup(1e-3, 10)
    assert compat.learning_rate_schedule(keras.optimizers.Adam(schedule)) is schedule
    assert compat.learning_rate_schedule(keras.optimizers.Adam(1e-3)) is None


def test_set_untracked_keeps_a_plain_dict():
    optimizer = keras.optimizers.Adam()
    optimizer.tracked = {}
    compat.set_untracked(optimizer, "scratch", {})
    assert type(optimizer.tracked) is not dict  # what the shim avoids
    assert type(optimizer.scratch) is dict


def test_ema_variables_follow_the_optimizers_variables():
    variables = [keras.Variable(np.full((2,), 3.0, "float32")),
                 keras.Variable(np.zeros((1, 2), "float32"))]
    optimizer = keras.optimizers.Adam(1e-3, use_ema=True)
    optimizer.apply_gradients([(np.zeros(v.shape, "float32"), v) for v in variables])
    averages = compat.ema_variables(optimizer)
    assert [tuple(a.shape) for a in averages] == [(2,), (1, 2)]
    np.testing.assert_allclose(averages[0].numpy(), 3.0)  # the first step copies the weights


def test_wrap_step_functions_changes_the_logs_of_fit_and_evaluate():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    compat.wrap_step_functions(model, lambda logs: dict(logs, wrapped=keras.ops.ones(())))
    x, y = np.ones((4, 2), "float32"), np.zeros((4, 1), "float32")
    history = model.fit(x, y, epochs=1, verbose=0)
    assert history.history["wrapped"] == [1.0]
    assert model.evaluate(x, y, verbose=0, return_dict=True)["wrapped"] == 1.0


def test_in_multi_worker_mode_is_false_on_one_worker():
    """The true case runs in tests/test_distribute.py's multi-worker processes."""
    assert compat.in_multi_worker_mode(tf.distribute.get_strategy()) is False


def test_saved_model_root_holds_variables_and_functions(tmp_path):
    root = compat.saved_model_root()
    root.variables = [tf.Variable(2.0)]
    root.double = tf.function(lambda x: 2.0 * x, input_signature=[tf.TensorSpec([], tf.float32)])
    tf.saved_model.save(root, str(tmp_path))
    assert float(tf.saved_model.load(str(tmp_path)).double(3.0)) == 6.0

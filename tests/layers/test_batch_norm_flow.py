import numpy as np
import keras

from keras_flow.layers import BatchNormFlow
from tests.flow_checks import random_images
from tests.flow_checks import run_flow_checks


def test_flow_contract_in_inference_mode(tmp_path):
    run_flow_checks(BatchNormFlow, (4, 8, 8, 3), tmp_path)


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

import numpy as np
import pytest
import keras

from keras_flow.layers import InvConv1x1
from keras_flow.layers.inv_conv_1x1 import lu_decompose
from tests.flow_checks import perturb_weights
from tests.flow_checks import random_images
from tests.flow_checks import run_flow_checks


@pytest.mark.parametrize("lu_decomposed", [True, False])
def test_flow_contract(lu_decomposed, tmp_path):
    run_flow_checks(lambda **kw: InvConv1x1(lu_decomposed=lu_decomposed, seed=4, **kw),
                    (4, 8, 8, 6), tmp_path)


def test_lu_decompose_reconstructs():
    a = np.random.default_rng(0).standard_normal((7, 7))
    p, lower, upper = lu_decompose(a)
    np.testing.assert_allclose(p @ lower @ upper, a, atol=1e-12)
    np.testing.assert_allclose(np.diag(lower), 1.0)
    assert np.allclose(np.triu(upper), upper) and np.allclose(np.tril(lower), lower)


@pytest.mark.parametrize("lu_decomposed", [True, False])
def test_starts_as_a_rotation_and_log_det_is_hw_log_abs_det(lu_decomposed):
    x = random_images((3, 5, 4, 6))
    layer = InvConv1x1(lu_decomposed=lu_decomposed, seed=1)
    _, log_det = layer(x)
    w = keras.ops.convert_to_numpy(layer.weight_matrix())
    np.testing.assert_allclose(w @ w.T, np.eye(6), atol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(log_det), 0.0, atol=1e-4)
    perturb_weights(layer, scale=0.3)
    w = keras.ops.convert_to_numpy(layer.weight_matrix()).astype("float64")
    assert not np.allclose(w @ w.T, np.eye(6), atol=1e-2)
    _, log_det = layer(x)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(log_det),
                               20 * np.linalg.slogdet(w)[1], rtol=1e-4)


def test_seed_fixes_the_initial_matrix_and_permutation_is_not_trained():
    a, b = InvConv1x1(seed=2), InvConv1x1(seed=2)
    a.build((None, 4, 4, 5)), b.build((None, 4, 4, 5))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a.weight_matrix()),
                                  keras.ops.convert_to_numpy(b.weight_matrix()))
    trainable = {w.path.split("/")[-1] for w in a.trainable_weights}
    assert trainable == {"lower", "upper", "log_s"}
    assert {w.path.split("/")[-1] for w in a.non_trainable_weights} == {"permutation", "sign"}


def test_plain_variant_is_not_jit_compatible():
    assert InvConv1x1().supports_jit
    assert not InvConv1x1(lu_decomposed=False).supports_jit

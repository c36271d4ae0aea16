import numpy as np
import pytest
import keras

from keras_flow.layers import Split2D
from keras_flow.layers import TopPrior
from keras_flow.layers import standard_normal_log_prob
from tests.flow_checks import perturb_weights
from tests.flow_checks import random_images
from tests.flow_checks import run_flow_checks


def test_split_contract(tmp_path):
    run_flow_checks(Split2D, (4, 8, 8, 6), tmp_path, perturb_scale=0.1)


def test_unconditional_split_contract(tmp_path):
    run_flow_checks(lambda **kw: Split2D(conditional=False, **kw), (4, 8, 8, 6), tmp_path,
                    perturb_scale=0.1)


@pytest.mark.parametrize("conditional", [True, False])
def test_only_the_conditional_split_prior_depends_on_the_kept_half(conditional):
    x = random_images((2, 4, 4, 4))
    other = x.copy()
    other[..., :2] = random_images((2, 4, 4, 2), seed=9)  # new kept half, same factored half
    layer = Split2D(conditional=conditional)
    layer(x)
    perturb_weights(layer, scale=0.2)
    (_, eps), log_det = layer(x)
    (_, other_eps), other_log_det = layer(other)
    eps_change = np.max(np.abs(keras.ops.convert_to_numpy(eps - other_eps)))
    log_det_change = np.max(np.abs(keras.ops.convert_to_numpy(log_det - other_log_det)))
    if conditional:
        assert eps_change > 1e-3 and log_det_change > 1e-3
    else:
        assert eps_change == 0.0 and log_det_change == 0.0
        assert np.ptp(keras.ops.convert_to_numpy(log_det)) == 0.0  # the same for every image


def test_unlearned_split_contract(tmp_path):
    run_flow_checks(lambda **kw: Split2D(learned=False, **kw), (4, 8, 8, 5), tmp_path)


def test_top_prior_contract(tmp_path):
    run_flow_checks(TopPrior, (4, 8, 8, 6), tmp_path, perturb_scale=0.1)


def test_conditional_top_prior_depends_on_labels():
    x = random_images((4, 4, 4, 2))
    labels = np.array([0, 1, 2, 1])
    layer = TopPrior(num_classes=3)
    layer(x, labels=labels)
    perturb_weights(layer, scale=0.2)
    eps, log_det = layer(x, labels=labels)
    back, _ = layer(eps, inverse=True, labels=labels)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(back), x, atol=1e-5)
    ld = keras.ops.convert_to_numpy(log_det)
    assert ld[1] == pytest.approx(ld[3]) and ld[0] != pytest.approx(ld[1])
    with pytest.raises(ValueError, match="labels"):
        layer(x)
    with pytest.raises(ValueError, match="unconditional"):
        TopPrior()(x, labels=labels)


def test_split_log_det_plus_standard_normal_is_the_conditional_gaussian():
    x = random_images((3, 4, 4, 4))
    layer = Split2D()
    layer(x)
    perturb_weights(layer, scale=0.2)
    (kept, eps), log_det = layer(x)
    h = keras.ops.convert_to_numpy(layer.prior(kept))
    mean, log_std = h[..., 0::2], h[..., 1::2]
    z2 = x[..., 2:]
    expected = np.sum(-0.5 * (np.log(2 * np.pi) + 2 * log_std + (z2 - mean) ** 2
                              / np.exp(2 * log_std)), axis=(1, 2, 3))
    got = keras.ops.convert_to_numpy(standard_normal_log_prob(eps) + log_det)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_split_samples_at_a_temperature_when_eps_is_missing():
    layer = Split2D()
    layer.build((None, 4, 4, 4))  # the forward input's shape
    kept = random_images((256, 4, 4, 2))
    z0, _ = layer(kept, inverse=True, temperature=0.0)
    assert z0.shape == (256, 4, 4, 4)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(z0)[..., 2:], 0.0)
    z, _ = layer(kept, inverse=True, temperature=0.5, seed=3)
    assert keras.ops.convert_to_numpy(z)[..., 2:].std() == pytest.approx(0.5, rel=0.05)


def test_standard_normal_log_prob_is_float32_even_for_float16():
    eps = np.full((2, 64, 64, 3), 3.0, "float16")
    lp = keras.ops.convert_to_numpy(standard_normal_log_prob(eps))
    assert lp.dtype == np.float32 and np.all(np.isfinite(lp))
    np.testing.assert_allclose(lp, 64 * 64 * 3 * -0.5 * (np.log(2 * np.pi) + 9.0), rtol=1e-5)


def test_split_refuses_latents_of_other_channels_and_an_inverse_first_call():
    x = random_images((2, 4, 4, 4))
    split = Split2D()
    (z1, eps), _ = split(x)
    with pytest.raises(ValueError, match="so this input needs 2; received shape"):
        split(x, inverse=True)  # the forward input given as z1
    with pytest.raises(ValueError, match="so this input needs 2"):
        split((z1, np.concatenate([eps, eps], axis=-1)), inverse=True)
    with pytest.raises(ValueError, match="builds from the forward input"):
        Split2D()((z1, eps), inverse=True)
    with pytest.raises(ValueError, match="so this input needs 1"):
        Split2D()(z1, inverse=True)  # built as if z1 were the 2-channel forward input

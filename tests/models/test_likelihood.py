"""The likelihood of both models: it is the exact density of the input, it integrates to one,
it recovers a known entropy, and bits/dim and the `add_loss` objective are what they claim."""

import math

import keras
import numpy as np
import pytest

from keras_flow import Glow
from keras_flow import RealNVP
from tests.flow_checks import preprocessed_images
from tests.models.model_checks import check_log_prob_against_jacobian
from tests.models.model_checks import perturbed_model
from tests.models.model_checks import to_numpy

TINY_MODELS = {
    "glow-affine-lu": lambda: Glow(levels=2, depth=2, hidden_width=8, image_shape=(4, 4, 2)),
    "glow-additive-plain-w": lambda: Glow(levels=2, depth=2, hidden_width=8,
                                          coupling="additive", lu_decomposed=False,
                                          image_shape=(4, 4, 2)),
    "real-nvp": lambda: RealNVP(levels=2, hidden_width=4, residual_blocks=1,
                                image_shape=(4, 4, 2)),
}


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_log_prob_is_the_change_of_variables_density(name):
    """log_prob == sum log N(eps) + log|det d eps/d x| of the autodiff Jacobian (RealNVP: batch
    norm in inference mode, as `encode` runs it), and decode's Jacobian inverts encode's."""
    model = perturbed_model(TINY_MODELS[name], (16, 4, 4, 2), scale=0.05)
    check_log_prob_against_jacobian(model, preprocessed_images((2, 4, 4, 2), seed=3))


def gaussian_log_density(x, mean, cov):
    """`log N(x; mean, cov)` per row of `x` `(n, d)`, in float64."""
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, (x - mean).T)
    return -0.5 * np.sum(z ** 2, axis=0) - 0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]


def test_density_integrates_to_one():
    """Importance sampling of the integral of p(x) over R^4 (2x2x1 images) with a wide Gaussian
    proposal q: mean of p/q is 1 within 3 standard errors. The perturbed affine couplings make
    p non-Gaussian (its log-det varies with x)."""
    model = perturbed_model(
        lambda: Glow(levels=1, depth=3, hidden_width=8, image_shape=(2, 2, 1)), (64, 2, 2, 1),
        scale=0.05)
    samples = to_numpy(model.sample(4000, seed=1)).reshape(-1, 4).astype("float64")
    # Random perturbations can make the inverse explosive (sigmoid scales near 0 compound over
    # steps: samples of 1e13 for some initial weights); the Gaussian proposal needs a tame p.
    assert np.max(np.abs(samples)) < 100, "perturbed model has exploding samples; change seed"
    mean, cov = samples.mean(axis=0), 4.0 * np.cov(samples.T)  # twice the model's spread
    draws = 40000
    x = np.random.default_rng(0).multivariate_normal(mean, cov, size=draws)
    images = x.reshape(draws, 2, 2, 1).astype("float32")
    log_p = to_numpy(model.log_prob(images)).astype("float64")
    weights = np.exp(log_p - gaussian_log_density(x, mean, cov))
    estimate, standard_error = weights.mean(), weights.std() / math.sqrt(draws)
    assert standard_error < 0.05
    assert abs(estimate - 1.0) < 3 * standard_error, (estimate, standard_error)
    _, log_det = model.encode(images[:256])
    assert np.std(to_numpy(log_det)) > 0.01  # not a linear (Gaussian) flow


def correlated_gaussian_images(count, seed):
    """2x2x1 images whose 4 pixels are N(mean, 0.04 * 0.9^|i-i'|+|j-j'|)."""
    rows, cols = np.divmod(np.arange(4), 2)
    distance = np.abs(rows[:, None] - rows[None]) + np.abs(cols[:, None] - cols[None])
    cov = 0.04 * 0.9 ** distance
    mean = np.array([0.1, -0.05, 0.0, 0.05])
    x = np.random.default_rng(seed).multivariate_normal(mean, cov, size=count)
    return x.reshape(count, 2, 2, 1).astype("float32"), mean, cov


def test_trained_nll_approaches_the_true_entropy():
    """A Glow fitted to a correlated Gaussian over pixels: held-out NLL (nats/dim) ends within
    0.05 of the true entropy and is never below the true density's NLL beyond noise.

    actnorm + 1x1 convolutions + the learned top prior can represent any Gaussian exactly.
    """
    dims = 4
    train, mean, cov = correlated_gaussian_images(4096, seed=1)
    test = correlated_gaussian_images(20000, seed=2)[0]
    entropy = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1] / dims
    true_nll = -gaussian_log_density(test.reshape(-1, dims).astype("float64"), mean, cov) / dims
    assert abs(true_nll.mean() - entropy) < 0.01

    model = Glow(levels=1, depth=2, hidden_width=8, coupling="additive", image_shape=(2, 2, 1))
    outside = "span .* a flow expects dequantised images in \\[-0.5, 0.5\\]"
    with pytest.warns(UserWarning, match=outside):  # a Gaussian, not preprocessed images
        model.initialize(train[:512])
    model.compile(optimizer=keras.optimizers.Adam(5e-3))
    gaps = []
    for round_ in range(4):
        if round_:
            with pytest.warns(UserWarning, match=outside):
                model.fit(train, epochs=4, batch_size=256, shuffle=False, verbose=0)  # 64 steps
        gap = -to_numpy(model.log_prob(test)).astype("float64") / dims - true_nll
        standard_error = gap.std() / math.sqrt(len(gap))
        assert gap.mean() > -3 * standard_error - 1e-3, (gap.mean(), standard_error)
        gaps.append(gap.mean())
    assert gaps[0] > 0.3, gaps  # the initialised model ignores the correlations
    assert gaps[-1] < 0.05, gaps
    assert abs(gaps[-1] + true_nll.mean() - entropy) < 0.05  # held-out NLL vs the entropy


def test_bits_per_dim_formula():
    """bits/dim = (-log p(x) + D log num_bins) / (D ln 2); the uniform density on
    [-0.5, 0.5)^D (log p = 0) is exactly log2(num_bins) bits/dim."""
    model = Glow(levels=2, depth=1, hidden_width=4, image_shape=(4, 4, 2))
    x = preprocessed_images((3, 4, 4, 2), seed=1)
    model.initialize(x)
    dims = 4 * 4 * 2
    log_prob = to_numpy(model.log_prob(x)).astype("float64")
    np.testing.assert_allclose(to_numpy(model.bits_per_dim(x)),
                               (-log_prob + dims * math.log(256)) / (dims * math.log(2)),
                               rtol=1e-6)
    zero = np.zeros(2, "float32")
    np.testing.assert_allclose(to_numpy(model.bits_from_log_prob(zero)), 8.0, rtol=1e-7)
    five_bit = Glow(levels=2, depth=1, hidden_width=4, num_bins=32, image_shape=(4, 4, 2))
    np.testing.assert_allclose(to_numpy(five_bit.bits_from_log_prob(zero)), 5.0, rtol=1e-7)


def test_untrained_glow_on_uniform_8_bit_data():
    """After actnorm initialisation an additive Glow is a Gaussian with the data's variance
    (1/12 per dimension): its cross-entropy on uniform data is 8 + log2(2 pi e / 12) / 2."""
    x = preprocessed_images((256, 8, 8, 1), seed=4)
    model = Glow(levels=2, depth=2, hidden_width=8, coupling="additive", image_shape=(8, 8, 1))
    model.initialize(x)
    expected = 8.0 + 0.5 * math.log2(2 * math.pi * math.e / 12)
    assert abs(float(np.mean(to_numpy(model.bits_per_dim(x)))) - expected) < 0.02


@pytest.mark.parametrize("make_model", [
    lambda: Glow(levels=2, depth=1, hidden_width=4, image_shape=(4, 4, 1)),
    # (l2=0: model.losses is then the objective alone, without RealNVP's L2 terms)
    lambda: RealNVP(levels=2, hidden_width=2, residual_blocks=1, l2=0.0,
                    image_shape=(4, 4, 1))],
    ids=["glow", "real-nvp"])
def test_objective_is_the_batch_mean_not_the_sum(make_model):
    """The same 8 examples as a batch of 8 and (repeated) of 32 give the same loss."""
    model = make_model()
    x = preprocessed_images((8, 4, 4, 1), seed=5)
    model.initialize(x)
    losses = {}
    for batch in (x, np.concatenate([x] * 4)):
        bits = model(batch)
        assert len(model.losses) == 1
        losses[len(batch)] = float(to_numpy(model.losses[0]))
        assert losses[len(batch)] == pytest.approx(float(np.mean(to_numpy(bits))), rel=1e-6)
    assert losses[8] == pytest.approx(losses[32], rel=1e-6)


@pytest.mark.parametrize("make_model", [
    lambda: Glow(levels=2, depth=1, hidden_width=4, num_classes=2, classifier_weight=0.1,
                 image_shape=(4, 4, 1)),
    # (l2=0: model.losses is then the objective alone, without RealNVP's L2 terms)
    lambda: RealNVP(levels=2, hidden_width=2, residual_blocks=1, l2=0.0,
                    image_shape=(4, 4, 1))],
    ids=["conditional-glow", "real-nvp"])
def test_objective_is_a_float32_scalar_under_mixed_bfloat16(make_model):
    keras.config.set_dtype_policy("mixed_bfloat16")
    model = make_model()
    assert model.compute_dtype == "bfloat16"
    x = preprocessed_images((4, 4, 4, 1), seed=6)
    labels = np.array([0, 1, 1, 0]) if model.num_classes else None
    model.initialize(x, labels)
    bits = model({"image": x, "label": labels} if model.num_classes else x)
    assert keras.backend.standardize_dtype(bits.dtype) == "float32"
    (loss,) = model.losses
    assert keras.backend.standardize_dtype(loss.dtype) == "float32" and tuple(loss.shape) == ()
    assert np.isfinite(float(to_numpy(loss)))

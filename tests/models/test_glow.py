import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_flow import Glow
from keras_flow.layers import AdditiveCoupling
from keras_flow.layers import AffineCoupling
from keras_flow.layers import InvConv1x1
from keras_flow.layers import Reverse
from keras_flow.layers import Shuffle
from keras_flow.layers.flow_step import COUPLINGS
from keras_flow.layers.flow_step import PERMUTATIONS
from keras_flow.models import GLOW_PRESETS
from keras_flow.models.presets import preset_config
from tests.flow_checks import perturb_weights
from tests.flow_checks import preprocessed_images
from tests.models.model_checks import check_gradients
from tests.models.model_checks import check_model_round_trip
from tests.models.model_checks import check_realistic_round_trip
from tests.models.model_checks import check_sampling
from tests.models.model_checks import check_trained_model_persists
from tests.models.model_checks import fit_history
from tests.models.model_checks import perturbed_model
from tests.models.model_checks import to_numpy

SMALL = dict(levels=2, depth=2, hidden_width=8, image_shape=(4, 4, 1))
# The top prior's conv only sees zeros plus the border channel (openai/glow `learntop`), so its
# kernel never gets a gradient; every other weight must.
DEAD_WEIGHTS = ("top_prior/top/kernel",)


def small_glow(**overrides):
    return Glow(**{**SMALL, **overrides})


def small_perturbed_glow(scale=0.05, **overrides):
    return perturbed_model(lambda: small_glow(**overrides), (16, 4, 4, 1), scale=scale)


def test_round_trip_at_realistic_depth():
    """L=3, K=8 on 32x32x3 with weights moved off their initial values: decode(encode(x)) == x."""
    check_realistic_round_trip(
        lambda: Glow(levels=3, depth=8, hidden_width=16, image_shape=(32, 32, 3)), scale=0.02,
        latent_shapes=[(16, 16, 6), (8, 8, 12), (4, 4, 48)])


@pytest.mark.parametrize("permutation, lu_decomposed", [
    ("reverse", True), ("shuffle", True), ("conv1x1", False)])
def test_round_trip_of_every_permutation(permutation, lu_decomposed):
    model = small_perturbed_glow(permutation=permutation, lu_decomposed=lu_decomposed,
                                 coupling="affine")
    check_model_round_trip(model, preprocessed_images((2, 4, 4, 1), seed=5), atol=1e-5)


def test_permutation_and_coupling_switches_change_the_model():
    x = preprocessed_images((4, 4, 4, 1), seed=2)
    layer_types = {"reverse": Reverse, "shuffle": Shuffle, "conv1x1": InvConv1x1,
                   "additive": AdditiveCoupling, "affine": AffineCoupling}
    counts, log_dets, latents = {}, {}, {}
    for permutation in PERMUTATIONS:
        for coupling in COUPLINGS:
            model = small_perturbed_glow(permutation=permutation, coupling=coupling)
            step = model.steps[0][0]
            assert isinstance(step.flows[1], layer_types[permutation])
            assert isinstance(step.flows[2], layer_types[coupling])
            eps_list, log_det = model.encode(x)
            key = (permutation, coupling)
            counts[key] = model.count_params()
            log_dets[key] = to_numpy(log_det)
            latents[key] = to_numpy(eps_list[-1])
    for coupling in COUPLINGS:
        assert counts["conv1x1", coupling] > counts["reverse", coupling]
        assert counts["reverse", coupling] == counts["shuffle", coupling]  # both parameter-free
        assert np.max(np.abs(latents["reverse", coupling] - latents["shuffle", coupling])) > 1e-3
    for permutation in PERMUTATIONS:
        assert counts[permutation, "affine"] > counts[permutation, "additive"]
        assert np.ptp(log_dets[permutation, "affine"]) > 1e-3  # log|scale(x)| varies with x
    keys = sorted(log_dets)
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            assert np.max(np.abs(log_dets[a] - log_dets[b])) > 1e-3, (a, b)


def test_additive_single_level_glow_has_a_constant_log_det():
    """With one level (no split prior) an additive Glow's log-det is the same for every input."""
    model = perturbed_model(lambda: small_glow(levels=1, coupling="additive"), (16, 4, 4, 1),
                            scale=0.05)
    _, log_det = model.encode(preprocessed_images((4, 4, 4, 1), seed=2))
    np.testing.assert_allclose(to_numpy(log_det), to_numpy(log_det)[0], rtol=1e-6)


@pytest.mark.parametrize("permutation", PERMUTATIONS)
def test_every_permutation_trains(permutation):
    model = small_perturbed_glow(scale=0.02, permutation=permutation)
    x = preprocessed_images((32, 4, 4, 1), seed=3)
    check_gradients(model, x, allow_zero=DEAD_WEIGHTS)
    losses = fit_history(model, x, epochs=3, optimizer=keras.optimizers.SGD(1e-2),
                         run_eagerly=True)["loss"]
    assert np.all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses


def test_jit_compiled_fit_of_the_lu_variant():
    """Two XLA-compiled steps on CPU (a tiny model: compiling is what takes the time)."""
    model = Glow(levels=1, depth=1, hidden_width=4, lu_decomposed=True, image_shape=(2, 2, 1))
    assert model.supports_jit
    assert not small_glow(lu_decomposed=False).supports_jit  # tf.linalg.slogdet has no XLA kernel
    x = preprocessed_images((8, 2, 2, 1), seed=4)
    model.initialize(x)
    history = fit_history(model, x, epochs=1, batch_size=4, jit_compile=True)
    assert np.all(np.isfinite(history["loss"]))


def test_save_load_and_config_of_a_trained_glow(tmp_path):
    check_trained_model_persists(small_glow(permutation="shuffle", learn_top=True, seed=3),
                                 preprocessed_images((16, 4, 4, 1), seed=6), tmp_path, epochs=2)


def test_unbuilt_config_round_trip():
    model = Glow(levels=2, depth=3, hidden_width=4, permutation="reverse", coupling="additive",
                 learn_top=False, num_bins=32, edge_padding=False, seed=7)
    clone = Glow.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    assert not clone.built and clone.image_shape is None


def test_zero_log_scale_factor_reaches_every_zero_conv_of_couplings_and_priors():
    from keras_flow.layers.convolutions import ZeroConv2D
    model = small_glow(zero_log_scale_factor=1.0)
    factors = {layer.path: layer.log_scale_factor for layer in model._flatten_layers()
               if isinstance(layer, ZeroConv2D)}
    assert len(factors) == 2 * 2 + 1 + 1  # a coupling per step, a split, the top prior
    assert set(factors.values()) == {1.0}
    clone = Glow.from_config(model.get_config())
    assert clone.zero_log_scale_factor == 1.0
    assert small_glow().zero_log_scale_factor == 3.0  # openai/glow's
    with pytest.raises(ValueError, match="zero_log_scale_factor > 0"):
        small_glow(zero_log_scale_factor=0)

@pytest.mark.parametrize("split_prior", ["unconditional", "standard"])
def test_split_prior_options_are_exact_flows_that_train(split_prior):
    model = small_perturbed_glow(split_prior=split_prior)
    split = model.splits[0]
    assert (split.learned, split.conditional) == {
        "unconditional": (True, False), "standard": (False, False)}[split_prior]
    x = preprocessed_images((4, 4, 4, 1), seed=3)
    check_model_round_trip(model, x[:2], atol=1e-5)
    check_gradients(model, x, allow_zero=DEAD_WEIGHTS + ("split_0/prior/kernel",))
    clone = Glow.from_config(model.get_config())
    assert clone.split_prior == split_prior
    assert small_glow().split_prior == "conditional"  # openai/glow's
    with pytest.raises(ValueError, match="Unknown split_prior 'channel'"):
        small_glow(split_prior="channel")


def test_class_conditional_glow_trains_and_samples_with_labels():
    x = preprocessed_images((12, 4, 4, 1), seed=7)
    labels = np.arange(12) % 3
    model = small_glow(num_classes=3, classifier_weight=0.01)
    model.initialize(x, labels)
    history = fit_history(model, {"image": x, "label": labels}, epochs=3,
                          optimizer=keras.optimizers.SGD(1e-2), run_eagerly=True)
    assert history["loss"][-1] < history["loss"][0]
    # The objective adds 0.01 x the classifier's bits on top of the mean bits/dim.
    assert all(loss > bits for loss, bits in zip(history["loss"], history["bits_per_dim"]))
    shifted = (labels + 1) % 3
    assert np.max(np.abs(to_numpy(model.log_prob(x, labels) - model.log_prob(x, shifted)))) > 0
    check_sampling(model, labels=np.array([0, 2]))
    with pytest.raises(ValueError, match="class-conditional"):
        model.sample(2)


def test_sampling():
    check_sampling(small_perturbed_glow(scale=0.02))


def test_invalid_arguments_raise_with_the_fix():
    model = small_glow()
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        model.sample(2, temperature=-0.5)
    eps_list, _ = model.encode(preprocessed_images((2, 4, 4, 1)))
    with pytest.raises(ValueError, match=r"decode needs 2 latents .*\(2, 2, 2\), \(1, 1, 8\)"):
        model.decode(eps_list[-1:])
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*levels = 8.*Pad or resize"):
        Glow(levels=3, depth=1, hidden_width=4, image_shape=(12, 12, 3))
    with pytest.raises(ValueError, match="permutation"):
        Glow(permutation="1x1")
    with pytest.raises(ValueError, match="coupling"):
        Glow(coupling="spline")
    with pytest.raises(ValueError, match="num_classes > 0"):
        Glow(classifier_weight=0.01)


@pytest.mark.parametrize("name", sorted(GLOW_PRESETS))
def test_every_preset_constructs(name):
    preset = GLOW_PRESETS[name]
    config = preset_config(GLOW_PRESETS, name, {})
    assert config["num_bins"] == 2 ** preset["n_bits"]
    assert "n_bits" not in config and "batch_size" not in config
    model = Glow.from_preset(name, image_shape=None)  # unbuilt: cheap even for celeba_hq_256
    assert not model.built
    built_config = model.get_config()
    for key in ("levels", "depth", "hidden_width", "coupling", "num_bins"):
        assert built_config[key] == config[key], key


def test_small_preset_builds():
    model = Glow.from_preset("digits")
    assert model.image_shape == (8, 8, 1) and model.count_params() > 0
    assert model.latent_shapes == [(4, 4, 2), (2, 2, 8)]
    assert Glow.from_preset("digits", depth=2, image_shape=None).depth == 2
    with pytest.raises(ValueError, match="Unknown preset"):
        Glow.from_preset("cifar100")


def test_concrete_bits_per_dim_takes_any_batch_and_follows_the_weights():
    """docs/models.md, "Compiled inference": a concrete function of `bits_per_dim` traced for any
    batch size gives the eager values at every size (batch shards included) and reads the
    weights at each call."""
    model = Glow(levels=2, depth=2, hidden_width=8, image_shape=(4, 4, 2), batch_shards=2)
    x = preprocessed_images((5, 4, 4, 2), seed=3)
    model.initialize(x)
    bits_per_dim = tf.function(lambda images: model.bits_per_dim(images)).get_concrete_function(
        tf.TensorSpec((None, 4, 4, 2), tf.float32))
    for rows in (1, 5):
        np.testing.assert_allclose(to_numpy(bits_per_dim(x[:rows])),
                                   to_numpy(model.bits_per_dim(x[:rows])), rtol=1e-5)
    before = to_numpy(bits_per_dim(x))
    perturb_weights(model, seed=1, scale=0.05)
    after = to_numpy(bits_per_dim(x))
    assert np.max(np.abs(after - before)) > 1e-3
    np.testing.assert_allclose(after, to_numpy(model.bits_per_dim(x)), rtol=1e-5)


def test_a_file_saved_by_0_1_0_loads_with_its_outputs():
    """`glow_0.1.0.keras` was written by keras_flow 0.1.0 (commit 35690c7: a perturbed
    class-conditional 8x8x1 Glow with a classifier, saved before the core redesign moved class
    conditioning into Glow and the kernels behind keras_flow.kernels), with its outputs in the
    `.npz`: it loads and gives the same bits/dim, latents and log-dets."""
    from pathlib import Path

    data = Path(__file__).parent / "data"
    model = keras.saving.load_model(data / "glow_0.1.0.keras")
    expected = np.load(data / "glow_0.1.0.npz")
    x, labels = expected["x"], expected["labels"]
    assert (model.num_classes, model.classifier_weight) == (3, 0.5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.bits_per_dim(x, labels)),
                               expected["bits"], rtol=1e-6)
    eps_list, log_det = model.encode(x, labels)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(log_det), expected["log_det"],
                               rtol=1e-6, atol=1e-4)
    for index, eps in enumerate(eps_list):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(eps), expected[f"eps{index}"],
                                   rtol=1e-5, atol=1e-5)

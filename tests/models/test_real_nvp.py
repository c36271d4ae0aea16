import math
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_flow import RealNVP
from keras_flow import data
from keras_flow import training
from keras_flow.optimizers import make_optimizer
from keras_flow.models.real_nvp import LEGACY_OPTIONS
from keras_flow.layers import AffineCoupling
from keras_flow.layers import BatchNormFlow
from keras_flow.models import REALNVP_PRESETS
from keras_flow.models.presets import preset_config
from tests.flow_checks import preprocessed_images
from tests.models.model_checks import check_gradients
from tests.models.model_checks import check_realistic_round_trip
from tests.models.model_checks import check_sampling
from tests.models.model_checks import check_trained_model_persists
from tests.models.model_checks import fit_history
from tests.models.model_checks import perturbed_model
from tests.models.model_checks import to_numpy

SMALL = dict(levels=2, hidden_width=4, residual_blocks=1, image_shape=(4, 4, 2))


def small_perturbed_real_nvp(scale=0.1, **overrides):
    return perturbed_model(lambda: RealNVP(**{**SMALL, **overrides}), (16, 4, 4, 2), scale=scale)


def batch_norm_statistics(model):
    return [to_numpy(w) for w in model.non_trainable_weights if "moving" in w.path]


def test_round_trip_at_realistic_depth():
    """3 scales on 32x32x3 with weights moved off their initial values: decode(encode(x)) == x."""
    check_realistic_round_trip(
        lambda: RealNVP(levels=3, hidden_width=8, residual_blocks=1, image_shape=(32, 32, 3)),
        scale=0.05, latent_shapes=[(16, 16, 6), (8, 8, 12), (8, 8, 12)])


def test_architecture_of_the_paper():
    """Per scale 3 checkerboard couplings, squeeze, 3 channel couplings, each followed by batch
    norm; 4 checkerboard couplings at the last scale; widths double per scale."""
    model = RealNVP(levels=3, hidden_width=4, residual_blocks=2, image_shape=(8, 8, 1))
    names = [[flow.name for flow in scale["flows"]] for scale in model.scales]
    assert names[0] == ["scale_0_checker_0", "scale_0_checker_0_bn", "scale_0_checker_1",
                        "scale_0_checker_1_bn", "scale_0_checker_2", "scale_0_checker_2_bn",
                        "scale_0_squeeze", "scale_0_channel_0", "scale_0_channel_0_bn",
                        "scale_0_channel_1", "scale_0_channel_1_bn", "scale_0_channel_2",
                        "scale_0_channel_2_bn"]
    assert len(names[2]) == 8 and model.scales[2]["split"] is None
    flows = [f for s in model.scales for f in s["flows"]]
    couplings = [f for f in flows if isinstance(f, AffineCoupling)]
    assert [c.mask_parity for c in couplings[:6]] == [0, 1, 0, 0, 1, 0]
    assert [c.hidden_width for c in couplings] == [4] * 3 + [8] * 3 + [8] * 3 + [16] * 3 + [16] * 4
    assert all(c.residual_blocks == 2 for c in couplings)
    # each batch norm normalises what its coupling transformed, without learned scale or shift
    norms = [f for f in flows if isinstance(f, BatchNormFlow)]
    assert [(n.mask, n.mask_parity) for n in norms] == [(c.mask, c.mask_parity) for c in couplings]
    assert not any(n.center or n.scale for n in norms)
    assert all(c.resnet_input_norm and c.resnet_skip for c in couplings)


def test_encode_uses_batch_norm_in_inference_mode():
    model = small_perturbed_real_nvp()
    x = preprocessed_images((4, 4, 4, 2), seed=2)
    statistics = batch_norm_statistics(model)
    first = to_numpy(model.log_prob(x))
    np.testing.assert_array_equal(to_numpy(model.log_prob(x[:2])), first[:2])  # no batch stats
    for before, after in zip(statistics, batch_norm_statistics(model)):
        np.testing.assert_array_equal(before, after)
    assert any(isinstance(f, BatchNormFlow) for s in model.scales for f in s["flows"])


def test_trains_with_the_add_loss_objective():
    model = small_perturbed_real_nvp(scale=0.05)
    x = preprocessed_images((32, 4, 4, 2), seed=3)
    check_gradients(model, x)
    statistics = batch_norm_statistics(model)
    losses = fit_history(model, x, epochs=2, optimizer=keras.optimizers.SGD(1e-2),
                         run_eagerly=True)["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    # fit runs batch norm in training mode: the moving statistics move.
    assert any(np.max(np.abs(a - b)) > 0 for a, b in zip(statistics, batch_norm_statistics(model)))


def test_save_load_and_config_of_a_trained_real_nvp(tmp_path):
    check_trained_model_persists(RealNVP(**SMALL),
                                 preprocessed_images((16, 4, 4, 2), seed=6), tmp_path, epochs=1)


def test_unbuilt_config_round_trip():
    model = RealNVP(levels=3, hidden_width=6, residual_blocks=2, num_bins=32, seed=4)
    config = model.get_config()
    assert "num_classes" not in config and "classifier_weight" not in config
    clone = RealNVP.from_config(config)
    assert clone.get_config() == config and not clone.built


def test_sampling():
    check_sampling(small_perturbed_real_nvp(scale=0.05))


def test_invalid_arguments_raise_with_the_fix():
    model = RealNVP(**SMALL)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        model.sample(2, temperature=-1.0)
    eps_list, _ = model.encode(preprocessed_images((2, 4, 4, 2)))
    with pytest.raises(ValueError, match=r"decode needs 2 latents .*\(2, 2, 4\), \(2, 2, 4\)"):
        model.decode(eps_list[:1])
    with pytest.raises(ValueError, match="not divisible by 2\\*\\*levels = 4.*Pad or resize"):
        RealNVP(levels=3, hidden_width=2, residual_blocks=1, image_shape=(6, 6, 3))
    with pytest.raises(ValueError, match="integers >= 1; got levels=0"):
        RealNVP(levels=0)


@pytest.mark.parametrize("name", sorted(REALNVP_PRESETS))
def test_every_preset_constructs(name):
    config = preset_config(REALNVP_PRESETS, name, {})
    assert config["num_bins"] == 2 ** REALNVP_PRESETS[name]["n_bits"]
    model = RealNVP.from_preset(name, image_shape=None)
    assert not model.built
    got = model.get_config()
    for key in ("levels", "hidden_width", "residual_blocks", "num_bins"):
        assert got[key] == config[key], key


def test_preset_builds_with_overrides():
    model = RealNVP.from_preset("cifar10", image_shape=(8, 8, 3), hidden_width=2,
                                residual_blocks=1)
    assert model.levels == 2 and model.latent_shapes == [(4, 4, 6), (4, 4, 6)]
    with pytest.raises(ValueError, match="Unknown preset"):
        RealNVP.from_preset("mnist")


def test_labels_are_refused_with_a_pointer_to_glow():
    with pytest.raises(ValueError, match="Glow"):
        RealNVP(levels=1, hidden_width=4, residual_blocks=1, num_classes=3)


DATA = Path(__file__).parent / "data"


def test_a_file_saved_by_0_1_0_loads_with_its_outputs():
    """`real_nvp_0.1.0.keras` was written by keras_flow 0.1.0 (commit 35690c7; a perturbed
    8x8x1 model whose batch-norm statistics moved), with its outputs in the `.npz`: its config
    has none of the new options, so it rebuilds 0.1.0's architecture and gives the same
    bits/dim, latents and log-dets."""
    model = keras.saving.load_model(DATA / "real_nvp_0.1.0.keras")
    expected = np.load(DATA / "real_nvp_0.1.0.npz")
    config = model.get_config()
    for key, value in LEGACY_OPTIONS.items():
        assert config[key] == value, key
    x = expected["x"]
    np.testing.assert_allclose(to_numpy(model.bits_per_dim(x)), expected["bits"], rtol=1e-6)
    eps_list, log_det = model.encode(x)
    np.testing.assert_allclose(to_numpy(log_det), expected["log_det"], rtol=1e-6, atol=1e-4)
    for index, eps in enumerate(eps_list):
        np.testing.assert_allclose(to_numpy(eps), expected[f"eps{index}"], rtol=1e-5, atol=1e-5)


def test_the_legacy_architecture_saves_and_reloads(tmp_path):
    """A model built with 0.1.0's options, saved now and reloaded, keeps them and its outputs;
    a config without the new keys (an old file's) gives the same weights as the legacy options
    spelled out."""
    model = small_perturbed_real_nvp(**LEGACY_OPTIONS)
    x = preprocessed_images((4, 4, 4, 2), seed=7)
    expected = to_numpy(model.bits_per_dim(x))
    path = str(tmp_path / "legacy.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert {k: loaded.get_config()[k] for k in LEGACY_OPTIONS} == LEGACY_OPTIONS
    np.testing.assert_array_equal(to_numpy(loaded.bits_per_dim(x)), expected)
    old_config = {k: v for k, v in model.get_config().items() if k not in LEGACY_OPTIONS}
    clone = RealNVP.from_config(old_config)
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]
    assert not clone.losses  # no regularisation in 0.1.0


def test_l2_is_the_originals_on_gains_and_checkerboard_tanh_scalars():
    """`l2` in the original's units (nats per image) becomes `l2 / (D ln 2)` beside the
    bits/dim objective, on every weight-norm gain and the checkerboard couplings' tanh scalars
    only (the RealNVP code matches `magnitude` and `rescaling_scale` by name)."""
    model = RealNVP(**SMALL)
    weights = model.regularized_weights()
    couplings = [f for s in model.scales for f in s["flows"] if isinstance(f, AffineCoupling)]
    tanh_scales = {id(c.tanh_scale) for c in couplings if c.mask == "checkerboard"}
    assert tanh_scales <= {id(w) for w in weights}
    assert not {id(c.tanh_scale) for c in couplings if c.mask == "channel"} & {
        id(w) for w in weights}
    gains = [w for w in model.trainable_weights if w.path.endswith("gain")]
    assert len(weights) == len(gains) + len(tanh_scales)
    for weight in weights:
        weight.assign(weight + 0.5)
    expected = 5e-5 / (32 * np.log(2.0)) * sum(float(np.sum(to_numpy(w) ** 2)) for w in weights)
    assert float(sum(to_numpy(loss) for loss in model.losses)) == pytest.approx(expected,
                                                                                rel=1e-5)
    assert not RealNVP(**SMALL, l2=0.0).losses
    with pytest.raises(ValueError, match="l2 must be a number >= 0"):
        RealNVP(l2=-1.0)


@pytest.mark.parametrize("name, augment", [("cifar10", "flip"), ("imagenet32", "none"),
                                           ("imagenet64", "none"), ("celeba64", "flip"),
                                           ("grey32", "none")])
def test_presets_train_as_the_realnvp_code(name, augment):
    """Adam (beta_2 0.999) at 1e-3, no warm-up, the code's clip at norm 100 on a loss in nats
    per image as the same clip on bits/dim, and the original's augmentation."""
    config = training.resolve_config(training.TrainConfig(model="realnvp", preset=name))
    dims = math.prod(REALNVP_PRESETS[name]["image_shape"])
    assert (config.optimizer, config.lr, config.beta_2) == ("adam", 1e-3, 0.999)
    assert training.parse_warmup(config.warmup, 100) == 0
    assert config.clip_norm == pytest.approx(100 / (dims * math.log(2)))
    assert config.augment == augment
    flag_wins = training.TrainConfig(model="realnvp", preset=name, optimizer="adamax",
                                     augment="shift", clip_norm=0.0)
    resolved = training.resolve_config(flag_wins)
    assert (resolved.optimizer, resolved.augment, resolved.clip_norm) == ("adamax", "shift", 0.0)


def test_glow_presets_keep_openai_glows_training():
    cifar = training.resolve_config(training.TrainConfig(preset="cifar10"))
    assert (cifar.optimizer, cifar.augment) == ("adamax", "shift")
    digits = training.resolve_config(training.TrainConfig())
    assert (digits.optimizer, digits.augment) == ("adamax", "none")


@pytest.mark.slow
def test_grey32_preset_trains():
    """The 32x32 grey preset's architecture (4 scales), narrowed to width 2 and one residual
    block, trains a few steps with the preset's data and optimiser options (as `train.py
    --model realnvp --preset grey32` resolves them) on the digits resized to 32x32."""
    config = training.resolve_config(training.TrainConfig(
        model="realnvp", preset="grey32", dataset="digits", image_size=32, batch_size=16))
    flow = data.load("digits", batch_size=16, image_size=32, levels=3, augment=config.augment)
    model = RealNVP.from_preset("grey32", hidden_width=2, residual_blocks=1)
    assert model.image_shape == flow.image_shape == (32, 32, 1)
    model.initialize(flow.init_batch(16))
    model.compile(optimizer=make_optimizer(config.optimizer, config.lr, 0, None,
                                           config.clip_norm, beta_2=config.beta_2),
                  run_eagerly=True)  # (tracing this 4-scale model costs more than 3 steps)
    history = model.fit(flow.train.take(2), epochs=1, verbose=0).history
    assert np.isfinite(history["loss"][-1])
    assert np.all(np.isfinite(to_numpy(model.bits_per_dim(next(iter(flow.test))))))

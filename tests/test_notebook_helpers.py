"""keras_flow.notebook_helpers: the helpers around `train_variant` (the notebook test runs it)."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_flow import Glow
from keras_flow import RealNVP
from keras_flow import notebook_helpers

# one test process for the module (pytest-xdist): its module fixtures are built once
pytestmark = pytest.mark.xdist_group("notebook_helpers")


@pytest.fixture(scope="module")
def tiny_glow():
    keras.utils.set_random_seed(0)
    model = Glow(levels=2, depth=1, hidden_width=8, image_shape=(8, 8, 1))
    images = np.random.default_rng(0).uniform(-0.5, 0.5, (6, 8, 8, 1)).astype("float32")
    model.initialize(images)
    return model, images


def test_breakdown_adds_up_to_bits_per_dim(tiny_glow):
    model, images = tiny_glow
    terms = notebook_helpers.bits_per_dim_breakdown(model, images)
    assert list(terms) == ["level 1", "level 2", "log-det", "discretisation", "total"]
    assert terms["discretisation"] == 8.0
    assert terms["total"] == pytest.approx(sum(v for k, v in terms.items() if k != "total"))
    assert terms["total"] == pytest.approx(float(ops.mean(model.bits_per_dim(images))), abs=1e-4)


def test_interpolation_ends_at_the_encoded_images(tiny_glow):
    model, images = tiny_glow
    eps_list, _ = model.encode(images)
    starts, ends = [e[0:4:2] for e in eps_list], [e[1:4:2] for e in eps_list]
    path = notebook_helpers.interpolate_latents(starts, ends, 5)
    assert [tuple(p.shape) for p in path] == [(10,) + tuple(e.shape[1:]) for e in eps_list]
    frames = ops.convert_to_numpy(model.decode(path))
    np.testing.assert_allclose(frames[[0, 4, 5, 9]], images[[0, 1, 2, 3]], atol=1e-5)
    assert notebook_helpers.reconstruction_error(model, images) < 1e-5
    with pytest.raises(ValueError, match="num_steps must be >= 2"):
        notebook_helpers.interpolate_latents(starts, ends, 1)


def test_data_levels_counts_the_squeezes():
    assert notebook_helpers.data_levels(Glow, 3) == 3
    assert notebook_helpers.data_levels(RealNVP, 3) == 2


@pytest.mark.parametrize("steps, eval_every, data, match", [
    (25, 10, {}, "multiple of eval_every"),
    (10, 0, {}, "multiple of eval_every"),
    (10, 5, {"dataset": "digits", "levels": 2}, "must not set"),
])
def test_train_variant_rejects_a_bad_budget(steps, eval_every, data, match):
    with pytest.raises(ValueError, match=match):
        notebook_helpers.train_variant(dict(levels=1), data, steps, eval_every)


def fake_history(seed, test_bpd, seconds=(1.0, 2.0)):
    return dict(config={}, seed=seed, params=12345, steps=[10, 20], seconds=list(seconds),
                train_bpd=[2.0, 1.2], test_bpd=list(test_bpd), seconds_per_step=0.01,
                train_seconds=seconds[-1], compile_seconds=3.0, final_train_bpd=1.2,
                final_test_bpd=test_bpd[-1], best_test_bpd=min(test_bpd),
                reconstruction_error=3e-7 * (seed + 1))


def test_mean_history_averages_seeds():
    combined = notebook_helpers.mean_history([fake_history(0, (2.0, 1.0)),
                                              fake_history(1, (3.0, 2.0))])
    assert combined["seeds"] == [0, 1] and combined["steps"] == [10, 20]
    assert combined["test_bpd"] == [2.5, 1.5] and combined["test_bpd_std"] == [0.5, 0.5]
    assert combined["final_test_bpd"] == 1.5 and combined["final_test_bpd_std"] == 0.5
    assert combined["reconstruction_error"] == pytest.approx(6e-7)
    with pytest.raises(ValueError, match="same steps"):
        notebook_helpers.mean_history([fake_history(0, (1.0, 1.0)),
                                       dict(fake_history(1, (1.0, 1.0)), steps=[5, 10])])


def test_summary_table_has_a_row_per_variant():
    single = fake_history(0, (1.5, 1.23456))
    averaged = notebook_helpers.mean_history([fake_history(0, (2.0, 1.0)),
                                              fake_history(1, (3.0, 2.0))])
    table = notebook_helpers.summary_table({"reverse / affine": single,
                                            "conv1x1 / affine": averaged,
                                            "shuffle / affine": dict(single,
                                                                     final_test_bpd=math.nan)})
    lines = table.splitlines()
    assert len(lines) == 5 and lines[0].startswith("| variant | test bits/dim | best test")
    assert "| reverse / affine | 1.235 | 1.235 | 1.200 | 0.0100 | 2 | 12,345 | 3.0e-07 |" in lines
    assert "| conv1x1 / affine | 1.500 ± 0.500 | 1.500 ± 0.500 |" in lines[3]
    assert "| nan |" in lines[4]


def test_train_variant_reports_bits_per_dim_at_the_datas_bits():
    """Below 8 bits the model gets the data's bins: the test bits/dim is the mean of
    `(-log p(x) + D log 2**n_bits) / (D ln 2)`, not 8 - n_bits bits/dim higher."""
    data = dict(dataset="digits", batch_size=16, n_bits=4)
    model, history = notebook_helpers.train_variant(
        dict(levels=1, depth=1, hidden_width=4), data, steps=2, eval_every=2, test_batches=1)
    assert model.num_bins == 16
    flow = notebook_helpers.flow_data.load(**data, levels=1)
    images = next(iter(flow.test))
    dims = math.prod(images.shape[1:])
    log_prob = ops.convert_to_numpy(model.log_prob(images))
    expected = np.mean((-log_prob + dims * math.log(16)) / (dims * math.log(2)))
    assert history["test_bpd"][-1] == pytest.approx(expected, abs=1e-3)
    with pytest.raises(ValueError, match="num_bins=256 but the data keeps n_bits=4"):
        notebook_helpers.train_variant(dict(levels=1, num_bins=256), data, 2, 2)

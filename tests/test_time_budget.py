"""The time-budget recipe and the clock rule (docs/time-budget.md): how `--recipe`, presets and
explicit flags resolve, bf16 only where native, training until the time is up, and the
openai/glow settings training exactly as before the recipe existed."""

import dataclasses
import json

import keras
import numpy as np
import pytest

from keras_flow import callbacks as flow_callbacks
from keras_flow import cpu_features
from keras_flow import cpu_threads
from keras_flow import training
from keras_flow.optimizers import make_optimizer
from keras_flow.training import config as training_config
from keras_flow.training.config import PRESET_OPTIMISATION
from keras_flow.training.config import TIME_BUDGET_RECIPE
from keras_flow.training.run_folder import _config_differences
from tests.test_train import _tiny_config

# `resolve_config(TrainConfig())` before recipes existed (keras_flow at 81cb6de): the default
# `python3 train.py` digits run.
DIGITS_BEFORE = {
    "dataset": "digits", "image_size": None, "fit": "pad", "on_bad_file": "skip",
    "model": "glow", "preset": "digits", "levels": 2, "depth": 8, "hidden_width": 64,
    "residual_blocks": None, "permutation": None, "coupling": "affine", "lu": None,
    "learn_top": None, "remat": None, "zero_log_scale_factor": None, "split_prior": None,
    "conditional": False, "classifier_weight": 0.0, "n_bits": 4, "augment": "none",
    "optimizer": "adamax", "lr": 0.005, "warmup": "1epoch", "lr_decay_steps": None,
    "budget_decay": False, "clip_norm": None, "beta_2": None, "ema": 0.99, "batch_size": 64,
    "epochs": 12, "steps_per_epoch": 100, "steps_per_execution": 1, "seed": 0,
    "max_seconds": None, "init_batch_size": 256, "out": None, "overwrite": False,
    "checkpoint_every": 500, "mixed_precision": "off", "jit": "auto", "strategy": "default",
    "cpu_devices": None, "batch_shards": 0, "validation_fraction": 0.1,
    "temperatures": (0.0, 0.5, 0.7, 0.8, 1.0), "num_samples": 64, "verbose": 1,
    "test_every_epoch": True}  # an option added since, resolving to what runs did then
# ...and of `TrainConfig(dataset="npz:x.npz")` (no preset): the general defaults.
NO_PRESET_BEFORE = dict(
    DIGITS_BEFORE, dataset="npz:x.npz", preset="none", levels=None, depth=None,
    hidden_width=None, coupling=None, n_bits=8, lr=0.001, ema=0.0, epochs=10,
    steps_per_epoch=None)
# A tiny run of 8 steps (`_tiny_config(..., max_seconds=1000.0, seed=3)`) before recipes,
# under pytest (tests/conftest.py):
# its final test bits/dim and the sum of its final weights (model.keras).
TINY_BEFORE = dict(test_bits_per_dim=4.553661823272705, weights_sum=19.618673347365984)


def _resolved(**options):
    values = dataclasses.asdict(training.resolve_config(training.TrainConfig(**options)))
    return values.pop("recipe"), values


@pytest.fixture
def bf16(monkeypatch):
    """Sets whether this machine runs bf16 natively: `bf16(True|False|None)`."""
    def set_native(native, gpu=False):
        monkeypatch.setattr(cpu_threads, "has_gpu", lambda: gpu)
        monkeypatch.setattr(cpu_features, "native_bfloat16", lambda path=None: native)
    set_native(False)
    return set_native


# --- resolution ----------------------------------------------------------------------------

def test_without_max_seconds_runs_resolve_as_before():
    assert _resolved() == ("openai", DIGITS_BEFORE)
    assert _resolved(dataset="npz:x.npz") == ("openai", NO_PRESET_BEFORE)
    assert _resolved(recipe="openai") == ("openai", DIGITS_BEFORE)


def test_the_openai_recipe_with_max_seconds_and_epochs_resolves_as_before():
    """Before recipes, --max-seconds changed nothing else: `--recipe openai --epochs N` is
    that run (without --epochs, the clock rule lifts the epoch cap)."""
    assert _resolved(recipe="openai", max_seconds=600.0, epochs=12) == (
        "openai", dict(DIGITS_BEFORE, max_seconds=600.0))
    assert _resolved(recipe="openai", max_seconds=600.0) == (
        "openai", dict(DIGITS_BEFORE, max_seconds=600.0, epochs=None))


def test_max_seconds_picks_the_time_budget_recipe(bf16):
    recipe, values = _resolved(dataset="npz:x.npz", max_seconds=600.0)
    assert recipe == "time-budget"
    assert values == {**NO_PRESET_BEFORE, **TIME_BUDGET_RECIPE, "max_seconds": 600.0,
                      "epochs": None, "mixed_precision": "off"}  # bf16 not native here
    # a Glow preset without an optimizer of its own (digits: Adamax's rate) takes the
    # recipe's optimisation, and keeps its architecture, steps per epoch and averaging
    recipe, values = _resolved(max_seconds=600.0)
    assert recipe == "time-budget" and values["lr"] == TIME_BUDGET_RECIPE["lr"]
    assert (values["levels"], values["steps_per_epoch"], values["ema"]) == (2, 100, 0.99)
    assert values["epochs"] is None


def test_a_preset_with_its_own_optimizer_keeps_it_under_the_recipe(bf16):
    before = training.resolve_config(training.TrainConfig(model="realnvp", dataset="cifar10"))
    recipe, values = _resolved(model="realnvp", dataset="cifar10", max_seconds=600.0)
    assert recipe == "time-budget"
    for key in PRESET_OPTIMISATION:
        assert values[key] == getattr(before, key), key
    assert values["budget_decay"] and values["zero_log_scale_factor"] is None  # Glow only


def test_explicit_flags_win_over_the_recipe(bf16):
    bf16(True)
    explicit = dict(optimizer="adamax", lr=2e-4, warmup="0", beta_2=0.9, clip_norm=5.0,
                    budget_decay=False, mixed_precision="off", zero_log_scale_factor=3.0,
                    epochs=3)
    recipe, values = _resolved(max_seconds=60.0, **explicit)
    assert recipe == "time-budget"
    assert {key: values[key] for key in explicit} == explicit
    # a decay over steps replaces the recipe's decay over the budget
    _, values = _resolved(max_seconds=60.0, lr_decay_steps=1000)
    assert values["budget_decay"] is False and values["lr_decay_steps"] == 1000
    # and the explicit recipe wins over auto
    assert _resolved(max_seconds=60.0, recipe="openai")[1]["optimizer"] == "adamax"


@pytest.mark.parametrize("native, gpu, precision, says", [
    (True, False, "bf16", "this CPU runs bf16 natively"),
    (False, False, "off", "this CPU does not run bf16 natively"),
    (None, False, "off", "this CPU (features unknown) does not run bf16 natively"),
    (False, True, "bf16", "the GPU runs bf16 natively"),
])
def test_the_recipe_takes_bf16_only_where_it_is_native(bf16, native, gpu, precision, says):
    bf16(native, gpu)
    config = training.resolve_config(training.TrainConfig(max_seconds=60.0))
    assert config.mixed_precision == precision
    line = training.recipe_line(config)
    assert line.startswith("Recipe: time-budget") and says in line
    assert ("float32" in line) == (precision == "off")


def test_the_time_budget_recipe_needs_max_seconds():
    with pytest.raises(ValueError, match="needs the budget: give --max-seconds"):
        training.resolve_config(training.TrainConfig(recipe="time-budget"))


def test_a_run_folder_from_before_recipes_resumes_with_the_openai_settings(bf16, tmp_path):
    """A config.json without `recipe` meant openai/glow's settings: rerunning its command
    (which gave --max-seconds) with the same --out resolves to them, and matches."""
    old = dict(DIGITS_BEFORE, max_seconds=600.0, out=str(tmp_path),
               temperatures=list(DIGITS_BEFORE["temperatures"]))
    (tmp_path / "config.json").write_text(json.dumps(old))
    request = training.TrainConfig(max_seconds=600.0, out=str(tmp_path))
    config = training.resolve_config(request, training.saved_config(request))
    assert config.recipe == "openai" and config.optimizer == "adamax"
    # the clock rule lifts the epoch cap, and epochs may change on resuming
    assert config.epochs is None and _config_differences(old, config) == []
    training.output_folder(config)  # accepted: the run resumes
    # a run folder with a recipe resumes with it
    saved = dataclasses.asdict(dataclasses.replace(config, recipe="time-budget"))
    assert training.resolve_recipe(request, saved) == "time-budget"
    assert training.resolve_recipe(dataclasses.replace(request, overwrite=True),
                                   saved) == "time-budget"  # fresh: --max-seconds given


# --- the clock is the budget ---------------------------------------------------------------

def test_without_epochs_training_runs_until_the_time_is_up(tmp_path, capsys, bf16,
                                                          monkeypatch):
    # a default of 2 epochs (not 10), so that passing it shows even on a loaded machine
    monkeypatch.setitem(training_config.DEFAULTS, "epochs", 2)
    metrics = training.train(_tiny_config(
        tmp_path, epochs=None, preset="none", steps_per_epoch=1, max_seconds=8.0,
        checkpoint_every=0, validation_fraction=0.0, verbose=2))
    assert metrics["stopped_by"] == "time" and metrics["time_limit_reached"]
    assert metrics["epochs"] > 2  # not the default number of epochs
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["stopped_by"] == "time"
    out = capsys.readouterr().out
    assert "Recipe: time-budget" in out and "until 8 s are up" in out
    assert "Stopped by the clock: the 8 s limit" in out
    assert json.loads((tmp_path / "config.json").read_text())["epochs"] is None


def test_with_epochs_first_the_epochs_end_it_and_say_so(tmp_path, capsys, bf16):
    metrics = training.train(_tiny_config(tmp_path, epochs=2, max_seconds=600.0, verbose=2))
    assert metrics["stopped_by"] == "epochs" and metrics["steps"] == 8
    out = capsys.readouterr().out
    assert "for 2 epochs or 600 s, whichever ends first" in out
    assert "Stopped by the epochs: 2 done, before the 600 s limit" in out


def test_the_recipe_evaluates_the_test_set_once_at_the_end(tmp_path, bf16):
    """Under the time-budget recipe the epochs end with the validation bits/dim only; the
    test set is evaluated after training. The openai recipe evaluates it every epoch."""
    for recipe, folder in (("time-budget", tmp_path / "budget"), ("openai", tmp_path / "openai")):
        metrics = training.train(_tiny_config(folder, epochs=2, max_seconds=600.0,
                                              recipe=recipe, verbose=0))
        history = json.loads((folder / "history.json").read_text())
        per_epoch = ["test_bits_per_dim" in record for record in history]
        assert per_epoch == ([False, False] if recipe == "time-budget" else [True, True])
        assert all("val_bits_per_dim" in record for record in history)
        assert np.isfinite(metrics["test_bits_per_dim"])


def test_the_budget_decay_ends_where_the_steps_end():
    """With an epoch count, `SpendBudget` follows the steps when they run out before the
    clock: the learning rate reaches 0 at the last step either way."""
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=make_optimizer("adam", 1e-2, budget_decay=True), loss="mse")
    done = [0.0]
    spend = flow_callbacks.SpendBudget(100.0, clock=lambda: 10.0, progress=lambda: done[0])
    spend.set_model(model)
    spend.on_train_begin()
    schedule = model.optimizer._learning_rate  # noqa: SLF001 (the test reads the schedule)
    for share, expected in ((0.0, 0.1), (0.5, 0.5), (1.0, 1.0)):
        done[0] = share
        spend.on_train_batch_begin(0)
        assert float(schedule.spent.numpy()) == pytest.approx(expected)
    assert float(schedule(1000)) == pytest.approx(0.0, abs=1e-9)


# --- the openai/glow settings train as before ----------------------------------------------

def _weights_sum(out):
    model = keras.models.load_model(out / "model.keras")
    return float(sum(np.sum(np.asarray(w, np.float64)) for w in model.get_weights()))


def test_the_openai_recipe_trains_as_before_seed_for_seed(tmp_path):
    """`--recipe openai` trains the steps and weights of the same run before recipes; the
    same run under the time-budget recipe with the openai values given as flags does too."""
    openai = training.train(_tiny_config(tmp_path / "openai", max_seconds=1000.0, seed=3,
                                         recipe="openai"))
    assert openai["steps"] == 8 and openai["stopped_by"] == "epochs"
    assert openai["test_bits_per_dim"] == pytest.approx(TINY_BEFORE["test_bits_per_dim"],
                                                        rel=1e-6)
    # every option of the recipe given as a flag with its openai value (clip 0: none,
    # Adamax's beta_2 = 1 - 1/steps_per_epoch, the model's default zero_log_scale_factor),
    # from the global seed the first run started from (tests/conftest.py)
    keras.utils.set_random_seed(0)
    explicit = training.train(_tiny_config(
        tmp_path / "explicit", max_seconds=1000.0, seed=3, optimizer="adamax", lr=5e-3,
        warmup="1epoch", budget_decay=False, mixed_precision="off", clip_norm=0.0,
        beta_2=1 - 1 / 4, zero_log_scale_factor=3.0))
    assert explicit["test_bits_per_dim"] == openai["test_bits_per_dim"]
    # (rel 2e-5: in the full suite, earlier tests' TensorFlow thread settings change the order
    # of float32 sums, 4e-6 here; a changed option moves the sum far more)
    assert _weights_sum(tmp_path / "openai") == pytest.approx(TINY_BEFORE["weights_sum"],
                                                              rel=2e-5)
    assert json.loads((tmp_path / "explicit" / "config.json").read_text())["recipe"] == (
        "time-budget")
    assert _weights_sum(tmp_path / "explicit") == _weights_sum(tmp_path / "openai")


@pytest.mark.parametrize("options", [dict(), dict(max_seconds=60.0),
                                     dict(max_seconds=60.0, epochs=3, recipe="openai"),
                                     dict(model="realnvp", dataset="cifar10", max_seconds=9.0)])
def test_a_resolved_config_resolves_to_itself(bf16, options):
    """Benchmarks resolve a configuration and `train` resolves it again."""
    once = training.resolve_config(training.TrainConfig(**options))
    assert training.resolve_config(once) == once

"""Issue 9: bad input stops with one clear line, numerical failures name where they appeared, and
interruptions (SIGKILL, Ctrl-C) never cost more than the steps since the last checkpoint.

Bad inputs are checked twice, through the CLI (`train.py`'s `main` in this process: exit status
2, one line `error: ...`, `--out` not created) and through the library API (the same
exception type and message). Argument errors stop before any data is loaded or model built.
"""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_flow import Glow
from keras_flow import callbacks as flow_callbacks
from keras_flow import RealNVP
from keras_flow import data
from keras_flow import files
from keras_flow import training
from keras_flow.optimizers import build_optimizer
from keras_flow.optimizers import loss_scale
from keras_flow.saved_model import FlowEndpoints
from tests.flow_checks import preprocessed_images
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--levels", "1", "--depth", "1", "--hidden-width", "8", "--init-batch-size", "64",
        "--num-samples", "4", "--temperatures", "0.7"]


def _cli(argv, capsys):
    """`(exit status, stderr)` of `train.py argv`, run in this process."""
    try:
        code = load_script("train.py").main(argv)
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr().err


def _png(path, size=(8, 8), value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8), mode="L").save(path)


def _tiny_glow(**kwargs):
    model = Glow(levels=1, depth=1, hidden_width=4, image_shape=(8, 8, 1), **kwargs)
    labels = np.arange(4) % kwargs["num_classes"] if kwargs.get("num_classes") else None
    model.initialize(preprocessed_images((4, 8, 8, 1)), labels)
    return model


# --- bad input: sources ------------------------------------------------------------------

def _missing(tmp):
    return f"folder:{tmp / 'missing'}"


def _empty(tmp):
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("no images")
    return f"folder:{tmp / 'empty'}"


def _corrupt(tmp):
    for i in range(4):
        _png(tmp / "corrupt" / f"{i}.png", value=10 * i)
    (tmp / "corrupt" / "broken.png").write_bytes(b"not a png")
    return f"folder:{tmp / 'corrupt'}"


def _mixed_sizes(tmp):
    _png(tmp / "mixed" / "a.png", (8, 8))
    _png(tmp / "mixed" / "b.png", (6, 10))
    return f"folder:{tmp / 'mixed'}"


def _npz(tmp, name, x, **arrays):
    np.savez(tmp / name, x=x, **arrays)
    return f"npz:{tmp / name}"


def _six_by_six(tmp):
    return _npz(tmp, "six.npz", np.zeros((20, 6, 6), np.uint8))


def _with_nan(tmp):
    x = np.zeros((20, 8, 8), np.float32)
    x[3, 2, 2] = np.nan
    return _npz(tmp, "nan.npz", x)


def _out_of_range(tmp):
    return _npz(tmp, "range.npz", np.full((20, 8, 8), 300, np.int32))


def _unlabelled(tmp):
    return _npz(tmp, "unlabelled.npz", np.zeros((20, 8, 8), np.uint8))


# (name, source, extra CLI flags, the same options for data.load, exception, message keyword)
SOURCE_CASES = [
    ("unknown dataset", lambda tmp: "imagenet_of_cats", [], {}, ValueError, "Unknown dataset"),
    ("missing folder", _missing, [], {}, FileNotFoundError, "Image folder not found"),
    ("empty folder", _empty, [], {}, ValueError, "No .png/.jpg/.jpeg images"),
    ("corrupt image", _corrupt, ["--on-bad-file", "error"], {"on_bad_file": "error"},
     ValueError, "Cannot read image"),
    ("mixed sizes", _mixed_sizes, [], {}, ValueError, "different sizes"),
    ("size not divisible", _six_by_six, ["--fit", "error", "--levels", "2"],
     {"fit": "error", "levels": 2}, ValueError, "do not divide by 2**levels"),
    ("NaN in array", _with_nan, [], {}, ValueError, "NaN/Inf"),
    ("out-of-range array", _out_of_range, [], {}, ValueError, "not integers in 0..255"),
    ("conditional without labels", _unlabelled, ["--conditional"], {"with_labels": True},
     ValueError, "has no labels"),
]


@pytest.mark.parametrize("case", SOURCE_CASES, ids=[case[0] for case in SOURCE_CASES])
def test_bad_source_stops_the_cli_with_one_line_and_writes_nothing(case, tmp_path, capsys):
    _, source, flags, _, _, keyword = case
    out = tmp_path / "run"
    code, err = _cli(["--dataset", source(tmp_path), *flags, "--out", str(out)], capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and keyword in err, err
    assert not out.exists()


@pytest.mark.parametrize("case", SOURCE_CASES, ids=[case[0] for case in SOURCE_CASES])
def test_bad_source_raises_the_same_error_from_the_api(case, tmp_path):
    _, source, _, options, error, keyword = case
    with pytest.raises(error, match=keyword.replace("*", r"\*").replace(".", r"\.")):
        data.load(source(tmp_path), **options)


def test_unreadable_files_are_skipped_and_counted_by_default(tmp_path):
    with pytest.warns(UserWarning, match="Skipped 1 unreadable"):
        loaded = data.load(_corrupt(tmp_path), validation_fraction=0, test_fraction=0.25)
    assert loaded.skipped_files == 1 and loaded.num_train + loaded.num_test == 4


def test_on_bad_file_is_a_cli_flag(capsys):
    code, err = _cli(["--on-bad-file", "ignore"], capsys)
    assert code == 2 and "invalid choice" in err and "skip" in err


# --- bad input: options --------------------------------------------------------------------

OPTION_CASES = [
    (["--depth", "0"], "depth must be a positive integer"),
    (["--levels", "-1"], "levels must be a positive integer"),
    (["--hidden-width", "0"], "hidden_width must be a positive integer"),
    (["--batch-size", "0"], "batch_size must be a positive integer"),
    (["--temperatures=-1"], "temperatures must be >= 0"),
]


@pytest.mark.parametrize("flags, keyword", OPTION_CASES, ids=[c[0][0] for c in OPTION_CASES])
def test_bad_option_stops_the_cli_before_loading_data(flags, keyword, tmp_path, capsys,
                                                      monkeypatch):
    monkeypatch.setattr(training, "load_data", pytest.fail)  # must not be reached
    out = tmp_path / "run"
    code, err = _cli([*flags, "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error: ") and keyword in err, err
    assert not out.exists()


def test_steps_per_execution_must_divide_the_epoch_and_nothing_is_written(tmp_path, capsys,
                                                                         monkeypatch):
    monkeypatch.setattr(training, "build_model", pytest.fail)  # refused before the model
    out = tmp_path / "run"
    code, err = _cli([*TINY, "--steps-per-epoch", "4", "--steps-per-execution", "3", "--out",
                      str(out)], capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "steps_per_execution=3 must divide the steps per epoch (4); use one of [1, 2, 4]" in err
    assert not out.exists()


@pytest.mark.parametrize("make", [
    lambda: Glow(depth=0), lambda: Glow(levels=-1), lambda: Glow(hidden_width=0),
    lambda: RealNVP(levels=0), lambda: RealNVP(residual_blocks=0),
    lambda: data.load("digits", batch_size=0),
])
def test_bad_sizes_raise_from_the_api(make):
    with pytest.raises(ValueError, match=r"must be|needs"):
        make()


def test_api_checks_batch_size_num_samples_and_temperature():
    model = _tiny_glow()
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        model.fit(preprocessed_images((4, 8, 8, 1)), batch_size=0, verbose=0)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        model.sample(0)
    for temperature in (-0.5, float("nan")):
        with pytest.raises(ValueError, match="temperature must be >= 0"):
            model.sample(2, temperature=temperature)
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature must be >= 0"):
        FlowEndpoints(model).sample(tf.constant(2), tf.constant(-1.0))


def test_sample_cli_refuses_a_negative_temperature(tmp_path, capsys):
    from keras_flow import sample as sample_cli

    (tmp_path / "saved_model.pb").write_bytes(b"")  # argument checks come before loading
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main([str(tmp_path), "--temperature", "-1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--temperature must be >= 0" in err


# --- bad input: the model's inputs ---------------------------------------------------------

def test_wrong_image_shape_for_a_built_model_or_export():
    model = _tiny_glow()
    rgb = preprocessed_images((2, 8, 8, 3))
    for call in (model.encode, model.log_prob, model, model.initialize):
        with pytest.raises(ValueError, match=r"built for images of shape \(8, 8, 1\)"):
            call(rgb)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"shape \[None, 8, 8, 1\]"):
        FlowEndpoints(model).encode(tf.zeros([2, 8, 8, 3], tf.uint8))


def test_an_empty_batch_is_a_clear_error():
    model = _tiny_glow()
    empty = preprocessed_images((0, 8, 8, 1))
    for call in (model.encode, model.log_prob, model.bits_per_dim, model, model.initialize):
        with pytest.raises(ValueError, match=r"empty batch of images \(shape \(0, 8, 8, 1\)\)"):
            call(empty)
    latents = [np.zeros((0,) + tuple(shape), "float32") for shape in model.latent_shapes]
    with pytest.raises(ValueError, match="empty batch of latents"):
        model.decode(latents)
    endpoints = FlowEndpoints(model)
    for name in ("encode", "bits_per_dim"):
        with pytest.raises(tf.errors.InvalidArgumentError,
                           match=f"{name} got an empty batch: pass at least one image"):
            getattr(endpoints, name)(tf.zeros([0, 8, 8, 1], tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="decode got an empty batch"):
        endpoints.decode(tf.zeros([0, endpoints.latent_dim], tf.float32))


def test_labels_must_match_the_conditioning():
    x = preprocessed_images((4, 8, 8, 1))
    labels = np.array([0, 1, 2, 0], "int32")
    unconditional, conditional = _tiny_glow(), _tiny_glow(num_classes=3)
    for call in (lambda: unconditional.encode(x, labels),
                 lambda: unconditional({"image": x, "label": labels}),
                 lambda: unconditional.sample(4, labels=labels)):
        with pytest.raises(ValueError, match="Labels were given to an unconditional model"):
            call()
    for call in (lambda: conditional.encode(x), lambda: conditional(x),
                 lambda: conditional.sample(4)):
        with pytest.raises(ValueError, match="class-conditional"):
            call()


def test_labels_must_be_integers_in_range_one_per_image():
    x = preprocessed_images((4, 8, 8, 1))
    model = _tiny_glow(num_classes=3)
    for labels in (np.array([0, 1, 2, 7]), [0, -1, 2, 1]):
        with pytest.raises(ValueError, match=r"Labels must be in 0..2 \(num_classes=3\)"):
            model.bits_per_dim(x, labels)
    with pytest.raises(ValueError, match="got values from 5 to 9"):
        model.sample(2, labels=np.array([5, 9]))
    with pytest.raises(ValueError, match="integer class indices in 0..2; got dtype float"):
        model.sample(2, labels=np.array([0.5, 1.7]))
    with pytest.raises(ValueError, match="Received 4 images but 2 labels"):
        model.bits_per_dim(x, np.array([0, 1]))
    assert model.sample(2, labels=[0, 2]).shape == (2, 8, 8, 1)


def test_integer_images_name_the_preprocessing():
    model = _tiny_glow()
    model.compile(optimizer="adam")
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1)).astype("uint8")
    batches = tf.data.Dataset.from_tensor_slices(images).batch(2)
    for call in (model.bits_per_dim, model.encode, model.initialize,
                 lambda x: model.fit(x, batch_size=2, verbose=0),
                 lambda x: model.fit(batches, verbose=0, shuffle=False)):
        with pytest.raises(ValueError, match=r"images are uint8.*preprocessing.preprocess"):
            call(images)


def test_latents_and_options_of_the_wrong_kind_are_refused():
    model = _tiny_glow()  # one level: latents of shape (4, 4, 4)
    shape = model.latent_shapes[0]
    wrong = [np.zeros((2, shape[0] * 2, shape[1] * 2, shape[2]), "float32")]
    with pytest.raises(ValueError, match=r"decode's latent 0 has shape \(2, 8, 8, 4\)"):
        model.decode(wrong)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        model.sample(2, temperature=np.float32(-1))
    with pytest.raises(ValueError, match="integers >= 1; got levels=1.5"):
        Glow(levels=1.5)
    with pytest.raises(ValueError, match="got residual_blocks=0"):
        RealNVP(residual_blocks=0)
    x = preprocessed_images((2, 8, 8, 1))
    np.testing.assert_allclose(model.encode(x.tolist())[1], model.encode(x)[1], rtol=1e-6)


def test_non_finite_or_unpreprocessed_inputs():
    model = Glow(levels=1, depth=1, hidden_width=4, image_shape=(8, 8, 1))
    images = preprocessed_images((4, 8, 8, 1))
    images[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="1 NaN/Inf values"):
        model.initialize(images)
    with pytest.warns(UserWarning, match=r"span \[0, 255\].*expects dequantised images"):
        model.initialize(np.linspace(0, 255, 256, dtype="float32").reshape(4, 8, 8, 1))
    model.compile(optimizer="adam")
    with pytest.raises(ValueError, match="NaN/Inf"):
        model.fit(images, batch_size=2, verbose=0)


# --- bad input: an output folder that holds another run ------------------------------------

def test_output_folder_of_another_run_is_refused_naming_the_keys(tmp_path, capsys):
    out = tmp_path / "run"
    saved = training.resolve_config(training.TrainConfig(out=str(out), lr=5e-4, depth=2,
                                                          n_bits=3))
    files.write_json(out / "config.json", dataclasses.asdict(saved))
    before = sorted(p.name for p in out.iterdir())
    code, err = _cli(["--out", str(out), "--depth", "3"], capsys)
    assert code == 2 and err.count("\n") == 1
    for keyword in ("different configuration", "depth (saved 2, now 3)",
                    "n_bits (saved 3, now ", "another --out", "--overwrite"):
        assert keyword in err, err
    assert "lr (" not in err  # with an explicit --out the learning rate may change
    assert sorted(p.name for p in out.iterdir()) == before
    assert json.loads((out / "config.json").read_text())["depth"] == 2
    with pytest.raises(ValueError, match="depth"):
        training.output_folder(training.resolve_config(training.TrainConfig(out=str(out))))


def test_an_out_that_is_a_file_is_refused_before_any_data_is_loaded(tmp_path, capsys,
                                                                     monkeypatch):
    (tmp_path / "a_file").write_text("mine")
    monkeypatch.setattr(training, "load_data", lambda config: pytest.fail("data loaded"))
    for out in (tmp_path / "a_file", tmp_path / "a_file" / "run"):
        code, err = _cli(["--out", str(out)], capsys)
        assert code == 2 and err.count("\n") == 1 and "a_file is a file, not a folder" in err
    assert (tmp_path / "a_file").read_text() == "mine"


def test_overwrite_starts_over_in_a_folder_of_another_run(tmp_path):
    out = tmp_path / "run"
    files.write_json(out / "config.json", {"depth": 99})
    files.write_json(out / "metrics.json", {})
    files.write_json(out / "checkpoints" / "state.json", {"step": 3})
    (out / "notes.txt").write_text("mine")
    config = training.resolve_config(training.TrainConfig(out=str(out), overwrite=True))
    assert training.output_folder(config) == out
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # only the run's files go


# --- numerical failure ---------------------------------------------------------------------

class _Batches:
    """A repeated tf.data pipeline of preprocessed 8x8 images."""

    def __init__(self, count=32, batch_size=8):
        self.images = preprocessed_images((count, 8, 8, 1), seed=3)
        self.dataset = tf.data.Dataset.from_tensor_slices(self.images).batch(batch_size).repeat()


def test_diagnose_names_a_non_finite_weight():
    model = _tiny_glow()
    weight = next(w for w in model.weights if w.path.endswith("coupling/network/conv_out/bias"))
    weight.assign(np.full(weight.shape, np.nan, "float32"))
    finding = flow_callbacks.diagnose(model, preprocessed_images((4, 8, 8, 1)))
    assert finding.where == weight.path and "NaN" in finding.text


def test_diagnose_names_the_first_non_finite_layer_output():
    model = _tiny_glow()
    actnorm = model.steps[0][0].flows[0]
    actnorm.log_scale.assign(np.full(actnorm.log_scale.shape, 40.0, "float32"))  # exp(120)
    finding = flow_callbacks.diagnose(model, preprocessed_images((4, 8, 8, 1)))
    assert finding.where == actnorm.path and "inf" in finding.text


def test_guard_stops_a_diverging_fit_naming_the_step_and_the_layer():
    keras.utils.set_random_seed(0)
    model = _tiny_glow()
    model.compile(optimizer=keras.optimizers.Adam(1e4))
    batches = _Batches()
    guard = flow_callbacks.NonFiniteGuard(batches.dataset)
    with pytest.raises(flow_callbacks.NonFiniteLossError) as error_info:
        model.fit(batches.dataset, steps_per_epoch=20, epochs=2, callbacks=[guard], verbose=0,
                  shuffle=False)
    error = error_info.value
    assert isinstance(error, ArithmeticError) and error.step == 2
    assert "/step_0_0/" in error.where
    message = str(error)
    for keyword in ("at training step 2", error.where, "weights after step 1", "warm-up",
                    "lower learning rate", "clipping", "n_bits"):
        assert keyword in message, message
    assert flow_callbacks.all_finite(model.weights)  # the last finite weights are back


def test_guard_checks_a_call_of_several_steps_and_names_them():
    """With steps_per_execution = 4 the callbacks run once per 4 steps: the guard stops after
    the call in which the loss went non-finite, names its steps, and puts back the weights
    from before it."""
    keras.utils.set_random_seed(0)
    model = _tiny_glow()
    model.compile(optimizer=keras.optimizers.Adam(1e4), steps_per_execution=4)
    counter = flow_callbacks.StepCounter()
    guard = flow_callbacks.NonFiniteGuard(_Batches().dataset, counter)
    with pytest.raises(flow_callbacks.NonFiniteLossError) as error_info:
        model.fit(_Batches().dataset, steps_per_epoch=20, epochs=2, callbacks=[counter, guard],
                  verbose=0, shuffle=False)
    error = error_info.value
    assert error.step == counter.step == 4
    message = str(error)
    assert "in training steps 1-4" in message and "weights after step 0" in message, message
    assert flow_callbacks.all_finite(model.weights)


def test_guard_catches_non_finite_weights_with_a_finite_loss():
    """A NaN that reaches the weights (as a non-finite gradient would) stops the same step."""

    class PoisonAfterStep3(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            if batch == 2:
                bias = self.model.steps[0][0].flows[0].bias
                bias.assign(np.full(bias.shape, np.nan, "float32"))

    model = _tiny_glow()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    batches = _Batches()
    guard = flow_callbacks.NonFiniteGuard(batches.dataset)
    with pytest.raises(flow_callbacks.NonFiniteLossError, match="Non-finite weights after training "
                                                          "step 3") as error_info:
        model.fit(batches.dataset, steps_per_epoch=10, callbacks=[PoisonAfterStep3(), guard],
                  verbose=0, shuffle=False)
    assert error_info.value.step == 3 and "weights after step 2" in str(error_info.value)
    assert flow_callbacks.all_finite(model.weights)


def test_fp16_loss_scaling_skips_are_counted_not_fatal():
    keras.config.set_dtype_policy("mixed_float16")
    model = _tiny_glow()
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam(1e-3),
                                                    initial_scale=2.0 ** 100)
    model.compile(optimizer=optimizer)
    batches = _Batches()
    guard = flow_callbacks.NonFiniteGuard(batches.dataset)
    history = model.fit(batches.dataset, steps_per_epoch=6, callbacks=[guard], verbose=0,
                  shuffle=False)
    assert guard.skipped_steps >= 1 and history.history["skipped_steps"] == [guard.skipped_steps]
    assert int(model.optimizer.iterations) == 6 - guard.skipped_steps
    assert loss_scale(model.optimizer) < 2.0 ** 100


def test_sampling_stays_finite_when_the_affine_scale_vanishes():
    """sigmoid(raw + 2) -> 0 would divide by zero in the inverse; log-scale is clipped at -15."""
    model = _tiny_glow()
    for weight in model.weights:
        if weight.path.endswith("coupling/network/conv_out/bias"):
            weight.assign(np.full(weight.shape, -1e4, "float32"))
    x = preprocessed_images((4, 8, 8, 1))
    eps_list, log_det = model.encode(x)
    assert np.all(np.isfinite(log_det)) and np.all(np.asarray(log_det) < -100)
    for temperature in (0.7, 1.0):
        assert np.all(np.isfinite(model.sample(8, temperature=temperature, seed=1)))
    np.testing.assert_allclose(model.decode(eps_list), x, atol=1e-2)


def _compiled_tiny_glow():
    model = _tiny_glow()
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    build_optimizer(model)
    return model


class _Steps:
    """Drives a `Checkpoint` of a tiny model through batch ends, as `fit` would."""

    def __init__(self, folder, every, initial_step=0):
        self.counter = flow_callbacks.StepCounter(initial_step)
        self.checkpoint = flow_callbacks.Checkpoint(folder, self.counter, every, total_steps=100)
        self.checkpoint.set_model(_compiled_tiny_glow())
        self.folder = Path(folder)

    def run(self, *losses):
        for loss in losses:
            self.counter.on_train_batch_end(self.counter.step)
            self.checkpoint.on_train_batch_end(self.counter.step - 1, {"loss": loss})

    def files(self):
        return sorted(path.name for path in self.folder.glob("ckpt-*"))

    def state(self):
        return json.loads((self.folder / "state.json").read_text())


def test_a_checkpoint_is_good_once_a_finite_loss_was_computed_from_its_weights(tmp_path):
    """The loss of step k + 1 is computed from the weights saved at step k: until it is finite,
    the checkpoint before is kept, and a non-finite loss goes back to it."""
    steps = _Steps(tmp_path, every=2)
    steps.run(1.0, 1.0)  # saved at 2, unchecked
    assert steps.state()["step"] == 2 and not steps.state()["confirmed"]
    steps.run(1.0)  # step 3's loss is computed from step 2's weights
    assert steps.state()["confirmed"] and steps.files() == ["ckpt-000000002.weights.h5"]
    steps.run(1.0)  # saved at 4: step 2's is kept until a loss confirms step 4's
    assert steps.files() == ["ckpt-000000002.weights.h5", "ckpt-000000004.weights.h5"]
    steps.run(float("nan"))  # step 5's loss, from step 4's weights
    good, suspect = steps.checkpoint.settle(loss_finite=False)
    assert good["step"] == 2 and suspect is None
    assert steps.state()["step"] == 2 and steps.files() == ["ckpt-000000002.weights.h5"]
    resumed = _Steps(tmp_path, every=2)  # a rerun resumes from step 2's weights
    assert flow_callbacks.Checkpoint.restore(_compiled_tiny_glow(), tmp_path)["step"] == 2
    assert resumed.checkpoint.confirmed


def test_a_non_finite_weight_confirms_the_checkpoint_and_a_first_one_is_suspect(tmp_path):
    steps = _Steps(tmp_path / "weights", every=2)
    steps.run(1.0, 1.0)
    good, suspect = steps.checkpoint.settle(loss_finite=True)  # the loss of step 3 was finite
    assert good["step"] == 2 and suspect is None and steps.state()["confirmed"]
    steps = _Steps(tmp_path / "first", every=2)
    steps.run(1.0, 1.0, float("nan"))
    good, suspect = steps.checkpoint.settle(loss_finite=False)
    assert good is None and suspect["step"] == 2 and steps.state()["step"] == 2


def test_an_unconfirmed_checkpoint_stays_unconfirmed_across_a_resume(tmp_path):
    """Ctrl-C saves the weights of the current step in its batch end: that batch end's finite
    loss does not confirm them, nor does a restart; the fallback survives in state.json."""
    steps = _Steps(tmp_path, every=2)
    steps.run(1.0, 1.0, 1.0)  # 2 saved and confirmed
    steps.counter.on_train_batch_end(steps.counter.step)
    steps.checkpoint.save()  # Ctrl-C at step 4, before the checkpoint's own batch end
    steps.checkpoint.on_train_batch_end(3, {"loss": 1.0})
    assert steps.state()["step"] == 4 and not steps.state()["confirmed"]
    resumed = _Steps(tmp_path, every=2, initial_step=4)
    assert resumed.checkpoint.fallback["step"] == 2
    good, _ = resumed.checkpoint.settle(loss_finite=False)  # step 5's loss was not finite
    assert good["step"] == 2


@pytest.mark.slow
def test_diverging_training_says_which_checkpoint_to_continue_from(tmp_path, capsys):
    """The loss of step 2 is computed from the weights saved at step 1: the message must not
    offer that checkpoint, and the rerun it advises trains."""
    out = tmp_path / "run"
    args = [*TINY, "--warmup", "0", "--checkpoint-every", "1", "--steps-per-epoch", "20",
            "--epochs", "1", "--out", str(out)]
    code, err = _cli([*args, "--lr", "1e6"], capsys)
    assert code == 3 and err.count("\n") == 1, err
    assert err.startswith("error: Non-finite loss") and "at training step 2" in err
    assert "/step_0_0/" in err and "--lr" in err
    assert "The only checkpoint (step 1)" in err and "--overwrite" in err, err
    state = json.loads((out / "checkpoints" / "state.json").read_text())
    assert state["step"] == 1 and not state["confirmed"] and not (out / "metrics.json").exists()
    code, err = _cli([*args, "--lr", "1e-3", "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((out / "metrics.json").read_text())["steps"] == 20


# --- interruptions -------------------------------------------------------------------------

def test_atomic_writes_sync_then_rename_and_leave_nothing_on_failure(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    target = tmp_path / "metrics.json"
    files.write_json(target, {"a": 1})
    assert len(synced) >= 1 and json.loads(target.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with files.atomic_path(target) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]
    (tmp_path / ".ckpt-1.tmp-99.weights.h5").write_bytes(b"half")
    (tmp_path / ".export.partial-abc" / "export").mkdir(parents=True)
    files.remove_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def _start(args):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_step(process, state_file, minimum, seen, timeout=240):
    """Polls the checkpoint state until its step reaches `minimum`; records the steps seen."""
    deadline = time.monotonic() + timeout
    while True:
        if state_file.exists():
            step = json.loads(state_file.read_text())["step"]
            if not seen or seen[-1] != step:
                seen.append(step)
            if step >= minimum:
                return step
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no checkpoint at step {minimum} in {timeout} s"
        time.sleep(0.02)


@pytest.mark.subprocess
@pytest.mark.slow
def test_sigkill_then_ctrl_c_lose_at_most_the_steps_since_the_last_checkpoint(tmp_path):
    """One run: SIGKILL mid-epoch, resume, Ctrl-C, resume to the end, all with one command."""
    out, every, total = tmp_path / "run", 5, 200
    args = [*TINY, "--steps-per-epoch", str(total), "--epochs", "1", "--checkpoint-every",
            str(every), "--validation-fraction", "0", "--out", str(out)]
    state_file = out / "checkpoints" / "state.json"

    process, seen = _start(args), []
    try:
        _wait_for_step(process, state_file, 2 * every, seen)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    killed_at = json.loads(state_file.read_text())["step"]
    # Checkpoints every `every` steps: a kill loses the steps since the last one, < `every`.
    assert all(step % every == 0 for step in seen) and killed_at % every == 0
    assert not (out / "metrics.json").exists()
    names = sorted(p.name for p in (out / "checkpoints").glob("ckpt-*"))
    assert names[-1] == f"ckpt-{killed_at:09d}.weights.h5"  # an older one may wait deletion

    process = _start(args)
    try:
        _wait_for_step(process, state_file, killed_at + every, [])
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert f"Resumed from checkpoint at step {killed_at} of {total}" in stdout
    assert process.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    interrupted_at = json.loads(state_file.read_text())["step"]
    assert interrupted_at > killed_at
    last_line = stderr.strip().splitlines()[-1]
    assert f"Interrupted at step {interrupted_at}" in last_line and "same command" in last_line
    assert str(out / "checkpoints") in last_line

    result = subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT,
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Resumed from checkpoint at step {interrupted_at} of {total}" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] == interrupted_at
    assert metrics["steps"] == total and metrics["optimizer_steps"] == total
    assert not list(out.rglob(".*tmp-*")) and not list(out.glob(".*partial-*"))

"""train.py and keras_flow.training: outputs, CLI errors, the optimiser, resuming a killed run."""

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_flow import callbacks as flow_callbacks
from keras_flow import optimizers
from keras_flow import training
from keras_flow.kernels import fused_updates
from keras_flow.training.assembly import Plan
from keras_flow.optimizers import FusedAdam
from keras_flow.optimizers import GlowAdamax
from keras_flow.optimizers import LinearWarmup
from keras_flow.optimizers import make_optimizer
from tests.scripts import load_script

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--levels", "1", "--depth", "1", "--hidden-width", "8", "--init-batch-size", "64",
        "--num-samples", "4"]
OUTPUTS = ["config.json", "checkpoints/state.json", "model.keras", "metrics.json",
           "history.json", "bits_per_dim.png", "best.json", "best.weights.npz",
           "samples_T0.7.png", "samples/epoch_0001_T0.png", "samples/epoch_0001_T1.png",
           "export/saved_model.pb"]


def _run_cli(args, timeout=240):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


# --- optimiser -----------------------------------------------------------------------------

def _reference_adamax(w, grads, lr, beta_1, beta_2, epsilon=1e-8):
    """openai/glow optim.py adamax, in NumPy."""
    m1, m2 = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m1 = beta_1 * m1 + (1 - beta_1) * g
        m2 = np.maximum(beta_2 * m2, np.abs(g))
        lr_t = lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t)
        w = w - lr_t * m1 / (m2 + epsilon)
    return w


def _reference_adam(w, grads, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Kingma & Ba's Adam (Keras's epsilon placement), in NumPy."""
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g ** 2
        w = w - lr * np.sqrt(1 - beta_2 ** t) / (1 - beta_1 ** t) * m / (np.sqrt(v) + epsilon)
    return w


@pytest.mark.parametrize("fused", [True, False], ids=["fused-kernel", "keras-ops"])
@pytest.mark.parametrize("traced", [False, True], ids=["eager", "tf.function"])
@pytest.mark.parametrize("name", ["adamax", "adam"])
def test_optimizers_match_their_reference_updates(name, traced, fused, monkeypatch):
    """Both update paths (TensorFlow's fused kernel and the backend-neutral ops) follow the
    reference formulas, eagerly and traced."""
    decisions = []
    applies = fused_updates.applies if fused else (lambda *args: False)
    monkeypatch.setattr(fused_updates, "applies",
                        lambda *args: decisions.append(applies(*args)) or decisions[-1])
    rng = np.random.default_rng(0)
    w0 = rng.normal(size=(3, 4)).astype("float32")
    grads = [rng.normal(size=(3, 4)).astype("float32") for _ in range(3)]
    variable = keras.Variable(w0)
    if name == "adamax":
        optimizer = GlowAdamax(learning_rate=0.01, beta_2=0.95)
        expected = _reference_adamax(w0.astype("float64"), grads, 0.01, 0.9, 0.95)
    else:
        optimizer = FusedAdam(learning_rate=0.01, beta_2=0.95)
        expected = _reference_adam(w0.astype("float64"), grads, 0.01, beta_2=0.95)

    def apply(g):
        optimizer.apply_gradients([(g, variable)])

    if traced:
        import tensorflow as tf
        apply = tf.function(apply)
    for g in grads:
        apply(keras.ops.convert_to_tensor(g))
    np.testing.assert_allclose(variable.numpy(), expected, rtol=1e-5, atol=1e-6)
    assert int(optimizer.iterations.numpy()) == len(grads)
    assert decisions and set(decisions) == {fused}


def test_warmup_schedule_values_and_config_round_trip():
    schedule = LinearWarmup(1e-3, warmup_steps=4)
    values = [float(schedule(step)) for step in range(6)]
    np.testing.assert_allclose(values, [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3], rtol=1e-6)
    assert float(LinearWarmup(1e-3, 0)(0)) == pytest.approx(1e-3)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(
        make_optimizer("adamax", 2e-3, warmup_steps=10, steps_per_epoch=50, clip_norm=5.0)))
    assert isinstance(restored, GlowAdamax)
    assert restored.beta_2 == pytest.approx(1 - 1 / 50)
    assert restored.global_clipnorm == 5.0
    assert float(restored.learning_rate) == pytest.approx(2e-3 / 10)
    assert isinstance(keras.optimizers.deserialize(keras.optimizers.serialize(
        make_optimizer("adam"))), FusedAdam)


def test_cosine_decay_after_the_warm_up():
    schedule = optimizers.learning_rate_schedule(1e-3, warmup_steps=4, decay_steps=10)
    values = [float(schedule(step)) for step in (0, 2, 4, 9, 14, 20)]
    np.testing.assert_allclose(values, [0.0, 5e-4, 1e-3, 5e-4, 0.0, 0.0], atol=1e-9)
    no_warmup = optimizers.learning_rate_schedule(1e-3, decay_steps=10)
    np.testing.assert_allclose([float(no_warmup(s)) for s in (0, 5, 10)], [1e-3, 5e-4, 0.0],
                               atol=1e-9)
    assert isinstance(optimizers.learning_rate_schedule(1e-3, 4), LinearWarmup)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(
        make_optimizer("adam", 1e-3, warmup_steps=4, decay_steps=10)))
    assert float(restored.learning_rate) == pytest.approx(0.0)  # step 0 of the warm-up
    with pytest.raises(ValueError, match="decay_steps"):
        make_optimizer("adam", decay_steps=-1)


def test_optimizer_options_are_checked():
    with pytest.raises(ValueError, match="Unknown optimizer"):
        make_optimizer("sgd")
    with pytest.raises(ValueError, match="ema"):
        make_optimizer("adam", ema=1.5)
    with pytest.raises(ValueError, match="beta_2"):
        make_optimizer("adamax", beta_2=0.0)


@pytest.mark.parametrize("name, steps_per_epoch, beta_2, expected", [
    ("adam", None, None, 0.999), ("adam", 50, 0.99, 0.99),
    ("adamax", 50, None, 1 - 1 / 50), ("adamax", 50, 0.95, 0.95)])
def test_beta_2_overrides_the_optimizers_default(name, steps_per_epoch, beta_2, expected):
    optimizer = make_optimizer(name, steps_per_epoch=steps_per_epoch, beta_2=beta_2)
    assert optimizer.beta_2 == pytest.approx(expected)


@pytest.mark.parametrize("optimizer", ["adam", "adamax"])
def test_fit_builds_the_optimizer_first_and_traces_the_step_once(optimizer):
    """Keras (TensorFlow, no strategy) would create the optimizer's variables inside the first
    trace, and so trace the training step twice; the `BuildOptimizer` callback builds them
    first, over every trainable weight, and the step is traced once."""
    from keras_flow.models.glow import Glow
    from keras_flow.optimizers import BuildOptimizer
    from tests.models.model_checks import perturbed_model
    from tests.flow_checks import preprocessed_images

    model = perturbed_model(lambda: Glow(levels=2, depth=2, hidden_width=8,
                                         image_shape=(4, 4, 1)), (16, 4, 4, 1), scale=0.05)
    model.compile(optimizer=make_optimizer(optimizer, 1e-3))
    assert not model.optimizer.built
    traces = []
    train_step = model.train_step
    model.train_step = lambda *args: traces.append(1) or train_step(*args)
    x = preprocessed_images((16, 4, 4, 1), seed=4)
    model.fit(x, batch_size=8, epochs=2, verbose=0, callbacks=[BuildOptimizer()])
    assert model.optimizer.built and len(traces) == 1
    assert model.optimizer.iterations.numpy() == 4


def test_keep_training_weights_undoes_fits_copy_of_the_averages():
    """`fit` ends by copying the EMA averages into the model; with `KeepTrainingWeights` the
    training weights stay, and the averages are still the optimizer's."""
    from keras_flow import Glow
    from keras_flow.callbacks import KeepTrainingWeights
    from keras_flow.callbacks import ema_weights
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 16, size=(16, 4, 4, 1)) / 16.0 - 0.5).astype("float32")
    ends = {}
    for keep in (False, True):
        keras.utils.set_random_seed(0)
        model = Glow(levels=1, depth=1, hidden_width=4, num_bins=16, image_shape=(4, 4, 1))
        model.initialize(x)
        model.compile(optimizer=make_optimizer("adam", 1e-2, ema=0.5))
        last = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: ends.update(
            {keep: [w.numpy() for w in model.trainable_variables]}))
        model.fit(x, batch_size=8, epochs=2, verbose=0, shuffle=False,
                  callbacks=[KeepTrainingWeights()] * keep + [last])
        weights = [w.numpy() for w in model.trainable_variables]
        with ema_weights(model):
            averages = [w.numpy() for w in model.trainable_variables]
        moved = max(float(np.abs(a - b).max()) for a, b in zip(weights, ends[keep]))
        if keep:
            assert moved == 0.0
        else:
            assert moved > 0 and all(np.array_equal(a, b) for a, b in zip(weights, averages))


def test_sample_grids_trace_their_decoding_once_and_draw_what_eager_decoding_draws(tmp_path):
    """`SampleGrids` decodes through one traced function for every epoch, and each grid is
    the eager `write_sample_grids` of the weights at that epoch's end (pixels within one
    level: the traced and the eager graph may round differently)."""
    from keras_flow import Glow
    from keras_flow.callbacks import SampleGrids
    from keras_flow.callbacks import write_sample_grids
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 16, size=(16, 8, 8, 1)) / 16.0 - 0.5).astype("float32")
    keras.utils.set_random_seed(0)
    model = Glow(levels=2, depth=2, hidden_width=8, num_bins=16, image_shape=(8, 8, 1))
    model.initialize(x)
    model.compile(optimizer=make_optimizer("adam", 1e-2))
    grids = SampleGrids(tmp_path / "traced", (0.0, 0.7), n_bits=4, num_samples=4, seed=3)
    eager = {}
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: eager.update(
        {epoch: write_sample_grids(model, tmp_path / "eager", (0.0, 0.7), 4, 4, 3)}))
    model.fit(x, batch_size=8, epochs=3, verbose=0, shuffle=False, callbacks=[grids, record])

    assert grids._decode.experimental_get_tracing_count() == 1
    from PIL import Image
    for epoch in range(3):
        for temperature in (0.0, 0.7):
            path = tmp_path / "traced" / f"epoch_{epoch + 1:04d}_T{temperature:g}.png"
            traced = np.asarray(Image.open(path)).astype(int)
            difference = np.abs(traced - eager[epoch][temperature][..., 0].astype(int))
            assert difference.max() <= 17  # one 4-bit level, in 8-bit pixels
            assert difference.mean() < 0.5
    assert not np.array_equal(eager[0][0.7], eager[2][0.7])  # the grids follow the weights


def test_budget_decay_follows_the_clock_and_reaches_zero_when_time_is_up():
    """`BudgetCosineDecay` + `SpendBudget`: the traced training step reads the share of the
    budget that the callback sets, and a spent budget means a learning rate of 0."""
    import tensorflow as tf
    from keras_flow import Glow
    from keras_flow.callbacks import SpendBudget
    schedule = optimizers.BudgetCosineDecay(1e-3, warmup_steps=2)
    for spent, expected in ((0.0, 1e-3), (0.5, 5e-4), (1.0, 0.0), (3.0, 0.0)):
        schedule.spent.assign(spent)
        assert float(schedule(5)) == pytest.approx(expected, abs=1e-9)
    assert float(schedule(0)) == 0.0  # spent = 3 is clipped to 1
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(
        make_optimizer("adam", 1e-3, warmup_steps=2, budget_decay=True)))
    assert isinstance(optimizers.learning_rate_schedule_of(restored),
                      optimizers.BudgetCosineDecay)
    with pytest.raises(ValueError, match="one decay"):
        make_optimizer("adam", decay_steps=10, budget_decay=True)

    rng = np.random.default_rng(0)
    x = (rng.integers(0, 16, size=(32, 4, 4, 1)) / 16.0 - 0.5).astype("float32")
    keras.utils.set_random_seed(0)
    model = Glow(levels=1, depth=1, hidden_width=4, num_bins=16, image_shape=(4, 4, 1))
    model.initialize(x)
    model.compile(optimizer=make_optimizer("adam", 1e-2, budget_decay=True))
    seconds = iter([0.0, 5.0, 10.0, 10.0])  # the clock at each step's start; budget 10 s
    weights = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: weights.append(
        np.concatenate([np.ravel(w) for w in model.get_weights()])))
    model.fit(tf.data.Dataset.from_tensor_slices(x).batch(8), epochs=1, verbose=0,
              callbacks=[SpendBudget(10.0, lambda: next(seconds)), record], shuffle=False)
    moved = [float(np.abs(b - a).max()) for a, b in zip(weights, weights[1:])]
    assert moved[0] > 1e-4 and moved[1] == 0.0 and moved[2] == 0.0
    with pytest.raises(ValueError, match="max_seconds"):
        SpendBudget(math.inf, time.monotonic)
    constant = SpendBudget(10.0, time.monotonic)
    constant.set_model(types.SimpleNamespace(optimizer=make_optimizer("adam", 1e-3)))
    with pytest.raises(ValueError, match="budget_decay=True"):
        constant.on_train_begin()


# --- configuration -------------------------------------------------------------------------

def test_resolve_config_fills_preset_then_defaults():
    config = training.resolve_config(training.TrainConfig(depth=2))
    assert config.preset == "digits" and config.depth == 2 and config.levels == 2
    assert config.lr > 0 and config.batch_size > 0 and config.n_bits == 4  # the preset's
    assert training.resolve_config(training.TrainConfig(n_bits=8)).n_bits == 8  # flag wins
    assert training.resolve_config(training.TrainConfig(dataset="mnist")).preset == "none"


def test_parse_warmup_steps_and_epochs():
    assert training.parse_warmup("300", 20) == 300
    assert training.parse_warmup("2.5epochs", 20) == 50
    assert training.parse_warmup("1ep", 7) == 7
    with pytest.raises(ValueError, match="warmup"):
        training.parse_warmup("soon", 20)


def test_finished_or_different_output_folder_is_refused(tmp_path):
    config = training.resolve_config(training.TrainConfig(out=str(tmp_path)))
    (tmp_path / "config.json").write_text(json.dumps({"lr": 123.0}))
    with pytest.raises(ValueError, match="different configuration"):
        training.output_folder(config)
    (tmp_path / "metrics.json").write_text("{}")
    with pytest.raises(ValueError, match="finished run"):
        training.output_folder(config)


# --- CLI -----------------------------------------------------------------------------------

def test_help_documents_every_option(capsys):
    cli = load_script("train.py")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for field in training.TrainConfig.__dataclass_fields__:
        assert "--" + field.replace("_", "-") in text


@pytest.mark.parametrize("args, keyword", [
    (["--model", "flowformer"], "invalid choice"),
    (["--epochs", "many"], "invalid int"),
    (["--levels", "0"], "levels must be a positive integer"),
    (["--warmup", "soon"], "warmup must be"),
    (["--preset", "imagenet1024"], "Unknown glow preset"),
    (["--lr-decay-steps", "-1"], "lr_decay_steps must be >= 0"),
    (["--beta-2", "1"], "beta_2 must be in (0, 1)"),
    (["--budget-decay"], "give --max-seconds"),
    (["--batch-shards", "-1"], "batch_shards must be >= 0"),
    (["--steps-per-execution", "0"], "steps_per_execution must be a positive integer"),
])
def test_bad_flags_give_one_line_error_and_exit_2(args, keyword, capsys):
    cli = load_script("train.py")
    try:
        code = cli.main(args)
    except SystemExit as exit_info:
        code = exit_info.code
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and keyword in err and err.count("\n") == 1


@pytest.mark.subprocess
def test_bad_data_fails_in_a_real_process_without_traceback(tmp_path):
    result = _run_cli(["--dataset", f"folder:{tmp_path / 'missing'}", "--out",
                       str(tmp_path / "run")], timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: Image folder not found")
    assert "Traceback" not in result.stderr


@pytest.mark.subprocess
@pytest.mark.slow
def test_two_step_run_writes_every_output(tmp_path):
    out = tmp_path / "run"
    result = _run_cli([*TINY, "--steps-per-epoch", "2", "--epochs", "1", "--ema", "0.9",
                       "--clip-norm", "10", "--max-seconds", "600", "--budget-decay",
                       "--batch-shards", "2", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Test bits/dim" in result.stdout
    missing = [name for name in OUTPUTS if not (out / name).exists()]
    assert not missing, missing
    assert list((out / "tensorboard").glob("*/events.out.tfevents.*"))
    assert not list(out.rglob(".*tmp-*")), "temporary files left behind"
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("test_bits_per_dim", "train_bits_per_dim", "validation_bits_per_dim"):
        assert 0 < metrics[key] < 16
    assert metrics["steps"] == 2 and metrics["epochs"] == 1 and not metrics["resumed"]
    assert metrics["seconds"] > 0
    model = keras.models.load_model(out / "model.keras")
    assert model.optimizer.use_ema and model.image_shape == (8, 8, 1)
    assert model.batch_shards == 2
    assert json.loads((out / "config.json").read_text())["batch_shards"] == 2


@pytest.mark.subprocess
@pytest.mark.slow
def test_mirrored_run_on_two_cpu_devices_with_remat(tmp_path):
    out = tmp_path / "run"
    result = _run_cli([*TINY, "--strategy", "mirrored", "--cpu-devices", "2", "--remat",
                       "--batch-size", "16", "--steps-per-epoch", "2", "--epochs", "1",
                       "--temperatures", "0.7", "--out", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "batch 16 over 2 replicas, 8 each" in result.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 2 and 0 < metrics["test_bits_per_dim"] < 16
    assert keras.models.load_model(out / "model.keras").remat


def test_automatic_batch_shards_need_threads_that_can_still_be_set():
    """In this process TensorFlow has started, so auto (0) leaves one shard; with another
    strategy than the default, auto is one shard too; an explicit count is kept."""
    tf.constant(0.0)
    assert training.start_threads(training.TrainConfig(strategy="mirrored")) == 1
    if (tf.config.threading.get_intra_op_parallelism_threads(),
            tf.config.threading.get_inter_op_parallelism_threads()) != (1, 2):
        assert training.start_threads(training.TrainConfig()) == 1
        with pytest.warns(UserWarning, match="threads cannot be set"):
            assert training.start_threads(training.TrainConfig(batch_shards=2)) == 2


def _tiny_config(out, **overrides):
    return training.TrainConfig(**{**dict(
        levels=1, depth=1, hidden_width=8, init_batch_size=64, num_samples=4,
        temperatures=(0.7,), steps_per_epoch=4, epochs=2, out=str(out), verbose=0),
        **overrides})


def test_several_steps_per_call_train_the_same_steps(tmp_path):
    """`steps_per_execution=2` runs the same 8 steps as 1 (the same metrics, to the bit), in
    calls of two steps that the step counter follows."""
    one = training.train(_tiny_config(tmp_path / "one"))
    two = training.train(_tiny_config(tmp_path / "two", steps_per_execution=2))
    for key in ("test_bits_per_dim", "validation_bits_per_dim", "train_bits_per_dim",
                "steps", "optimizer_steps", "epochs"):
        assert two[key] == one[key], key
    assert two["steps"] == two["optimizer_steps"] == 8
    state = json.loads((tmp_path / "two" / "checkpoints" / "state.json").read_text())
    assert state["step"] == 8 and state["finished"]


def test_counter_and_checkpoints_follow_calls_of_several_steps(monkeypatch):
    """Keras runs the batch callbacks once per call, with the index of its last step: the
    counter follows the index, and a checkpoint is saved in each call that passes a multiple
    of `every`."""
    counter = flow_callbacks.StepCounter(initial_step=6)
    checkpoint = flow_callbacks.Checkpoint("unused", counter, every=6, total_steps=100)
    saved = []
    monkeypatch.setattr(checkpoint, "save", lambda finished=False: saved.append(counter.step))
    counter.on_epoch_begin(1)
    for last_index in (3, 7, 11, 15, 19):  # calls of 4 steps: steps 7-10, ..., 23-26
        counter.on_train_batch_end(last_index)
        checkpoint.on_train_batch_end(last_index)
    assert counter.step == 26
    assert saved == [14, 18, 26]  # passed 12, 18 and 24


def test_steps_per_execution_must_divide_every_fit_call():
    config = training.resolve_config(training.TrainConfig(steps_per_execution=8))
    plan = Plan(config, Path("unused"), steps_per_epoch=100, warmup_steps=0)
    with pytest.raises(ValueError, match=r"divide the steps per epoch \(100\).*1, 2, 4, 5"):
        training.check_steps_per_execution(plan, None)
    plan = Plan(dataclasses.replace(config, steps_per_execution=4), Path("unused"),
                          steps_per_epoch=100, warmup_steps=0)
    training.check_steps_per_execution(plan, {"step": 208})  # 92 left in the epoch
    with pytest.raises(ValueError, match=r"resumes 37 steps into an epoch.*63 steps left"):
        training.check_steps_per_execution(plan, {"step": 237})
    for strategy in ("mirrored", "multi-worker"):  # Keras's loop fails under mirrored
        with pytest.raises(ValueError, match=f"--strategy {strategy}: .*keras#19246"):
            training.resolve_config(training.TrainConfig(steps_per_execution=2, out="x",
                                                         strategy=strategy))


def test_cpu_devices_need_the_mirrored_strategy():
    with pytest.raises(ValueError, match="cpu_devices splits the CPU"):
        training.resolve_config(training.TrainConfig(cpu_devices=2))
    with pytest.raises(ValueError, match="Glow options"):
        training.resolve_config(training.TrainConfig(model="realnvp", remat=True))


# A run killed with SIGKILL, then Ctrl-C, resumes with the step count continuing:
# tests/test_reliability.py::test_sigkill_then_ctrl_c_lose_at_most_the_steps_since_the_last_checkpoint


def test_a_config_json_of_0_1_0_without_the_newer_options_still_resumes():
    """A run folder written by keras_flow 0.1.0 has no `augment` in its config.json: it meant
    no augmentation, so the same run resumes, and one that now asks for augmentation does not."""
    from keras_flow.training.run_folder import _config_differences

    config = training.resolve_config(training.TrainConfig(out="runs/x", epochs=1))
    saved = {key: value for key, value in dataclasses.asdict(config).items() if key != "augment"}
    saved["temperatures"] = list(saved["temperatures"])
    assert config.augment == "none" and _config_differences(saved, config) == []
    flipped = dataclasses.replace(config, augment="flip")
    assert _config_differences(saved, flipped) == ["augment"]

"""keras_flow.distribute, training under tf.distribute, and Glow's remat option.

The strategy tests run in fresh processes (tests/distribute_worker.py): logical CPU devices
must be configured before TensorFlow initialises, and each multi-worker worker is a process.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_flow
from keras_flow import distribute
from keras_flow.layers.flow_step import FlowStep
from tests.flow_checks import perturb_weights
from tests.flow_checks import preprocessed_images
from tests.scripts import load_script

# one test process for the module (pytest-xdist): its module fixtures are built once
pytestmark = pytest.mark.xdist_group("distribute")

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distribute_worker.py"
ROUND_TIMEOUT = 240


# --- strategies by name ----------------------------------------------------------------------

def test_make_strategy_default_and_unknown():
    assert distribute.make_strategy("default") is tf.distribute.get_strategy()
    with pytest.raises(ValueError, match="Unknown strategy 'horovod'"):
        distribute.make_strategy("horovod")


@pytest.mark.parametrize("tf_config, problem", [
    (None, "TF_CONFIG is not set"),
    ("{not json", "malformed"),
    ('{"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 3}}',
     "outside the 1 workers"),
])
def test_multi_worker_needs_tf_config(monkeypatch, tf_config, problem):
    if tf_config is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", tf_config)
    with pytest.raises(ValueError, match=problem) as error:
        distribute.make_strategy("multi-worker")
    assert '"cluster": {"worker"' in str(error.value)


def test_tpu_strategy_without_tpu_says_so(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.setattr(distribute, "_local_tpu_present", lambda: False)
    with pytest.raises(ValueError, match="found no TPU"):
        distribute.make_strategy("tpu")


def test_split_cpu_after_initialisation_explains():
    tf.constant(0.0)  # TensorFlow's devices are initialised from here on
    with pytest.raises(RuntimeError, match="before TensorFlow initialises its devices"):
        distribute.split_cpu(len(tf.config.list_logical_devices("CPU")) + 1)


# --- MirroredStrategy on 2 logical CPUs vs one device -----------------------------------------

def run_worker(args, timeout=ROUND_TIMEOUT, env=None):
    result = subprocess.run([sys.executable, str(WORKER)] + args, cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]


@pytest.mark.slow
@pytest.mark.subprocess
def test_mirrored_two_replicas_match_one_device(tmp_path):
    out = tmp_path / "mirrored.json"
    run_worker(["mirrored", str(out)])
    report = json.loads(out.read_text())
    assert report["replicas"] == 2
    # Actnorm's initialisation in the cross-replica context: the same on both replicas, and
    # the same as on one device; in a replica context, and fit while uninitialised, raise.
    assert report["init_replica_spread"] == 0.0
    assert report["init_vs_single"] < 1e-6
    assert "inside strategy.scope()" in report["initialize_error"]
    assert "model.initialize(batch)" in report["fit_error"]
    # Same global batch: the same loss (Keras's 1/replicas scaling of add_loss undone), the
    # same updates, and identical replicas.
    np.testing.assert_allclose(report["mirrored_losses"], report["single_losses"], rtol=1e-6)
    assert report["weights_vs_single"] < 1e-6
    assert report["replica_spread"] == 0.0
    # A checkpoint written under 2 replicas resumes on 1: same state, same next step.
    assert report["resumed_state_vs_saved"] == 0.0
    np.testing.assert_allclose(report["resumed_loss"], report["mirrored_next_loss"], rtol=1e-6)
    assert report["resumed_vs_mirrored"] < 1e-6


# --- MultiWorkerMirroredStrategy: two processes on loopback, killed and resumed ---------------

def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start_cluster(folder, name, command):
    """Starts `command(index)` as both workers of a fresh 2-worker loopback cluster, each with
    its `TF_CONFIG` and its log `<folder>/<name>-<index>.log`; returns the processes."""
    ports = free_ports(2)
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": [f"127.0.0.1:{port}" for port in ports]},
                     "task": {"type": "worker", "index": index}}
        log = open(folder / f"{name}-{index}.log", "w")
        processes.append(subprocess.Popen(
            command(index), cwd=ROOT, env=dict(os.environ, TF_CONFIG=json.dumps(tf_config)),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
    return processes


def start_workers(folder, name, args):
    """Starts tests/distribute_worker.py on both workers; returns `(processes, outputs)`."""
    outputs = [folder / f"{name}-{index}.json" for index in range(2)]
    processes = start_cluster(folder, name, lambda index: [
        sys.executable, str(WORKER), "multi-worker", str(outputs[index]),
        "--backup", str(folder / "backup"), *args])
    return processes, outputs


def kill(processes):
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def logs(folder, name):
    return "\n".join((folder / f"{name}-{i}.log").read_text()[-3000:] for i in range(2))


def wait_all(processes, folder, name):
    """Waits for every worker (failing the test after `ROUND_TIMEOUT`); their exit codes."""
    try:
        for process in processes:
            process.wait(timeout=ROUND_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"workers did not finish (one stopped alone?):\n{logs(folder, name)}")
    finally:
        kill(processes)
    return [process.returncode for process in processes]


def wait_for_checkpoint(processes, metadata, epoch, folder):
    deadline = time.monotonic() + ROUND_TIMEOUT
    while time.monotonic() < deadline:
        if metadata.exists() and json.loads(metadata.read_text() or "{}").get("epoch", 0) >= epoch:
            return
        if any(process.poll() is not None for process in processes):
            pytest.fail("a worker exited before its checkpoint:\n" + logs(folder, "first"))
        time.sleep(0.5)
    pytest.fail("no checkpoint in time:\n" + logs(folder, "first"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_multi_worker_trains_in_sync_and_resumes_after_kill(tmp_path):
    """Two workers train with keras_flow's BackupAndRestore (one step per epoch), are killed
    with SIGKILL after the checkpoint of epoch 2, and restarted: they continue from epoch 2
    (the optimizer's step count included) and end with identical weights."""
    processes, _ = start_workers(tmp_path, "first", ["--epochs", "4", "--stall-after", "2"])
    try:
        wait_for_checkpoint(processes, tmp_path / "backup" / "training_metadata.json", 2,
                            tmp_path)
    finally:
        kill(processes)
    assert (tmp_path / "backup.worker-1" / "latest.weights.h5").exists()  # not the chief's
    processes, outputs = start_workers(tmp_path, "second", ["--epochs", "4"])
    assert wait_all(processes, tmp_path, "second") == [0, 0], logs(tmp_path, "second")
    chief, worker = (json.loads(out.read_text()) for out in outputs)
    assert (chief["chief"], worker["chief"]) == (True, False)
    for report in (chief, worker):
        assert report["epochs_run"] == [2, 3]
        assert report["iterations"] == 4
    for a, b in zip(chief["weights"], worker["weights"]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# --- train.py under MultiWorkerMirroredStrategy -------------------------------------------------

TRAIN_FLAGS = ["--strategy", "multi-worker", "--levels", "1", "--depth", "1", "--hidden-width",
               "8", "--batch-size", "16", "--init-batch-size", "64", "--num-samples", "4",
               "--temperatures", "0.7", "--steps-per-epoch", "4", "--checkpoint-every", "1",
               "--verbose", "0"]


def start_train_workers(folder, name, flags):
    """Starts `train.py` on both workers of a fresh 2-worker cluster; returns the processes."""
    return start_cluster(folder, name, lambda index: [
        sys.executable, str(ROOT / "train.py"), *TRAIN_FLAGS, *flags])


def test_multi_worker_train_needs_out():
    with pytest.raises(ValueError, match="multi-worker needs --out"):
        keras_flow.training.resolve_config(keras_flow.training.TrainConfig(
            strategy="multi-worker"))


@pytest.mark.slow
@pytest.mark.subprocess
def test_train_py_multi_worker_interrupt_resume_and_time_limit(tmp_path):
    """Two `train.py --strategy multi-worker` processes share `--out`: the chief writes it, the
    other worker `<out>.worker-1`. Ctrl-C on the non-chief alone stops both at the same step
    with a checkpoint (no hang); rerun, both resume from the chief's checkpoint and stop
    together at the time limit, although their clocks differ; their weights are identical."""
    out = tmp_path / "run"
    first = start_train_workers(tmp_path, "first", ["--epochs", "200", "--out", str(out)])
    state_file = out / "checkpoints" / "state.json"
    try:
        deadline = time.monotonic() + ROUND_TIMEOUT
        while not (state_file.exists() and json.loads(state_file.read_text())["step"] >= 2):
            assert all(p.poll() is None for p in first), logs(tmp_path, "first")
            assert time.monotonic() < deadline, "no checkpoint in time:\n" + logs(tmp_path, "first")
            time.sleep(0.1)
        first[1].send_signal(signal.SIGINT)  # the non-chief only
    except BaseException:
        kill(first)
        raise
    assert wait_all(first, tmp_path, "first") == [130, 130], logs(tmp_path, "first")
    interrupted = json.loads(state_file.read_text())["step"]
    worker_state = json.loads((tmp_path / "run.worker-1" / "checkpoints" / "state.json")
                              .read_text())
    assert worker_state["step"] == interrupted >= 2 and not (out / "metrics.json").exists()

    second = start_train_workers(tmp_path, "second", ["--epochs", "200", "--max-seconds", "15",
                                                      "--out", str(out)])
    assert wait_all(second, tmp_path, "second") == [0, 0], logs(tmp_path, "second")
    chief, worker = (json.loads((folder / "metrics.json").read_text())
                     for folder in (out, tmp_path / "run.worker-1"))
    for metrics in (chief, worker):
        assert metrics["resumed_from_step"] == interrupted and metrics["time_limit_reached"]
        assert interrupted < metrics["steps"] < 800
    assert chief["steps"] == worker["steps"]
    assert chief["test_bits_per_dim"] == pytest.approx(worker["test_bits_per_dim"], rel=1e-6)
    models = [keras.models.load_model(folder / "model.keras")
              for folder in (out, tmp_path / "run.worker-1")]
    for a, b in zip(*(model.get_weights() for model in models)):
        np.testing.assert_array_equal(a, b)
    assert (out / "export" / "saved_model.pb").exists()


# --- gradient checkpointing ------------------------------------------------------------------

GLOW = dict(levels=2, depth=2, hidden_width=8, image_shape=(8, 8, 1), seed=1)


@pytest.fixture(scope="module")
def trained_glow():
    """A Glow initialised on data with its weights moved off their initial values."""
    model = keras_flow.Glow(**GLOW)
    model.initialize(preprocessed_images((8, 8, 8, 1), seed=0))
    perturb_weights(model, seed=2, scale=0.05)
    return model


def objective_gradients(model, weights):
    """`(objective, gradients)` of the `add_loss` objective, as `fit` differentiates it."""
    model.set_weights(weights)
    x = preprocessed_images((4, 8, 8, 1), seed=3)
    with tf.GradientTape() as tape:
        model(x, training=True)
        loss = sum(model.losses)
    return float(loss), tape.gradient(loss, model.trainable_variables)


def test_remat_keeps_the_objective_gradients(trained_glow, monkeypatch):
    loss, expected = objective_gradients(trained_glow, trained_glow.get_weights())
    calls = []
    forward = FlowStep._forward
    monkeypatch.setattr(FlowStep, "_forward", lambda self, inputs, **kwargs: calls.append(1)
                        or forward(self, inputs, **kwargs))
    remat = keras_flow.Glow(remat=True, **GLOW)
    remat_loss, gradients = objective_gradients(remat, trained_glow.get_weights())
    assert len(calls) == 2 * GLOW["levels"] * GLOW["depth"]  # every step ran again backwards
    assert remat_loss == pytest.approx(loss, rel=1e-6)
    assert len(gradients) == len(expected)
    for gradient, reference, variable in zip(gradients, expected, remat.trainable_variables):
        assert gradient is not None, variable.path
        np.testing.assert_allclose(gradient, reference, rtol=1e-5, atol=1e-6,
                                   err_msg=variable.path)


def test_remat_scope_loses_the_objective_gradients(trained_glow):
    """Why Glow has its own `remat` option: `keras.RematScope` also wraps the model's `call`,
    where `add_loss` registers the objective, which then reaches no weight (same loss value,
    no gradient: `fit` would silently not train)."""
    loss, _ = objective_gradients(trained_glow, trained_glow.get_weights())
    with keras.RematScope(mode="full"):
        naive = keras_flow.Glow(**GLOW)
    naive_loss, gradients = objective_gradients(naive, trained_glow.get_weights())
    assert naive_loss == pytest.approx(loss, rel=1e-6)
    assert all(gradient is None for gradient in gradients)


def test_remat_is_serialised():
    model = keras_flow.Glow(remat=True, **GLOW)
    assert model.get_config()["remat"] is True
    assert keras_flow.Glow.from_config(model.get_config()).remat is True
    assert keras_flow.Glow(**GLOW).get_config()["remat"] is False


# --- the memory guide's parameter counts -----------------------------------------------------

@pytest.mark.parametrize("model_class, config", [
    (keras_flow.Glow, dict(levels=2, depth=3, hidden_width=16, image_shape=(8, 8, 3))),
    (keras_flow.Glow, dict(levels=3, depth=2, hidden_width=8, image_shape=(16, 16, 1),
                           coupling="additive", num_classes=10)),
    (keras_flow.RealNVP, dict(levels=2, hidden_width=4, residual_blocks=1,
                              image_shape=(8, 8, 3))),
])
def test_memory_guide_counts_parameters_exactly(model_class, config):
    guide = load_script("benchmarks/memory_guide.py")
    total, trainable = guide.parameter_counts(model_class, config)
    model = model_class(**config)
    assert total == model.count_params()
    assert trainable == sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_memory_rules_fill_the_usable_memory_and_no_more():
    rules = load_script("benchmarks/memory_rules.py")
    fixed = rules.fixed_bytes(total=1_000_000, trainable=900_000)
    assert fixed == 4 * 1_000_000 + 12 * 900_000
    assert rules.fixed_bytes(10, 10, ema=True, remat=True) == 4 * 10 + 20 * 10
    device, per_image = 16 * rules.GIB, 45.3 * 2 ** 20
    batch = rules.fitting_batch(device, fixed, per_image)
    assert fixed + batch * per_image <= rules.USABLE * device < fixed + (batch + 1) * per_image
    assert rules.fitting_batch(2 ** 20, fixed, per_image) == 0

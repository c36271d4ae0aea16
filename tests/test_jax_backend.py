"""The backend-neutral core under Keras's JAX backend, in a fresh process (tests/jax_worker.py):
layer exactness checks and a few `fit` steps of a tiny Glow and RealNVP, without TensorFlow."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "jax_worker.py"
# The checks run small programs once each: compile them fast rather than well.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

# one test process for the module (pytest-xdist): its module fixtures are built once
pytestmark = [pytest.mark.xdist_group("jax_backend"), pytest.mark.jax, pytest.mark.subprocess]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("jax") / "report.json"
    env = dict(os.environ, KERAS_BACKEND="jax", XLA_FLAGS=FAST_XLA, JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, str(WORKER), str(out)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def test_runs_on_jax_without_importing_tensorflow(report):
    assert report["backend"] == "jax"
    assert not report["tensorflow_imported"]


def test_layers_are_exact_under_jax(report):
    # check_round_trip / check_log_det assert inside the worker; here: every layer ran.
    assert set(report["layers"]) == {"actnorm", "inv_conv_1x1_lu", "affine_coupling_glow",
                                     "split2d"}
    assert all(r["round_trip_error"] <= 1e-5 for r in report["layers"].values())


@pytest.mark.parametrize("model", ["glow", "realnvp"])
def test_fit_with_the_add_loss_objective_under_jax(report, model):
    history = report["fit"][model]
    losses = history["loss"]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]
    assert history["bits_per_dim"] == pytest.approx(losses, rel=1e-5)


def test_batch_shards_under_jax(report):
    sharded = report["sharded"]
    assert sharded["max_bits_per_dim_difference"] < 1e-5
    assert all(math.isfinite(v) for v in sharded["loss"])
    assert sharded["loss"][-1] < sharded["loss"][0]


def test_pointwise_conv_custom_gradient_under_jax(report):
    result = report["pointwise_conv"]
    assert result["max_gradient"] > 0.1
    assert result["max_gradient_error"] < 1e-5

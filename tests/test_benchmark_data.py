"""The data the time-budget and permutation benchmarks write or read: what a user reproducing
BENCHMARKS.md's tables gets."""

import collections
import json
import time

import numpy as np
import pytest

from keras_flow import data as flow_data
from tests.scripts import load_script


def test_natural_patches_are_grey_32x32_with_test_crops_from_unseen_columns(tmp_path):
    patches = load_script("benchmarks/natural_patches.py")
    patches.main(["--out", str(tmp_path)])
    saved = np.load(tmp_path / "natural32.npz")
    assert saved["x"].shape == (9000, 32, 32, 1) and saved["x_test"].shape == (1000, 32, 32, 1)
    assert saved["x"].dtype == np.uint8 and saved["x"].std() > 20  # photographs, not blanks
    peer = np.load(tmp_path / "peer" / "test.npz")
    assert np.array_equal(peer["x"], saved["x_test"]) and peer["u"].shape == peer["x"].shape
    # every test crop lies in the right quarter: none equals a training crop
    train_rows = {image.tobytes() for image in saved["x"]}
    assert not any(image.tobytes() in train_rows for image in saved["x_test"])
    # and train.py's npz: source reads it
    flow = flow_data.load(f"npz:{tmp_path / 'natural32.npz'}", levels=3, batch_size=64)
    assert flow.image_shape == (32, 32, 1) and flow.num_test == 1000


def test_the_permutation_sweep_resumes_and_summarises_runs_by_seed(tmp_path, monkeypatch):
    """The sweep runs only what is missing, and the summary averages over the seeds."""
    sweep = load_script("benchmarks/permutations_fashion_mnist.py")
    args = sweep.parse_args(["--seeds", "0", "1", "--out", str(tmp_path), "--steps", "20",
                             "--eval-every", "10", "--json", str(tmp_path / "s.json"),
                             "--png", str(tmp_path / "s.png")])
    for seed in (0, 1):
        for coupling in sweep.COUPLINGS:
            for permutation in sweep.PERMUTATIONS:
                history = dict(steps=[10, 20], seconds=[1.0, 2.0], train_bpd=[5.0, 4.0],
                               test_bpd=[5.5, 4.5 + seed], config={}, seed=seed, params=10,
                               seconds_per_step=0.1, train_seconds=2.0, compile_seconds=1.0,
                               final_train_bpd=4.0, final_test_bpd=4.5 + seed,
                               best_test_bpd=4.5 + seed, reconstruction_error=1e-6,
                               full_test_bpd=4.6 + seed)
                sweep.run_file(tmp_path, permutation, coupling, seed).write_text(
                    json.dumps(history))
    started = []
    monkeypatch.setattr(sweep.subprocess, "Popen", lambda *a, **k: started.append(a))
    sweep.run_all(args)
    assert started == []  # every run's file exists: nothing to run
    sweep.summarize(args)
    summary = json.loads((tmp_path / "s.json").read_text())
    assert len(summary["rows"]) == 6 and summary["seeds"] == [0, 1]
    (row,) = [r for r in summary["full_test"] if r["variant"] == "conv1x1 / affine"]
    assert abs(row["bpd"] - 5.1) < 1e-12 and abs(row["std"] - 0.5) < 1e-12
    assert (tmp_path / "s.png").stat().st_size > 10_000


def test_epoch_end_costs_times_each_hook_a_callback_defines():
    """`epoch_end_costs` wraps the hooks a callback class defines itself (not inherited ones),
    records one duration per call, keeps the hook's result and errors, and reports the most
    expensive first."""
    import keras

    costs = load_script("benchmarks/epoch_end_costs.py")

    class Slow(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            time.sleep(0.02)
            return epoch

        def on_train_end(self, logs=None):
            raise RuntimeError("kept")

    totals = collections.defaultdict(list)
    costs.timed_hooks([Slow], totals)
    callback = Slow()
    assert [callback.on_epoch_end(epoch) for epoch in range(3)] == [0, 1, 2]
    with pytest.raises(RuntimeError, match="kept"):
        callback.on_train_end()
    callback.on_train_batch_end(0)  # inherited from Callback: not wrapped
    assert set(totals) == {("Slow", "on_epoch_end"), ("Slow", "on_train_end")}
    assert len(totals["Slow", "on_epoch_end"]) == 3 and min(totals["Slow", "on_epoch_end"]) >= 0.02
    lines = costs.report(totals).splitlines()
    assert lines[0].startswith("Slow") and "on_epoch_end" in lines[0] and "calls      3" in lines[0]

"""benchmarks/gpu_rows.py, the runs of benchmarks/gpu.sh: row selection, the deadline, the
largest-batch search (without a GPU, through a stand-in for throughput.py) and the table."""

import time

import pytest

from tests.scripts import load_script

MIB = 2 ** 20


@pytest.fixture()
def gpu_rows():
    return load_script("benchmarks/gpu_rows.py")


def cifar10_bf16_row(limit_mb=40_000, peak_mb=2_000):
    return {"label": "cifar10", "policy": "mixed_bfloat16", "device_peak_mb": peak_mb,
            "device_limit_mb": limit_mb, "params_all": 10_000_000, "params": 9_000_000}


class StandIn:
    """throughput.py as seen by `largest_batch`: fails above `max_batch` (out of memory)."""

    def __init__(self, max_batch):
        self.max_batch, self.batches = max_batch, []

    def __call__(self, flags):
        batch = int(flags[flags.index("--batch-size") + 1])
        self.batches.append(batch)
        assert flags[flags.index("--mixed-precision") + 1] == "bf16"
        if batch > self.max_batch:
            return {"error": "failed: RESOURCE_EXHAUSTED"}
        return {"train_img_s": 1000.0 + batch, "device_peak_mb": batch * 0.5}


def test_largest_batch_fills_usable_memory_then_halves(gpu_rows):
    rules = load_script("benchmarks/memory_rules.py")
    row = cifar10_bf16_row()
    run = StandIn(max_batch=10**9)
    result = gpu_rows.largest_batch([row], run)
    [guess] = run.batches
    fixed = rules.fixed_bytes(row["params_all"], row["params"])
    per_image = (row["device_peak_mb"] * MIB - fixed) / 64
    assert guess % 64 == 0 and guess > 64
    assert fixed + guess * per_image <= rules.USABLE * row["device_limit_mb"] * MIB
    assert fixed + (guess + 64) * per_image > rules.USABLE * row["device_limit_mb"] * MIB
    assert result == "%d (%.0f img/s, %.0f MiB)" % (guess, 1000.0 + guess, guess * 0.5)

    run = StandIn(max_batch=guess - 1)  # the guess runs out of memory: half of it is tried
    assert gpu_rows.largest_batch([row], run).startswith("%d (" % (guess // 2))
    assert run.batches == [guess, guess // 2]

    run = StandIn(max_batch=0)
    assert gpu_rows.largest_batch([row], run) == (
        "%d failed (failed: RESOURCE_EXHAUSTED)" % (guess // 2))


def test_largest_batch_needs_the_measured_gpu_row(gpu_rows):
    run = StandIn(max_batch=10**9)
    without_limit = dict(cifar10_bf16_row(), device_limit_mb=None)  # a CPU run
    for rows in ([], [without_limit], [dict(cifar10_bf16_row(), policy="float32")]):
        assert gpu_rows.largest_batch(rows, run).startswith("not measured (needs")
    assert run.batches == []


def test_rows_are_selected_by_name_in_their_order(gpu_rows):
    assert gpu_rows.selected_rows(None) == gpu_rows.ROWS
    assert [name for name, _, _ in gpu_rows.selected_rows("largest,W1-f32")] == [
        "W1-f32", "largest"]
    with pytest.raises(SystemExit, match="unknown rows \\['W3'\\]; choose from W1-f32"):
        gpu_rows.selected_rows("W1-f32,W3")


def test_no_run_starts_after_the_deadline(gpu_rows):
    run = gpu_rows.Runner("jax", deadline=60, start=time.time() - 30)
    assert run(["--workload", "W1"]) == {"error": "skipped: deadline"}


def test_the_table_has_a_line_per_row(gpu_rows):
    record = {"label": "W1", "policy": "float32", "jit_compile": True, "params": 1698324,
              "config": {"batch_size": 32}, "train_img_s": 1504.2, "encode_img_s": 5000.0,
              "sample_img_s": None, "train_fraction_of_peak": 0.25, "device_peak_mb": 900.0,
              "train_detail": {"first_call_s": 12.5}, "device": "NVIDIA H200"}
    failed = {"row": "cifar10-fp16", "flags": "--mixed-precision fp16", "error": "timed out"}
    text = gpu_rows.table([record, failed], "jax", 400.0)
    assert "## keras_flow on NVIDIA H200, jax backend" in text and "400.0 GFLOP/s" in text
    assert "| W1 | float32 | on | 32 | 1504.2 | 25.0 | 5000.0 | - | 1,698,324 | 900 |" in text
    assert "| cifar10-fp16 | --mixed-precision fp16 | | | timed out |" in text

"""The runs and the table of benchmarks/gpu.sh: throughput.py per configuration, most wanted
first, until the deadline; then the largest cifar10-preset batch that trains in bf16.

Run by gpu.sh, which sets the environment: `BACKEND` (jax or tensorflow), `DEADLINE_S` (no
run starts later), and optionally `GPU_ROWS` (a comma-separated subset of `ROWS`' names),
`GPU_RESULTS` (a file that receives each run's JSON record) and `GPU_SMOKE` (toy sizes, for
a dry run on a CPU). Prints each record as it comes, then the Markdown table for
BENCHMARKS.md.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory_rules import fitting_batch, fixed_bytes  # noqa: E402

CIFAR10 = ["--image-size", "32", "--channels", "3", "--levels", "3", "--depth", "32",
           "--hidden-width", "512", "--batch-size", "64"]
QUICK = ["--windows", "3", "--window-s", "1.0"]
W1 = ["--workload", "W1", "--window-s", "0.5"]  # QUICK's windows, shorter: W1 steps are short
ROWS = [  # (name, label, flags), most wanted first; "largest" is the largest-batch search
    ("W1-f32", "W1", W1 + ["--mixed-precision", "off"]),
    ("W1-bf16", "W1", W1 + ["--mixed-precision", "bf16", "--check-bpd"]),
    ("cifar10-bf16", "cifar10", CIFAR10 + ["--mixed-precision", "bf16", "--check-bpd",
                                           "--no-sample"]),
    ("W1-fp16", "W1", W1 + ["--mixed-precision", "fp16", "--check-bpd", "--no-sample"]),
    ("cifar10-f32", "cifar10", CIFAR10 + ["--mixed-precision", "off", "--no-sample"]),
    ("largest", "cifar10", []),
    ("cifar10-fp16", "cifar10", CIFAR10 + ["--mixed-precision", "fp16", "--check-bpd",
                                           "--no-sample"]),
    ("W1-f32-xla-off", "W1", ["--workload", "W1", "--mixed-precision", "off", "--jit", "off",
                              "--no-encode", "--no-sample", "--windows", "1"]),
]
FIT_ONLY = ["--windows", "1", "--window-s", "0.5", "--no-encode", "--no-sample", "--no-peak"]
TOY = ["--levels", "2", "--depth", "1", "--hidden-width", "16", "--image-size", "8",
       "--windows", "1", "--window-s", "0.1"]  # GPU_SMOKE: end to end in a minute or two
MIB = 2 ** 20


def selected_rows(names=None):
    """`ROWS`, or those named in `names` ("cifar10-fp16,W1-f32-xla-off": to finish a table
    over two leases), in `ROWS`' order; exits naming the valid rows for an unknown name."""
    if not names:
        return list(ROWS)
    wanted = names.split(",")
    unknown = sorted(set(wanted) - {name for name, _, _ in ROWS})
    if unknown:
        sys.exit("GPU_ROWS: unknown rows %s; choose from %s" % (
            unknown, ", ".join(name for name, _, _ in ROWS)))
    return [row for row in ROWS if row[0] in wanted]


class Runner:
    """Runs throughput.py with XLA on (unless the flags say otherwise) and the first run's
    matmul peak, until `deadline` seconds after `start`; returns its JSON record, or
    `{"error": why}`."""

    def __init__(self, backend, deadline, start=None):
        self.backend, self.deadline = backend, float(deadline)
        self.start = time.time() if start is None else start
        self.peak = None  # the float32 matmul peak, measured by the first run

    def __call__(self, flags, limit=240):
        left = self.deadline - (time.time() - self.start)
        if left < 45:
            return {"error": "skipped: deadline"}
        jit = [] if "--jit" in flags else ["--jit", "on"]
        measured = (["--peak-gflops", str(self.peak)]
                    if self.peak and "--no-peak" not in flags else [])
        cmd = ([sys.executable, "benchmarks/throughput.py", "--backend", self.backend] + jit +
               measured + flags)
        try:
            out = subprocess.run(cmd, capture_output=True, text=True,
                                 timeout=min(limit, left))
        except subprocess.TimeoutExpired:
            return {"error": "timed out"}
        lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
        if out.returncode or not lines:
            tail = out.stderr.strip().splitlines()[-1:] or ["?"]
            return {"error": "failed: " + tail[0][:120]}
        record = json.loads(lines[-1])
        if record.get("peak_fp32_matmul_gflops") and not self.peak:
            self.peak = record["peak_fp32_matmul_gflops"]
        return record


def largest_batch(rows, run):
    """The largest cifar10-preset batch that trains in bf16: extrapolates the device memory of
    batch 64 (less weights, gradients and Adam's two moments: benchmarks/memory_rules.py),
    tries that batch (a multiple of 64) with `run`, then half of it."""
    base = next((r for r in rows if r["label"] == "cifar10" and
                 r.get("policy") == "mixed_bfloat16" and r.get("device_peak_mb")), None)
    if not (base and base.get("device_limit_mb")):
        return "not measured (needs the cifar10-bf16 row on a GPU, JAX backend)"
    fixed = fixed_bytes(base["params_all"], base["params"])
    per_image = max((base["device_peak_mb"] * MIB - fixed) / 64, 1.0)
    guess = fitting_batch(base["device_limit_mb"] * MIB, fixed, per_image) // 64 * 64
    result = "not measured"
    for batch in (guess, guess // 2):
        if batch < 64:
            break
        record = run(CIFAR10[:-1] + [str(batch), "--mixed-precision", "bf16"] + FIT_ONLY)
        if "error" not in record:
            return "%d (%.0f img/s, %.0f MiB)" % (batch, record["train_img_s"],
                                                 record["device_peak_mb"] or 0)
        result = "%d failed (%s)" % (batch, record["error"])
    return result


def cell(value, fmt="%.1f"):
    return "-" if value is None else fmt % value


def table(rows, backend, peak):
    """The Markdown table of the rows' records."""
    device = next((r.get("device") for r in rows if r.get("device")), "?")
    lines = [
        "## keras_flow on %s, %s backend, %s (float32 matmul peak %s GFLOP/s)\n" % (
            device, backend, time.strftime("%Y-%m-%d"), peak or "not measured"),
        "| workload | precision | XLA | batch | train img/s | train % of peak | encode img/s | "
        "sample img/s | params | device peak MiB | bits/dim | vs float32 | 1st train call s |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append("| %s | %s | | | %s | | | | | | | | |" % (r["row"], r["flags"],
                                                                 r["error"]))
            continue
        fraction = r["train_fraction_of_peak"]
        lines.append("| %s | %s | %s | %d | %s | %s | %s | %s | {:,} | %s | %s | %s | %s |"
                     .format(r["params"]) % (
            r["label"], r["policy"], "on" if r["jit_compile"] else "off",
            r["config"]["batch_size"], cell(r["train_img_s"]),
            cell(fraction and 100 * fraction), cell(r["encode_img_s"]),
            cell(r["sample_img_s"]), cell(r["device_peak_mb"], "%.0f"), cell(r.get("bpd"), "%.4f"),
            cell(r.get("bpd_abs_diff"), "%.4f"), cell(r["train_detail"]["first_call_s"])))
    return "\n".join(lines)


def main():
    backend = os.environ["BACKEND"]
    run = Runner(backend, os.environ["DEADLINE_S"])
    toy = TOY if os.environ.get("GPU_SMOKE") else []
    results = os.environ.get("GPU_RESULTS")
    rows, largest = [], "not run"
    for name, label, flags in selected_rows(os.environ.get("GPU_ROWS")):
        if name == "largest":
            largest = largest_batch(rows, run)
            continue
        record = run(QUICK + flags + toy)
        record.update(label=label, row=name, flags=" ".join(flags))
        rows.append(record)
        print(json.dumps(record), flush=True)
        if results:
            with open(results, "a") as fh:
                fh.write(json.dumps(record) + "\n")
    print("\n" + table(rows, backend, run.peak))
    print("\nLargest cifar10-preset batch in bf16: %s. Total %.0f s." % (
        largest, time.time() - run.start))


if __name__ == "__main__":
    main()

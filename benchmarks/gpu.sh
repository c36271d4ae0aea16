#!/usr/bin/env bash
# keras_flow on one NVIDIA GPU, by default with Keras's JAX backend (the GPU machines lent here
# carry JAX and PyTorch, no TensorFlow; `--backend tensorflow` where TensorFlow is installed):
# training / encode / sample images/s of W1 and of the cifar10 preset in
# float32, bfloat16 and float16, the bits/dim agreement between precisions and the largest
# batch that fits; prints a Markdown table for BENCHMARKS.md. Installs nothing from the network
# and stops starting runs after DEADLINE_S seconds (default 420), so it ends within 8 minutes.
#
#   bash benchmarks/gpu.sh --prepare-wheels   # once, on a machine with network access: the
#                                             # keras wheel and its missing deps into .whl/
#   bash benchmarks/gpu.sh                    # on the GPU machine (with .whl/ beside it)
#   GPU_SMOKE=1 bash benchmarks/gpu.sh        # here, before spending device time: the same
#                                             # runs at toy sizes on the CPU (no wheels)
#   GPU_ROWS=cifar10-fp16,W1-f32-xla-off bash benchmarks/gpu.sh   # only these rows (the names
#                                             # are in ROWS below; a lease fits about four)
#   bash benchmarks/gpu.sh --backend tensorflow   # a GPU machine with TensorFlow: XLA on and
#                                             # off are both compiled there (no largest batch:
#                                             # TensorFlow does not report the memory limit)
#
# With the device tool: run(command="GPU_RESULTS=$OUT/gpu.jsonl bash benchmarks/gpu.sh",
# carry=[".whl"], timeout_s=540). GPU_RESULTS, if set, also receives each run's JSON record.
# XLA: JAX compiles every step with XLA; "XLA off" (Keras's jit_compile=False) runs the step op
# by op there, measured for W1 float32 training only (the cifar10 preset would take minutes a
# step); on TensorFlow "XLA off" is a tf.function graph without XLA.
set -uo pipefail
cd "$(dirname "$0")/.."

KERAS_VERSION="${KERAS_VERSION:-3.15.1}"
if [ "${1:-}" = "--prepare-wheels" ]; then
  # keras's requirements that the GPU image lacks (absl-py, h5py, ml-dtypes, numpy, packaging
  # and rich are there): namex and optree. Python 3.12 wheels, as on the GPU image.
  platforms=""
  for n in 28 27 17; do platforms="$platforms --platform manylinux_2_${n}_x86_64"; done
  exec python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp $platforms --platform manylinux2014_x86_64 -d .whl \
    "keras==$KERAS_VERSION" namex optree
fi

BACKEND=jax
if [ "${1:-}" = "--backend" ]; then
  BACKEND="${2:-}"
fi
case "$BACKEND" in
  jax|tensorflow) ;;
  *) echo "gpu.sh: --backend takes jax or tensorflow; got '$BACKEND'." >&2; exit 2 ;;
esac

if [ "$BACKEND" = jax ] && [ -z "${GPU_SMOKE:-}" ] && compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/keras_flow_site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/keras_flow_site${PYTHONPATH:+:$PYTHONPATH}"
fi
# keras_flow from this checkout: the GPU machine has no editable install of it
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND="$BACKEND" PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_MEM_FRACTION=0.95
if ! python3 -c "import keras, $BACKEND" 2>/dev/null; then
  echo "keras or $BACKEND is not importable: for JAX run 'bash benchmarks/gpu.sh" \
       "--prepare-wheels' on a machine with network access and carry .whl/ along." >&2
  exit 1
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null
if [ "$BACKEND" = jax ]; then
  python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras',
    keras.__version__, 'float32 matmul precision:', jax.config.jax_default_matmul_precision)"
fi

BACKEND="$BACKEND" DEADLINE_S="${DEADLINE_S:-420}" python3 - <<'EOF'
"""Runs benchmarks/throughput.py per configuration (most wanted first) until the deadline."""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, "benchmarks")
from memory_rules import fitting_batch, fixed_bytes  # noqa: E402

START, DEADLINE = time.time(), float(os.environ["DEADLINE_S"])
BACKEND = os.environ["BACKEND"]
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
# GPU_ROWS="cifar10-fp16,W1-f32-xla-off": only these rows (to finish a table over two leases)
if os.environ.get("GPU_ROWS"):
    wanted = os.environ["GPU_ROWS"].split(",")
    unknown = sorted(set(wanted) - {name for name, _, _ in ROWS})
    if unknown:
        sys.exit("GPU_ROWS: unknown rows %s; choose from %s" % (
            unknown, ", ".join(name for name, _, _ in ROWS)))
    ROWS = [row for row in ROWS if row[0] in wanted]
FIT_ONLY = ["--windows", "1", "--window-s", "0.5", "--no-encode", "--no-sample", "--no-peak"]
RESULTS = os.environ.get("GPU_RESULTS")
TOY = []
if os.environ.get("GPU_SMOKE"):  # toy sizes: checks the script end to end in a minute or two
    TOY = ["--levels", "2", "--depth", "1", "--hidden-width", "16", "--image-size", "8",
           "--windows", "1", "--window-s", "0.1"]
peak = []  # the float32 matmul peak, measured by the first run and passed to the others


def run(flags, limit=240):
    left = DEADLINE - (time.time() - START)
    if left < 45:
        return {"error": "skipped: deadline"}
    jit = [] if "--jit" in flags else ["--jit", "on"]
    measured = ["--peak-gflops", str(peak[0])] if peak and "--no-peak" not in flags else []
    cmd = ([sys.executable, "benchmarks/throughput.py", "--backend", BACKEND] + jit + measured +
           flags)
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=min(limit, left))
    except subprocess.TimeoutExpired:
        return {"error": "timed out"}
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode or not lines:
        tail = out.stderr.strip().splitlines()[-1:] or ["?"]
        return {"error": "failed: " + tail[0][:120]}
    return json.loads(lines[-1])


def cell(value, fmt="%.1f"):
    return "-" if value is None else fmt % value


def largest_batch(rows):
    """The largest cifar10-preset batch that trains in bf16: extrapolates the device memory of
    batch 64 (less weights, gradients and Adam's two moments: benchmarks/memory_rules.py), tries
    that batch, then half."""
    base = next((r for r in rows if r["label"] == "cifar10" and
                 r.get("policy") == "mixed_bfloat16" and r.get("device_peak_mb")), None)
    if not (base and base.get("device_limit_mb")):
        return "not measured (needs the cifar10-bf16 row on a GPU, JAX backend)"
    mib = 2 ** 20
    fixed = fixed_bytes(base["params_all"], base["params"])
    per_image = max((base["device_peak_mb"] * mib - fixed) / 64, 1.0)
    guess = fitting_batch(base["device_limit_mb"] * mib, fixed, per_image) // 64 * 64
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


rows, largest = [], "not run"
for name, label, flags in ROWS:
    if name == "largest":
        largest = largest_batch(rows)
        continue
    record = run(QUICK + flags + TOY)
    record.update(label=label, row=name, flags=" ".join(flags))
    rows.append(record)
    if record.get("peak_fp32_matmul_gflops") and not peak:
        peak.append(record["peak_fp32_matmul_gflops"])
    print(json.dumps(record), flush=True)
    if RESULTS:
        with open(RESULTS, "a") as fh:
            fh.write(json.dumps(record) + "\n")

device = next((r.get("device") for r in rows if r.get("device")), "?")
print("\n## keras_flow on %s, %s backend, %s (float32 matmul peak %s GFLOP/s)\n" % (
    device, BACKEND, time.strftime("%Y-%m-%d"), peak[0] if peak else "not measured"))
print("| workload | precision | XLA | batch | train img/s | train % of peak | encode img/s | "
      "sample img/s | params | device peak MiB | bits/dim | vs float32 | 1st train call s |")
print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    if "error" in r:
        print("| %s | %s | | | %s | | | | | | | | |" % (r["row"], r["flags"], r["error"]))
        continue
    fraction = r["train_fraction_of_peak"]
    print("| %s | %s | %s | %d | %s | %s | %s | %s | {:,} | %s | %s | %s | %s |".format(
        r["params"]) % (
        r["label"], r["policy"], "on" if r["jit_compile"] else "off", r["config"]["batch_size"],
        cell(r["train_img_s"]), cell(fraction and 100 * fraction), cell(r["encode_img_s"]),
        cell(r["sample_img_s"]), cell(r["device_peak_mb"], "%.0f"), cell(r.get("bpd"), "%.4f"),
        cell(r.get("bpd_abs_diff"), "%.4f"), cell(r["train_detail"]["first_call_s"])))
print("\nLargest cifar10-preset batch in bf16: %s. Total %.0f s." % (largest, time.time() - START))
EOF

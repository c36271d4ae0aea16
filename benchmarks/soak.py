"""Soak test: host memory of a long `train.py` run stays flat.

    python benchmarks/soak.py                      # 2,000 steps of the default model (digits)
    python benchmarks/soak.py --steps 400 --every 50 -- --levels 1 --depth 2   # a quick look

Runs `train.py` with `--steps-per-epoch EVERY --checkpoint-every EVERY`, so every EVERY steps
the run also goes through its epoch end (held-out bits/dim, sample grids, the curve, history,
TensorBoard, a checkpoint): the places where leaks hide. This process watches the run's
checkpoint state and, at each new checkpoint step, reads the resident set size (VmRSS) of the
training process from /proc (Linux). It prints one JSON line per sample, `{"step", "rss_mib",
"seconds"}`, then a verdict line: the growth from the sample at step `--baseline-step` (200:
after start-up, tracing and the first epochs' one-off allocations) to the last one, and
`"flat": true` when it is below `--tolerance` (5%).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=2000, help="training steps (2000)")
    parser.add_argument("--every", type=int, default=100, help="steps between samples (100)")
    parser.add_argument("--baseline-step", type=int, default=200,
                        help="the sample growth is measured from (200)")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="largest relative growth called flat (0.05)")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    parser.add_argument("train_args", nargs="*", help="extra train.py flags, after --")
    args = parser.parse_args(argv)
    if args.steps % args.every or args.baseline_step % args.every:
        parser.error("--steps and --baseline-step must be multiples of --every")
    return args


def rss_mib(pid):
    """Resident set size of process `pid` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def checkpoint_step(out):
    try:
        return json.loads((Path(out) / "checkpoints" / "state.json").read_text())["step"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return None


def soak(args, out):
    command = [sys.executable, str(ROOT / "train.py"), "--steps-per-epoch", str(args.every),
               "--epochs", str(args.steps // args.every), "--checkpoint-every",
               str(args.every), "--verbose", "0", "--out", str(out), *args.train_args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    started, samples, last = time.monotonic(), [], None
    try:
        while process.poll() is None and (last is None or last < args.steps):
            step = checkpoint_step(out)
            if step is not None and step != last and step % args.every == 0:
                sample = {"step": step, "rss_mib": round(rss_mib(process.pid), 1),
                          "seconds": round(time.monotonic() - started, 1)}
                print(json.dumps(sample), flush=True)
                samples.append(sample)
                last = step
            time.sleep(0.02)
        _, stderr = process.communicate(timeout=1800)
    finally:
        if process.poll() is None:
            process.kill()
    if process.returncode != 0:
        raise SystemExit(f"train.py failed ({process.returncode}):\n{stderr[-3000:]}")
    return samples


def verdict(samples, baseline_step, tolerance):
    base = next((s for s in samples if s["step"] >= baseline_step), samples[0])
    end = samples[-1]
    growth = (end["rss_mib"] - base["rss_mib"]) / base["rss_mib"]
    return {"verdict": "flat" if growth < tolerance else "growing", "flat": growth < tolerance,
            "baseline_step": base["step"], "baseline_rss_mib": base["rss_mib"],
            "final_step": end["step"], "final_rss_mib": end["rss_mib"],
            "max_rss_mib": max(s["rss_mib"] for s in samples),
            "growth_percent": round(100 * growth, 2), "tolerance_percent": 100 * tolerance,
            "seconds": end["seconds"]}


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="soak-") as scratch:
        samples = soak(args, Path(args.out or Path(scratch) / "run"))
    result = verdict(samples, args.baseline_step, args.tolerance)
    print(json.dumps(result), flush=True)
    return 0 if result["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""Speed of an exported SavedModel's endpoints (keras_flow.export), loaded with TensorFlow alone.

    python benchmarks/maintainer/export_speed.py --workload W1     # batch shards, 1 thread/op
    python benchmarks/maintainer/export_speed.py --workload W1 --batch-shards 1  # TF's threads

Builds throughput.py's Glow for the workload (same seed, actnorms initialised on its batch),
exports it to a temporary directory (`export_s`: the seconds `keras_flow.export` took), loads
it with `tf.saved_model.load` (`load_s`) and times two endpoints at each `--sizes` batch
size: `bits_per_dim(uint8 images)` and `sample_seeded(n, 0.7, seed)`. Threads as
throughput.py sets them: with batch shards (0 = auto, the default) one intra-op thread per op
and `--threads` ops at once; with `--batch-shards 1` (no shards) `--threads` intra- and
inter-op threads, TensorFlow's usual setting. The endpoints take any batch size, so their
graphs do not know it when traced.
Method (throughput.py's `bench`): two untimed calls, then `--windows` windows of `--calls`
calls; prints one JSON line per batch size with the median milliseconds per call of each
endpoint.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: throughput.py
import throughput  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", default="W1", choices=sorted(throughput.WORKLOADS))
    p.add_argument("--batch-shards", type=int, default=0,
                   help="Glow(batch_shards=...): 0 = auto (throughput.py's), 1 = off")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (2)")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 2],
                   help="batch sizes of the timed calls (32 2)")
    p.add_argument("--windows", type=int, default=5, help="timed windows; the median counts")
    p.add_argument("--calls", type=int, default=10, help="calls per window (10)")
    return p.parse_args(argv)


def ms_per_call(fn, batch_size, windows, calls):
    """Median milliseconds per call of `fn()` (returns a tensor), timed by throughput.py's
    `bench` (two untimed calls, then `windows` windows of `calls` calls)."""

    def run(n):
        for _ in range(n):
            fn().numpy()

    stats = throughput.bench(run, batch_size, windows=windows, calls=calls)
    return round(1e3 * batch_size / stats["img_s"], 2)


def main(argv=None):
    args = parse_args(argv)
    model_args = throughput.parse_args(["--workload", args.workload, "--threads",
                                        str(args.threads), "--batch-shards",
                                        str(args.batch_shards)])
    throughput.configure_environment(model_args)
    import numpy as np
    import tensorflow as tf

    import keras_flow

    model = throughput.initialized_glow(model_args, throughput.workload_batch(model_args))
    images = np.random.default_rng(model_args.seed).integers(
        0, 256, (max(args.sizes),) + tuple(model.image_shape), dtype=np.uint8)
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        path = keras_flow.export(model, os.path.join(folder, "export"))
        exported = time.perf_counter()
        flow = tf.saved_model.load(path)
        seconds = {"export_s": round(exported - started, 2),
                   "load_s": round(time.perf_counter() - exported, 2)}
        for size in args.sizes:
            batch = tf.constant(images[:size])
            record = {
                "workload": args.workload, "batch_size": size,
                "batch_shards": model_args.batch_shards, "threads": args.threads,
                "bits_per_dim_ms": ms_per_call(lambda: flow.bits_per_dim(batch), size,
                                               args.windows, args.calls),
                "sample_ms": ms_per_call(
                    lambda: flow.sample_seeded(tf.constant(size), tf.constant(0.7),
                                               tf.constant(1)), size, args.windows, args.calls),
                **seconds,
            }
            sys.stdout.write(json.dumps(record) + "\n")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

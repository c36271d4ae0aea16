"""What `tf.function`'s per-call dispatch costs a compiled `bits_per_dim`, in one process.

    python benchmarks/dispatch.py                          # W1, batches of 32, 8 and 2
    python benchmarks/dispatch.py --workload W2 --sizes 64

Builds throughput.py's Glow for the workload (its threads and batch shards, float32) and, for
each batch size (the first images of the workload's batch), compiles the model's
`bits_per_dim` twice, as throughput.py does: as a `tf.function` (the default) and as its
concrete function for that shape (`--concrete-functions`). It then alternates rounds of
`--calls` calls of each for `--rounds` rounds, so that each round's ratio pairs calls made
seconds apart (separate throughput.py runs differ by up to 10% on a shared VM). Prints one
JSON line per batch size: the median milliseconds per call of each and the median of the
per-round ratios (`tf.function` time over concrete-function time: above 1, the concrete
function is faster).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import throughput  # noqa: E402  (this folder's script, for its model and compiled functions)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workload", choices=sorted(throughput.WORKLOADS), default="W1")
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 8, 2], help="batch sizes")
    p.add_argument("--rounds", type=int, default=20)
    p.add_argument("--calls", type=int, default=5, help="calls per round of each")
    args = p.parse_args(argv)
    if min(args.sizes) < 1 or args.rounds < 1 or args.calls < 1:
        p.error("--sizes, --rounds and --calls must be >= 1.")
    return args


def compare(fns, x, rounds, calls):
    """Median ms per call of each function of `fns` (two) on `x`, timed in throughput.py's
    `alternating_rounds` after two untimed calls each, and the median of the per-round ratios
    first / second."""
    times = throughput.alternating_rounds([lambda fn=fn: throughput.block(fn(x)) for fn in fns],
                                          rounds, calls)
    ratios = [a / b for a, b in zip(*times)]
    return ([round(1e3 * statistics.median(t), 2) for t in times],
            round(statistics.median(ratios), 4))


def main(argv=None):
    args = parse_args(argv)
    options = throughput.parse_args(["--workload", args.workload, "--mixed-precision", "off"])
    if max(args.sizes) > options.batch_size:
        sys.exit(f"dispatch.py: --sizes go up to the workload's batch ({options.batch_size}); "
                 f"got {max(args.sizes)}.")
    throughput.configure_environment(options)
    from keras import ops

    model, batch = throughput.build_model(options, "float32")
    for size in args.sizes:
        x = ops.convert_to_tensor(batch[:size])
        fns = [throughput.bits_per_dim_fn(model, "tensorflow", False, concrete=concrete)
               for concrete in (False, True)]
        (function_ms, concrete_ms), ratio = compare(fns, x, args.rounds, args.calls)
        sys.stdout.write(json.dumps({
            "workload": args.workload, "batch_size": size, "batch_shards": options.batch_shards,
            "tf_function_ms": function_ms, "concrete_function_ms": concrete_ms,
            "ratio": ratio}) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

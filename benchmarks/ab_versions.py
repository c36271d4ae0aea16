"""Speed A/B of keras_flow: the working tree against a git revision, paired in one process.

    python benchmarks/ab_versions.py --base HEAD                      # W1 float32: encode, train
    python benchmarks/ab_versions.py --base 55ba3be --workload W2 --measure encode sample

Two throughput.py runs one after the other see the machine's slow spells: on the project's
shared 2-core VMs the same library encoded W1 at 738, 725 and 502 images/s in three runs
minutes apart, which hides the 2-5% that most changes are worth. Here both versions run in
one process (the revision's `keras_flow` exported with `git archive` and renamed
`keras_flow_base`), on the same weights and batch, in alternating rounds of calls, and each
round's ratio pairs calls made seconds apart. But each process has a bias of its own: with
identical code, one of its two models ran up to 7% slower than the other throughout (which
one changed from process to process). So the script runs `--processes` processes (4),
building the two versions in alternating order, and reports the geometric mean of their
median ratios, in which those biases average out, with the per-process medians to show what
is left (HEAD against itself: 0.989 for encoding, 1.003 for training; BENCHMARKS.md).

Prints one JSON line per measure (`encode`: compiled `bits_per_dim`; `sample`: compiled
`decode` of fixed noise; `train`: `train_on_batch` with each version's own train step and
Adam): per process, milliseconds per call of each version (medians) and the median ratio
(base time over working-tree time: above 1, the working tree is faster) with its quartiles;
`speedup`, the geometric mean of those medians; and `max_abs_bpd_diff`, the largest
difference between the two versions' bits/dim of the batch with the same weights (None when
the weights no longer match, e.g. after a change of the layers' variables). TensorFlow
backend, with throughput.py's default threads and batch shards.
"""

import argparse
import io
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
import throughput  # noqa: E402

BASE_PACKAGE = "keras_flow_base"
MEASURES = ("encode", "train", "sample")
ORDERS = ("base-first", "tree-first")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", required=True, help="the git revision to compare against")
    p.add_argument("--workload", default="W1", choices=sorted(throughput.WORKLOADS))
    p.add_argument("--mixed-precision", default="off", choices=sorted(throughput.POLICIES))
    p.add_argument("--measure", nargs="+", default=["encode", "train"], choices=MEASURES)
    p.add_argument("--rounds", type=int, default=20, help="rounds of calls per process (20)")
    p.add_argument("--calls", type=int, default=5, help="calls per version and round (5)")
    p.add_argument("--processes", type=int, default=4,
                   help="processes, building the versions in alternating order (4)")
    p.add_argument("--order", default=None, choices=ORDERS, help=argparse.SUPPRESS)
    p.add_argument("--base-dir", default=None, help=argparse.SUPPRESS)  # set for the children
    args = p.parse_args(argv)
    if args.rounds < 2 or args.calls < 1 or args.processes < 1:
        p.error(f"--rounds must be >= 2, --calls and --processes >= 1; got {args.rounds}, "
                f"{args.calls}, {args.processes}.")
    return args


def export_base(revision, destination):
    """Writes keras_flow as of `revision` to `destination/keras_flow_base`, every reference
    to the package renamed (imports and the Keras serialisation package, so the two versions'
    registered classes do not replace each other). Returns that folder."""
    try:
        result = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "keras_flow"],
                                capture_output=True)
    except FileNotFoundError:
        raise ValueError("ab_versions.py needs git (and this repository's history) to export "
                         "the base revision; install git.") from None
    if result.returncode:
        raise ValueError(
            f"Cannot export keras_flow at revision {revision!r}: "
            f"{result.stderr.decode(errors='replace').strip()}. Give a commit, branch or tag "
            "of this repository.")
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as archive:
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        archive.extractall(destination, **safe)
    package = Path(destination) / BASE_PACKAGE
    (Path(destination) / "keras_flow").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        path.write_text(re.sub(r"\bkeras_flow\b", BASE_PACKAGE, text))
    return package


def ratio_summary(ratios):
    quartiles = statistics.quantiles(ratios, n=4)
    return {"median": round(statistics.median(ratios), 4),
            "quartiles": [round(quartiles[0], 4), round(quartiles[2], 4)]}


# --- one process: both versions, one of them built first -----------------------------------
def move_weights(models, seed=1, scale=0.01):
    """The same small noise on every model's trainable weights (the zero convolutions become
    non-zero, so the bits/dim comparison covers the couplings); False if their weights do not
    match in shape (the compared change altered the variables)."""
    shapes = [[tuple(w.shape) for w in m.trainable_weights] for m in models]
    if any(s != shapes[0] for s in shapes):
        return False
    from keras import ops

    rng = np.random.default_rng(seed)
    for weights in zip(*(m.trainable_weights for m in models)):
        value = ops.convert_to_numpy(weights[0])
        value = value + scale * rng.standard_normal(value.shape).astype(value.dtype)
        for weight in weights:
            weight.assign(value)
    return True


def make_call(model, package, measure, x):
    """A no-argument function that runs one call of `measure` on `model` and waits for it."""
    import tensorflow as tf

    if measure == "encode":
        fn, inputs = tf.function(lambda images: model.bits_per_dim(images)), [x]
    elif measure == "sample":
        noise = model.latent_noise(x.shape[0], throughput.TEMPERATURE, seed=3)
        fn, inputs = tf.function(lambda *eps: model.decode(list(eps))), noise
    else:
        model.compile(optimizer=package.optimizers.make_optimizer("adam", 1e-5),
                      jit_compile=False)
        return lambda: model.train_on_batch(x)
    inputs = [tf.constant(value) for value in inputs]
    return lambda: fn(*inputs).numpy()


def run_order(args):
    """Both versions in this process, the first-named one built first; one JSON line per
    measure with this order's ratios."""
    throughput.configure_environment(args)
    import keras
    from keras import ops

    sys.path.insert(0, str(Path(args.base_dir).parent))
    import keras_flow
    import keras_flow_base

    keras.config.set_dtype_policy(throughput.POLICIES[args.mixed_precision])
    x = throughput.workload_batch(args)
    names = ["base", "tree"] if args.order == "base-first" else ["tree", "base"]
    packages = {"base": keras_flow_base, "tree": keras_flow}
    models = {name: throughput.initialized_glow(args, x, packages[name]) for name in names}
    same_weights = move_weights([models["base"], models["tree"]])
    bpd_diff = None
    if same_weights:
        bpd = {name: ops.convert_to_numpy(model.bits_per_dim(x)) for name, model in
               models.items()}
        bpd_diff = float(np.max(np.abs(bpd["base"] - bpd["tree"])))
    for measure in args.measure:
        calls = [make_call(models[name], packages[name], measure, x) for name in names]
        seconds = dict(zip(names, throughput.alternating_rounds(calls, args.rounds, args.calls,
                                                                warmup=3)))
        ratios = [base / tree for base, tree in zip(seconds["base"], seconds["tree"])]
        print(json.dumps({
            "measure": measure, "order": args.order,
            "base_ms": round(1e3 * statistics.median(seconds["base"]), 3),
            "tree_ms": round(1e3 * statistics.median(seconds["tree"]), 3),
            "ratio": ratio_summary(ratios), "max_abs_bpd_diff": bpd_diff}), flush=True)


# --- the processes ----------------------------------------------------------------------
def combine(base, workload, policy, lines):
    """One record per measure from the processes' lines: `speedup` = the geometric mean of
    their median ratios."""
    records = []
    for measure in dict.fromkeys(line["measure"] for line in lines):
        rows = [line for line in lines if line["measure"] == measure]
        medians = [row["ratio"]["median"] for row in rows]
        records.append({
            "measure": measure, "base": base, "workload": workload, "policy": policy,
            "speedup": round(math.prod(medians) ** (1 / len(medians)), 4),
            "processes": [{k: row[k] for k in ("order", "base_ms", "tree_ms", "ratio")}
                          for row in rows],
            "max_abs_bpd_diff": rows[0]["max_abs_bpd_diff"]})
    return records


def run_processes(args, argv):
    with tempfile.TemporaryDirectory(prefix="keras_flow_ab_") as folder:
        try:
            package = export_base(args.base, folder)
        except ValueError as error:
            raise SystemExit(f"ab_versions: {error}") from None
        lines = []
        for index in range(args.processes):
            order = ORDERS[index % 2]
            command = ([sys.executable, str(Path(__file__).resolve())] + list(argv) +
                       ["--order", order, "--base-dir", str(package)])
            result = subprocess.run(command, capture_output=True, text=True,
                                    env=dict(os.environ, PYTHONPATH=str(ROOT)))
            if result.returncode:
                tail = "\n".join(result.stderr.strip().splitlines()[-5:])
                raise SystemExit(f"ab_versions: the {order} process failed:\n{tail}")
            lines += [json.loads(line) for line in result.stdout.splitlines()
                      if line.startswith("{")]
    for record in combine(args.base, args.workload, throughput.POLICIES[args.mixed_precision],
                          lines):
        print(json.dumps(record), flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.order is None:
        run_processes(args, argv)
        return
    workload = vars(throughput.parse_args(["--workload", args.workload]))
    workload.update(vars(args))  # throughput.py's defaults for what this script has no flag for
    run_order(argparse.Namespace(**workload))


if __name__ == "__main__":
    main()

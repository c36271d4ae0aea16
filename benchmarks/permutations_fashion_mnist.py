"""Glow's Figure 3 on Fashion-MNIST: reverse, shuffle and 1x1 convolution, each with additive
and affine couplings, at equal steps, over several seeds.

    python benchmarks/permutations_fashion_mnist.py          # 6 variants x 3 seeds, 600 steps
    python benchmarks/permutations_fashion_mnist.py --steps 40 --eval-every 20 --seeds 0 \\
        --out runs/permutations_quick --json /tmp/quick.json --png /tmp/quick.png

Data: Debian's `dataset-fashion-mnist` (IDX files in /usr/share/datasets/fashion-mnist; zero-
padded 28x28 -> 32x32, 8 bits, uniform dequantisation). Without it the script prints a SKIP
line and exits 0.

Model: workload W2 (Glow L=3, K=8, coupling width 128, LU 1x1 convolutions, learned priors,
batch 64), with the permutation and coupling of each variant. Optimiser: openai/glow's Adamax
(lr 1e-3, `beta2 = 1 - 1/steps_per_epoch`) after a linear warm-up from 0, as openai/glow warms
up; its 10 epochs of 50,000 images (7,820 steps at batch 64) are longer than the whole budget
here, so the warm-up is `--warmup` steps. Every variant and seed sees the same batches, noise
and (seeded) initial weights (`keras_flow.notebook_helpers.train_variant`).

Each run is a separate process with one core (`--workers` run side by side), and leaves
`OUT/PERMUTATION-COUPLING-seedN.json`; a run whose file exists is not run again, so an
interrupted sweep resumes. Curves: test bits/dim on the first `--test-batches` test batches
every `--eval-every` steps; at the end, the whole test set (10,000 images). Then the mean and
standard deviation over the seeds go to `--json` and the figure to `--png`
(docs/permutations_fashion_mnist.*, shown by notebooks/permutations.ipynb).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = "/usr/share/datasets/fashion-mnist"
W2 = dict(levels=3, depth=8, hidden_width=128)
PERMUTATIONS = ("reverse", "shuffle", "conv1x1")
COUPLINGS = ("additive", "affine")
STEPS_PER_EPOCH = 938  # 60,000 / 64: openai/glow's beta2 = 1 - 1/train_its


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=DATA_DIR, help=f"default: {DATA_DIR}")
    parser.add_argument("--steps", type=int, default=600, help="training steps (default: 600)")
    parser.add_argument("--eval-every", type=int, default=100, help="default: 100")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up steps (default: 200)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adamax peak (default: 1e-3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test-batches", type=int, default=8,
                        help="test batches of 64 for the curves (default: 8)")
    parser.add_argument("--mixed-precision", choices=("bf16", "off"), default="bf16",
                        help="bf16 (default; on a CPU without native bf16 use off)")
    parser.add_argument("--workers", type=int, default=2, help="runs side by side (default: 2)")
    parser.add_argument("--out", default="runs/permutations_fashion_mnist",
                        help="folder of the per-run files")
    parser.add_argument("--json", default=str(ROOT / "docs" / "permutations_fashion_mnist.json"))
    parser.add_argument("--png", default=str(ROOT / "docs" / "permutations_fashion_mnist.png"))
    parser.add_argument("--one", nargs=3, metavar=("PERMUTATION", "COUPLING", "SEED"),
                        help=argparse.SUPPRESS)  # a worker: one run
    return parser.parse_args(argv)


def run_file(out, permutation, coupling, seed):
    return Path(out) / f"{permutation}-{coupling}-seed{seed}.json"


def settings(args):
    """What every run shares, recorded with the results."""
    return dict(dataset=f"idx:{args.data_dir}", model=W2,
                data=dict(dataset=f"idx:{args.data_dir}", batch_size=64, n_bits=8),
                steps=args.steps, eval_every=args.eval_every, test_batches=args.test_batches,
                optimizer=dict(name="adamax", learning_rate=args.lr, warmup_steps=args.warmup,
                               steps_per_epoch=STEPS_PER_EPOCH),
                mixed_precision=args.mixed_precision)


def train_one(args, permutation, coupling, seed):
    """A worker: trains one variant for one seed on one core and writes its history."""
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    from keras_flow import data as flow_data
    from keras_flow import notebook_helpers
    from keras_flow.models import Glow
    from keras_flow.optimizers import make_optimizer

    if args.mixed_precision == "bf16":
        keras.config.set_dtype_policy("mixed_bfloat16")
    shared = settings(args)
    optimizer = make_optimizer(**shared["optimizer"])
    config = dict(W2, permutation=permutation, coupling=coupling)
    model, history = notebook_helpers.train_variant(
        config, shared["data"], args.steps, args.eval_every, seed=seed,
        test_batches=args.test_batches, optimizer=optimizer)
    full = flow_data.load(**shared["data"], levels=Glow.halvings_for(W2["levels"]), seed=seed)
    history["full_test_bpd"] = float(
        model.evaluate(full.test, verbose=0, return_dict=True)["bits_per_dim"])
    path = run_file(args.out, permutation, coupling, seed)
    path.write_text(json.dumps(history))
    print(f"{permutation} / {coupling} seed {seed}: test {history['full_test_bpd']:.3f} "
          f"bits/dim, {1000 * history['seconds_per_step']:.0f} ms/step", flush=True)


def run_all(args):
    """Runs the missing (variant, seed) runs, `--workers` at a time, each in its own process."""
    pending = [(p, c, s) for s in args.seeds for c in COUPLINGS for p in PERMUTATIONS
               if not run_file(args.out, p, c, s).exists()]
    running = []
    while pending or running:
        while pending and len(running) < args.workers:
            permutation, coupling, seed = pending.pop(0)
            command = [sys.executable, __file__, *sys.argv[1:], "--one", permutation,
                       coupling, str(seed)]
            env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
            running.append(subprocess.Popen(command, env=env))
        time.sleep(1)
        for process in [p for p in running if p.poll() is not None]:
            running.remove(process)
            if process.returncode:
                sys.exit(f"a run failed ({' '.join(process.args[-3:])}); see its output above")


def summarize(args):
    """Mean and standard deviation over the seeds: the JSON and the figure."""
    import matplotlib

    matplotlib.use("Agg")
    import numpy as np

    from keras_flow import notebook_helpers

    runs = {}
    for coupling in COUPLINGS:
        for permutation in PERMUTATIONS:
            name = f"{permutation} / {coupling}"
            runs[name] = [json.loads(run_file(args.out, permutation, coupling, s).read_text())
                          for s in args.seeds]
    histories = {name: notebook_helpers.mean_history(found) for name, found in runs.items()}
    for name, found in runs.items():
        full = [h["full_test_bpd"] for h in found]
        histories[name].update(full_test_bpd=float(np.mean(full)),
                               full_test_bpd_std=float(np.std(full)))
    summary = dict(settings(args), seeds=args.seeds, quick=False,
                   rows=notebook_helpers.summary_rows(histories), runs=runs,
                   full_test=full_test_rows(histories),
                   table=notebook_helpers.summary_table(histories))
    Path(args.json).write_text(json.dumps(summary, indent=1))
    figure = notebook_helpers.plot_permutations(histories)
    figure.suptitle(f"Fashion-MNIST, Glow W2, {args.steps} steps, seeds {args.seeds}", y=1.01)
    figure.savefig(args.png, dpi=80, bbox_inches="tight")
    print(summary["table"])
    for row in summary["full_test"]:
        print(f"{row['variant']:20s} all 10,000 test images: {row['bpd']:.3f} ± {row['std']:.3f}")
    print(f"wrote {args.json} and {args.png}")


def full_test_rows(histories):
    return [dict(variant=name, bpd=h["full_test_bpd"], std=h["full_test_bpd_std"])
            for name, h in histories.items()]


def main(argv=None):
    args = parse_args(argv)
    if not (Path(args.data_dir) / "train-images-idx3-ubyte.gz").exists():
        print(f"SKIP: Fashion-MNIST not found in {args.data_dir} "
              "(apt-get install dataset-fashion-mnist)")
        return
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.one:
        permutation, coupling, seed = args.one
        train_one(args, permutation, coupling, int(seed))
        return
    run_all(args)
    summarize(args)


if __name__ == "__main__":
    main()

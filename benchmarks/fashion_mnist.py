"""Test bits/dim against training time: Glow at workload W2 on Fashion-MNIST.

    python benchmarks/fashion_mnist.py                      # 600 s of training (~15 min)
    python benchmarks/fashion_mnist.py --max-seconds 60 --eval-every 30
    python benchmarks/fashion_mnist.py --max-steps 1500 --eval-every 300   # step-matched

Data: Debian's `dataset-fashion-mnist` package (`apt-get install dataset-fashion-mnist`;
IDX files in /usr/share/datasets/fashion-mnist): 60,000 training and 10,000 test images,
zero-padded 28x28 -> 32x32 as openai/glow did for MNIST, 8 bits, uniform dequantisation.
Without the package the script prints a SKIP line and exits 0.

Model: W2 of the performance issue (and ../shared/peers): Glow with L=3, K=8, coupling width
128, affine couplings, LU 1x1 convolutions, learned priors, batch 64. Optimiser: keras_flow's
defaults (openai/glow's Adamax, lr 1e-3, beta2 = 1 - 1/steps_per_epoch) with a linear warm-up
(--warmup steps). Actnorm is initialised on 256 training images before the clock starts.
`--zero-log-scale-factor`, `--split-prior`, `--ema`, `--clip-norm`, `--beta-2`,
`--lr-decay-steps` and `--budget-decay` set the Glow and optimiser options of the same names
(`--budget-decay` anneals the learning rate to 0 at --max-seconds of training time, the
clock of the evaluation points). The best recipe so far (BENCHMARKS.md):

    python benchmarks/fashion_mnist.py --optimizer adam --lr 1.5e-3 --beta-2 0.99 \\
        --clip-norm 100 --budget-decay --mixed-precision bf16 --zero-log-scale-factor 1

Every --eval-every seconds of training time (from the start of `fit`, graph tracing included;
the evaluations themselves not counted) the whole test set (fixed noise) is evaluated and one
JSON line is printed; a last line sums up. Compare with ../shared/peers/quality.sh (normflows)
run on the same machine. With `--max-steps` the points are steps instead of seconds (every
--eval-every steps): the comparison of two settings that the host's varying speed cannot blur.
"""

import argparse
import os
import platform
import sys
import time
from pathlib import Path

DATA_DIR = "/usr/share/datasets/fashion-mnist"
W2 = dict(levels=3, depth=8, hidden_width=128, coupling="affine", lu=True, batch_size=64)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", default=DATA_DIR,
                        help=f"folder of the Fashion-MNIST IDX files (default: {DATA_DIR})")
    parser.add_argument("--max-seconds", type=float, default=600.0,
                        help="training-time budget in seconds (default: 600)")
    parser.add_argument("--max-steps", type=int, default=None,
                        help="train this many steps instead of --max-seconds (step-matched "
                             "comparisons; --eval-every then counts steps)")
    parser.add_argument("--eval-every", type=float, default=120.0,
                        help="evaluate the test set every this many training seconds, or "
                             "steps with --max-steps (default: 120)")
    parser.add_argument("--optimizer", default="adamax", choices=("adamax", "adam"),
                        help="default: adamax (openai/glow's)")
    parser.add_argument("--lr", type=float, default=1e-3, help="default: 1e-3")
    parser.add_argument("--warmup", default="200",
                        help="linear warm-up, steps or 'Xepochs' (default: 200 steps)")
    parser.add_argument("--clip-norm", type=float, default=None, help="default: off")
    parser.add_argument("--beta-2", type=float, default=None,
                        help="the optimizer's second-moment decay (default: adam 0.999, "
                             "adamax 1 - 1/steps_per_epoch)")
    parser.add_argument("--lr-decay-steps", type=int, default=None,
                        help="cosine decay to 0 over this many steps after the warm-up "
                             "(default: off)")
    parser.add_argument("--budget-decay", action="store_true",
                        help="cosine decay of the learning rate to 0 at --max-seconds of "
                             "training time (needs the time budget, not --max-steps)")
    parser.add_argument("--zero-log-scale-factor", type=float, default=None,
                        help="Glow's zero-conv log-scale multiplier (default: 3, openai/glow)")
    parser.add_argument("--split-prior", default=None,
                        choices=("conditional", "unconditional", "standard"),
                        help="Glow's split prior (default: conditional, openai/glow)")
    parser.add_argument("--ema", type=float, default=0.0,
                        help="Polyak averaging momentum, evaluated weights (default: 0, off)")
    parser.add_argument("--mixed-precision", default="off", choices=("off", "bf16", "fp16"))
    parser.add_argument("--jit", default="auto", choices=("auto", "on", "off"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    return parser.parse_args(argv)


def has_data(folder):
    return any((Path(folder) / f"train-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz"))


def evaluation_points(max_seconds, every):
    points, t = [], every
    while t < max_seconds - 1e-9:
        points.append(t)
        t += every
    return points + [max_seconds]


def main(argv=None):
    args = parse_args(argv)
    if args.budget_decay and args.max_steps is not None:
        sys.exit("fashion_mnist.py: --budget-decay anneals over --max-seconds; with --max-steps "
                 "use --lr-decay-steps instead.")
    if not has_data(args.data_dir):
        print(f"SKIP: Fashion-MNIST not found in {args.data_dir}; install Debian's "
              "dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or pass "
              "--data-dir.")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from keras_flow import training
    from keras_flow.callbacks import SpendBudget
    from timed_evaluation import TimedEvaluation

    config = training.resolve_config(training.TrainConfig(
        # recipe "openai": this script's flags and their defaults say every setting
        dataset=f"idx:{args.data_dir}", preset="none", recipe="openai", **W2,
        optimizer=args.optimizer,
        lr=args.lr, warmup=args.warmup, clip_norm=args.clip_norm, beta_2=args.beta_2,
        validation_fraction=0.0,
        zero_log_scale_factor=args.zero_log_scale_factor, split_prior=args.split_prior,
        ema=args.ema,
        lr_decay_steps=args.lr_decay_steps, budget_decay=args.budget_decay,
        max_seconds=args.max_seconds if args.budget_decay else None,
        mixed_precision=args.mixed_precision, jit=args.jit, seed=args.seed, verbose=0))

    import jsonl  # benchmarks/, the script's own folder

    report = jsonl.reporter(args.out)

    cores = training.start_threads(config)
    with training.dtype_policy(config.mixed_precision):
        data = training.load_data(config)
        config = training.resolve_batch_shards(config, data, cores)
        plan = training.make_plan(config, None, data)
        model = training.build_model(config, data)
        training.compile_model(model, plan)
        training.initialize(model, data, config)
        unit = "seconds" if args.max_steps is None else "steps"
        budget = args.max_seconds if args.max_steps is None else args.max_steps
        report({"benchmark": "fashion_mnist", "workload": "W2", **{k: getattr(config, k) for k in (
            "levels", "depth", "hidden_width", "batch_size", "optimizer", "lr", "clip_norm",
            "beta_2", "budget_decay", "ema", "lr_decay_steps", "mixed_precision", "batch_shards")},
                "zero_log_scale_factor": model.zero_log_scale_factor,
                "split_prior": model.split_prior,
                "warmup_steps": plan.warmup_steps, "budget": budget, "unit": unit,
                "params": model.count_params(), "train_images": data.num_train,
                "test_images": data.num_test, "machine": f"{os.cpu_count()} CPU cores",
                "platform": platform.platform(), "date": time.strftime("%Y-%m-%d")})
        timed = TimedEvaluation(data.test, evaluation_points(budget, args.eval_every), report,
                                unit=unit)
        anneal = [SpendBudget(args.max_seconds, timed.training_seconds)] if (
            args.budget_decay) else []
        model.fit(data.train.repeat(), epochs=1, steps_per_epoch=10**9,
                  callbacks=[*anneal, timed], verbose=0, shuffle=False)
    finals = [r for r in timed.results if "test_bits_per_dim" in r]
    report({"summary": {int(round(p)): r["test_bits_per_dim"] for p, r in zip(
        timed.points, finals)}, "diverged": any(r.get("diverged") for r in timed.results),
        "steps": timed.steps})
    return 0


if __name__ == "__main__":
    sys.exit(main())

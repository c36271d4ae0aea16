"""Per-step training loss of throughput.py's batch at a constant learning rate and after its
linear warm-up: why throughput.py (like train.py and openai/glow) warms up.

    python benchmarks/warmup_spike.py                      # cifar10 preset, batch 16, 25 steps
    python benchmarks/warmup_spike.py --workload W1 --steps 40 --warmups 0 500

Builds throughput.py's model and batch (uniform noise in [-0.5, 0.5), data-dependent
initialisation on it) once per warm-up length, then trains on that batch with
`train_on_batch` (Adam at 1e-4, as throughput.py), recording each step's own loss in
bits/dim. Prints one JSON line per warm-up length: the losses, their maximum and the last.
"""

import argparse
import json

import throughput


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="cifar10", choices=sorted(throughput.WORKLOADS))
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25, help="training steps per run (25)")
    parser.add_argument("--warmups", type=int, nargs="+", default=[0, throughput.WARMUP_STEPS],
                        help="warm-up lengths in steps, one run each (0 and 500)")
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args(argv)


def step_losses(model, x, steps):
    """Each step's own loss (the metrics are reset before every step)."""
    losses = []
    for _ in range(steps):
        model.reset_metrics()
        losses.append(round(float(model.train_on_batch(x, return_dict=True)["loss"]), 4))
    return losses


def main(argv=None):
    args = parse_args(argv)
    bench_args = throughput.parse_args(
        ["--workload", args.workload, "--batch-size", str(args.batch_size), "--batch-shards",
         "1", "--threads", str(args.threads)])
    throughput.configure_environment(bench_args)
    for warmup in args.warmups:
        model, x = throughput.build_model(bench_args, "float32")
        model.compile(optimizer=throughput.make_training_optimizer("adam", warmup))
        losses = step_losses(model, x, args.steps)
        print(json.dumps({"workload": args.workload, "batch_size": args.batch_size,
                          "learning_rate": throughput.LEARNING_RATE, "warmup_steps": warmup,
                          "loss_bits_per_dim": losses, "max": max(losses),
                          "last": losses[-1]}), flush=True)


if __name__ == "__main__":
    main()

"""Where the quick start's time goes: `python3 train.py` (the digits preset), timed.

    python benchmarks/maintainer/quick_start.py         # as train.py runs it
    python benchmarks/maintainer/quick_start.py --steps-per-execution 10
    python benchmarks/maintainer/quick_start.py --epochs 4

Runs `keras_flow.training.train` with train.py's defaults (and `--epochs`,
`--steps-per-execution` if given) into a temporary folder, with a callback last in the list
that notes when each call of the compiled training step and its per-step callbacks end, and
a timer around the final SavedModel export. Prints one JSON line:
  - `first_call_s`: from the start of `fit` to the end of the first call (tracing included);
  - `step_ms`: the median interval between two calls of the same epoch, after the first
    epoch, divided by the steps per call (steps and per-step callbacks; not the epoch ends);
    null with `--epochs 1`;
  - `fit_s`, `export_s`, `total_s` (`train`'s whole run, imports excluded), and
    `test_bits_per_dim`.
Runs with an older keras_flow on `PYTHONPATH` too, for before/after pairs (without
`--steps-per-execution`, which older versions lack).
"""

import argparse
import json
import statistics
import sys
import tempfile
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the preset's)")
    p.add_argument("--steps-per-execution", type=int, default=1,
                   help="train.py's --steps-per-execution (1)")
    return p.parse_args(argv)


def median_step_ms(calls):
    """The median of `(t - t0) / (b - b0)` ms over consecutive calls `(epoch, b0, t0)`,
    `(epoch, b, t)` of the same epoch after the first (the first epoch's calls include the
    tracing); None when there are none (one epoch)."""
    per_step = [(t - t0) * 1e3 / (b - b0) for (e0, b0, t0), (e, b, t) in zip(calls, calls[1:])
                if e0 == e and e and b > b0]
    return round(statistics.median(per_step), 2) if per_step else None


def main(argv=None):
    args = parse_args(argv)
    import keras

    from keras_flow import training

    calls = []  # (epoch, index of the call's last step in the epoch, time)

    class CallClock(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            calls.append((None, None, time.perf_counter()))

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            calls.append((self.epoch, batch, time.perf_counter()))

    make_callbacks, export = training.make_callbacks, training.export
    export_seconds = []

    def with_clock(*fn_args, **kwargs):
        callbacks, fitted = make_callbacks(*fn_args, **kwargs)
        return callbacks + [CallClock()], fitted

    def timed_export(*fn_args, **kwargs):
        started = time.perf_counter()
        try:
            return export(*fn_args, **kwargs)
        finally:
            export_seconds.append(time.perf_counter() - started)

    training.make_callbacks, training.export = with_clock, timed_export
    options = {"epochs": args.epochs} if args.epochs else {}
    if args.steps_per_execution != 1:
        options["steps_per_execution"] = args.steps_per_execution
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = training.train(training.TrainConfig(out=folder, verbose=0, **options))
        total = time.perf_counter() - started
    record = {
        "steps_per_execution": args.steps_per_execution,
        "first_call_s": round(calls[1][2] - calls[0][2], 2),
        "step_ms": median_step_ms(calls),
        "fit_s": result["seconds"], "export_s": round(sum(export_seconds), 2),
        "total_s": round(total, 2), "test_bits_per_dim": round(result["test_bits_per_dim"], 4),
        "steps": result["steps"],
    }
    sys.stdout.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

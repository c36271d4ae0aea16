"""Where a train.py run's time goes outside the training steps: seconds per callback.

    python benchmarks/epoch_end_costs.py --dataset npz:runs/natural32/natural32.npz \\
        --levels 3 --depth 8 --hidden-width 128 --batch-size 64 --max-seconds 120

Runs train.py with the flags given (all of them train.py's) and times every call of each
callback's `on_epoch_end`, `on_train_batch_end` and `on_train_end` (keras_flow's callbacks and
Keras's TensorBoard). After the run it prints one line per callback and hook: the calls, the
total, the mean and the largest (the first call of a traced function carries its trace).
The timing wraps the hooks in this process only; train.py itself is unchanged.
"""

import collections
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

HOOKS = ("on_epoch_end", "on_train_batch_end", "on_train_end")


def timed_hooks(classes, totals):
    """Wraps each hook that a class of `classes` defines itself, adding its durations to
    `totals[(class name, hook)]`."""
    for cls in classes:
        for name in HOOKS:
            if name in cls.__dict__:
                setattr(cls, name, _timed(cls.__dict__[name], (cls.__name__, name), totals))


def _timed(hook, key, totals):
    def timed(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return hook(self, *args, **kwargs)
        finally:
            totals[key].append(time.perf_counter() - start)
    return timed


def callback_classes():
    import keras
    from keras_flow import callbacks

    found = [value for value in vars(callbacks).values() if isinstance(value, type)
             and issubclass(value, keras.callbacks.Callback)]
    return found + [keras.callbacks.TensorBoard]


def report(totals):
    """One line per (callback, hook), the most expensive first."""
    lines = []
    for (name, hook), seconds in sorted(totals.items(), key=lambda item: -sum(item[1])):
        lines.append(f"{name:24s} {hook:20s} calls {len(seconds):6d}  total {sum(seconds):8.2f} s"
                     f"  mean {1000 * sum(seconds) / len(seconds):9.1f} ms"
                     f"  max {1000 * max(seconds):8.1f} ms")
    return "\n".join(lines)


def main(argv=None):
    import train

    totals = collections.defaultdict(list)
    timed_hooks(callback_classes(), totals)
    try:
        return train.main(argv)
    finally:
        print(report(totals))


if __name__ == "__main__":
    sys.exit(main())

"""`TimedEvaluation`: held-out bits/dim at fixed amounts of training time or steps, for the
benchmarks that compare runs at equal budgets (fashion_mnist.py)."""

import time

import keras
import numpy as np
from keras import ops

from keras_flow.callbacks import StepCounter
from keras_flow.callbacks import ema_weights
from keras_flow.callbacks import evaluate_bits_per_dim


class TimedEvaluation(keras.callbacks.Callback):
    """Evaluates bits/dim on `dataset` at fixed amounts of training time (or steps), then stops.

    Training time runs from the start of `fit` (graph tracing included) and excludes the
    evaluations themselves, so runs of different speeds compare at equal training budgets;
    `unit="steps"` compares at equal numbers of steps instead (robust to a host whose speed
    varies). At each point `report` receives `{"training_seconds", "steps", "train_bits_per_dim"
    (the epoch's running mean), "window_train_bits_per_dim" (the mean over the steps since the
    previous point), "test_bits_per_dim", "eval_seconds"}`; training stops after the last
    point, or at a non-finite loss (reported with `"diverged": True`).

    Args:
        dataset: held-out `tf.data.Dataset`.
        points: training seconds (or steps) at which to evaluate, e.g. `(120, 240, 360)`.
        report: called with each point's dict (e.g. to print a JSON line).
        unit: `"seconds"` (default) or `"steps"`.
    """

    def __init__(self, dataset, points, report, unit="seconds"):
        super().__init__()
        if unit not in ("seconds", "steps"):
            raise ValueError(f"unit must be 'seconds' or 'steps'; got {unit!r}.")
        self.unit = unit
        self.dataset = dataset
        self.points = sorted(float(p) for p in points)
        self.report = report
        self.results = []
        self.counter = StepCounter()
        self._start = None
        self._excluded = 0.0
        self._epoch_steps = 0  # steps of the epoch at the previous batch callback...
        self._previous_mean = 0.0  # ...and the epoch's running mean then
        self._window = []  # (steps, summed bits/dim) per batch callback since the last point

    @property
    def steps(self):
        """Training steps so far (`StepCounter`)."""
        return self.counter.step

    def training_seconds(self):
        return time.monotonic() - self._start - self._excluded

    def progress(self):
        """Training seconds or steps so far, in the unit of the points."""
        return self.steps if self.unit == "steps" else self.training_seconds()

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.counter.on_epoch_begin(epoch)
        self._epoch_steps, self._previous_mean = 0, 0.0

    def on_train_batch_end(self, batch, logs=None):
        # `batch` indexes the epoch's last step so far (with Keras's steps_per_execution a
        # call of the compiled step runs several)
        self.counter.on_train_batch_end(batch)
        self._record_steps(batch + 1, logs)
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            self._emit({"diverged": True, "loss": float(loss)}, logs)
            self.model.stop_training = True
        elif len(self.results) < len(self.points) and (
                self.progress() >= self.points[len(self.results)]):
            evaluated = time.monotonic()
            test = self._evaluate()
            self._excluded += time.monotonic() - evaluated
            self._emit({"test_bits_per_dim": round(test, 4),
                        "eval_seconds": round(time.monotonic() - evaluated, 1)}, logs)
            if len(self.results) == len(self.points):
                self.model.stop_training = True

    def _evaluate(self):
        """Test bits/dim (EMA weights if kept). `evaluate` resets and refills the metrics that
        `fit` shares with it, so their training state is saved and put back: the running
        means of the following steps stay means over training batches only."""
        saved = [(v, ops.convert_to_numpy(v)) for v in self.model.metrics_variables]
        with ema_weights(self.model):
            test = evaluate_bits_per_dim(self.model, self.dataset)
        for variable, value in saved:
            variable.assign(value)
        return test

    def _record_steps(self, done, logs):
        """Recovers the summed bits/dim of the epoch's steps `k + 1..n` since the previous
        callback from the running means Keras logs after `k` and `n = done` steps:
        `b_(k+1) + ... + b_n = n m_n - k m_k`."""
        mean = (logs or {}).get("bits_per_dim")
        if mean is None:
            return
        self._window.append((done - self._epoch_steps,
                             done * float(mean) - self._epoch_steps * self._previous_mean))
        self._epoch_steps, self._previous_mean = done, float(mean)

    def _emit(self, values, logs):
        train = (logs or {}).get("bits_per_dim")
        steps = sum(count for count, _ in self._window)
        window = sum(total for _, total in self._window) / steps if steps else None
        self._window = []
        result = {"training_seconds": round(self.training_seconds(), 1), "steps": self.steps,
                  "train_bits_per_dim": None if train is None else round(float(train), 4),
                  "window_train_bits_per_dim": None if window is None else round(window, 4),
                  **values}
        self.results.append(result)
        self.report(result)

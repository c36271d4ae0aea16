"""The run's step count and clock: `StepCounter`, `TimeLimit`, and `SpendBudget`.

`StepCounter` is the one count of global training steps; the other callbacks read it.
`SpendBudget` is `--budget-decay`: it tells the learning-rate schedule what share of the
`--max-seconds` budget is spent, so that a cosine decay reaches 0 when the time is up.
"""

import math
import time

import keras

from keras_flow.optimizers import learning_rate_schedule_of


class StepCounter(keras.callbacks.Callback):
    """Global training steps (batches) so far, counting those before a resume.

    Put it first in the callback list: the others read `step` and `epoch` from it. With
    Keras's `steps_per_execution = n` the batch callbacks run once per n steps, and `batch` is
    the index of the last of them in the epoch: the count follows that index.
    """

    def __init__(self, initial_step=0):
        super().__init__()
        self.step = int(initial_step)
        self.epoch = 0
        self._epoch_start = self.step

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._epoch_start = self.step

    def on_train_batch_end(self, batch, logs=None):
        self.step = self._epoch_start + batch + 1


class TimeLimit(keras.callbacks.Callback):
    """Stops training after `max_seconds` of wall-clock time (from the first `fit`'s start).

    The stop comes after the current step; the epoch then ends as usual (held-out evaluation,
    checkpoint), and `reached` tells the caller that the limit, not the epoch count, ended it.
    Under several workers they agree on the step (`distribute.any_worker`).
    """

    def __init__(self, max_seconds):
        super().__init__()
        self.max_seconds = float(max_seconds)
        self.start = None
        self.reached = False

    def on_train_begin(self, logs=None):
        if self.start is None:
            self.start = time.monotonic()

    def elapsed(self):
        """Seconds since the first `fit` of this process started (0 before it)."""
        return 0.0 if self.start is None else time.monotonic() - self.start

    def on_train_batch_end(self, batch, logs=None):
        if math.isinf(self.max_seconds):
            return
        from keras_flow.distribute import any_worker

        # Workers' clocks differ: every worker stops at the step where the first one is due.
        if any_worker(self.elapsed() >= self.max_seconds,
                      self.model.distribute_strategy):
            self.reached = True
            self.model.stop_training = True


class SpendBudget(keras.callbacks.Callback):
    """Before every step, sets a `BudgetCosineDecay`'s `spent` to `clock() / max_seconds`, so
    the learning rate anneals to 0 when `max_seconds` of `clock` have passed; with `progress`,
    to the larger of that and `progress()`, so that it reaches 0 where training ends when the
    last step comes before the time is up.

    Args:
        max_seconds: the time budget.
        clock: seconds of training so far (e.g. the seconds since `TimeLimit` started, or
            the benchmarks' `TimedEvaluation.training_seconds`).
        progress: the share of the run's steps done so far, or None (the clock alone).
    """

    def __init__(self, max_seconds, clock, progress=None):
        super().__init__()
        if not 0 < max_seconds < math.inf:
            raise ValueError(f"SpendBudget needs a finite max_seconds > 0; got {max_seconds}.")
        self.max_seconds = float(max_seconds)
        self.clock = clock
        self.progress = progress
        self._spent = None  # the schedule's variable, found once per `fit`

    def on_train_begin(self, logs=None):
        schedule = learning_rate_schedule_of(self.model.optimizer)
        if not hasattr(schedule, "spent"):
            raise ValueError("SpendBudget needs an optimizer whose learning rate is a "
                             "BudgetCosineDecay (make_optimizer(..., budget_decay=True)).")
        self._spent = schedule.spent

    def on_train_batch_begin(self, batch, logs=None):
        spent = self.clock() / self.max_seconds
        if self.progress is not None:
            spent = max(spent, self.progress())
        self._spent.assign(min(1.0, spent))

"""Training callbacks: held-out bits/dim, best weights, samples, curves, checkpoints, time limit.

They share one `StepCounter` (global training steps, resumed from a checkpoint) and write every
file atomically (`keras_flow.files`), so a kill at any moment leaves whole files. When the
optimizer keeps an exponential moving average of the weights (`use_ema`), everything that
evaluates the model (held-out bits/dim, best weights, samples) swaps the averages in for the
evaluation (`ema_weights`) and back out for training.
"""

import contextlib
import math
import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from keras_flow import files
from keras_flow.image_grid import make_grid
from keras_flow.image_grid import save_png
from keras_flow.numerics import NonFiniteLossError
from keras_flow.numerics import all_finite
from keras_flow.numerics import is_finite_loss
from keras_flow.optimizers import learning_rate_schedule_of
from keras_flow.optimizers import unwrapped

CHECKPOINT_STATE = "state.json"
CHECKPOINT_PATTERN = "ckpt-*.weights.h5"
GRID_BORDER = 96  # grey frame around each sample of a grid


@contextlib.contextmanager
def ema_weights(model):
    """Swaps the optimizer's moving averages into `model` for the block (no-op without EMA)."""
    optimizer = unwrapped(model.optimizer)
    if not getattr(optimizer, "use_ema", False) or not optimizer.built:
        yield
        return
    pairs = list(zip(model.trainable_variables, optimizer._model_variables_moving_average))
    _swap(pairs)
    try:
        yield
    finally:
        _swap(pairs)


def _swap(pairs):
    for variable, average in pairs:
        value = variable.numpy()
        variable.assign(average)
        average.assign(value)


@contextlib.contextmanager
def deferred_ema_finalize(model):
    """Keeps `fit` from copying the EMA weights into the model when it returns.

    `fit` ends with `optimizer.finalize_variable_values`, which overwrites the weights with
    their averages; training in several `fit` calls (resuming mid-epoch) must not do that
    between calls. Call `model.optimizer.finalize_variable_values(...)` once at the end.
    """
    optimizer = model.optimizer
    optimizer.finalize_variable_values = lambda var_list: None
    try:
        yield
    finally:
        del optimizer.finalize_variable_values


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
    the learning rate anneals to 0 when `max_seconds` of `clock` have passed.

    Args:
        max_seconds: the time budget.
        clock: seconds of training so far (e.g. `TimedEvaluation.training_seconds`, or the
            seconds since `TimeLimit` started).
    """

    def __init__(self, max_seconds, clock):
        super().__init__()
        if not 0 < max_seconds < math.inf:
            raise ValueError(f"SpendBudget needs a finite max_seconds > 0; got {max_seconds}.")
        self.max_seconds = float(max_seconds)
        self.clock = clock
        self._spent = None  # the schedule's variable, found once per `fit`

    def on_train_begin(self, logs=None):
        schedule = learning_rate_schedule_of(self.model.optimizer)
        if not hasattr(schedule, "spent"):
            raise ValueError("SpendBudget needs an optimizer whose learning rate is a "
                             "BudgetCosineDecay (make_optimizer(..., budget_decay=True)).")
        self._spent = schedule.spent

    def on_train_batch_begin(self, batch, logs=None):
        self._spent.assign(min(1.0, self.clock() / self.max_seconds))


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
        self.steps = 0
        self._start = None
        self._excluded = 0.0
        self._epoch_start = 0  # `steps` when the epoch began
        self._epoch_steps = 0  # steps of the epoch at the previous batch callback...
        self._previous_mean = 0.0  # ...and the epoch's running mean then
        self._window = []  # (steps, summed bits/dim) per batch callback since the last point

    def training_seconds(self):
        return time.monotonic() - self._start - self._excluded

    def progress(self):
        """Training seconds or steps so far, in the unit of the points."""
        return self.steps if self.unit == "steps" else self.training_seconds()

    def on_train_begin(self, logs=None):
        self._start = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start, self._epoch_steps, self._previous_mean = self.steps, 0, 0.0

    def on_train_batch_end(self, batch, logs=None):
        # `batch` indexes the epoch's last step so far (with Keras's steps_per_execution a
        # call of the compiled step runs several)
        self.steps = self._epoch_start + batch + 1
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


class HeldOutBitsPerDim(keras.callbacks.Callback):
    """Adds `val_bits_per_dim` and `test_bits_per_dim` to the epoch logs.

    Evaluates each held-out dataset (fixed dequantisation noise) with the EMA weights when the
    optimizer keeps them. Put it before the callbacks that read these logs.

    Args:
        datasets: `{log_name: tf.data.Dataset or None}`, e.g.
            `{"val_bits_per_dim": data.validation, "test_bits_per_dim": data.test}`.
    """

    def __init__(self, datasets):
        super().__init__()
        self.datasets = {name: ds for name, ds in datasets.items() if ds is not None}

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.evaluate())

    def evaluate(self):
        with ema_weights(self.model):
            return {name: evaluate_bits_per_dim(self.model, dataset)
                    for name, dataset in self.datasets.items()}


def evaluate_bits_per_dim(model, dataset):
    """Mean bits/dim of `model` over `dataset` (float)."""
    return float(model.evaluate(dataset, verbose=0, return_dict=True)["bits_per_dim"])


class KeepBest(keras.callbacks.Callback):
    """Saves the weights whenever `monitor` (validation bits/dim) reaches a new minimum.

    The weights (EMA ones when the optimizer keeps them) go to `<folder>/best.weights.npz` and
    the value to `<folder>/best.json`, both atomically, so a resumed run knows the best so far.
    `restore(model)` loads them at the end of training. Never monitor the test set.
    """

    def __init__(self, folder, counter, monitor="val_bits_per_dim"):
        super().__init__()
        self.folder = Path(folder)
        self.counter = counter
        self.monitor = monitor
        self.record = files.read_json(self.folder / "best.json")

    @property
    def best(self):
        return np.inf if self.record is None else self.record[self.monitor]

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not np.isfinite(value) or value >= self.best:
            return
        with ema_weights(self.model):
            weights = self.model.get_weights()
        with files.atomic_path(self.folder / "best.weights.npz") as temporary:
            np.savez(temporary, *weights)
        self.record = {self.monitor: float(value), "epoch": epoch + 1, "step": self.counter.step}
        files.write_json(self.folder / "best.json", self.record)

    def restore(self, model):
        """Loads the best weights into `model`; returns False when there are none."""
        path = self.folder / "best.weights.npz"
        if self.record is None or not path.exists():
            return False
        with np.load(path) as archive:
            model.set_weights([archive[f"arr_{i}"] for i in range(len(archive.files))])
        return True


class SampleGrids(keras.callbacks.Callback):
    """Writes a grid of samples per temperature each epoch, as PNG files and to TensorBoard.

    Files: `<folder>/epoch_0003_T0.7.png` (one per epoch and temperature); TensorBoard images
    `samples/T=0.7` in `<log_dir>/samples`. The latent noise has a fixed seed, so the grids
    of successive epochs show the same latents decoded by the evolving model.

    Args:
        folder: where the PNG files go.
        temperatures: e.g. `(0.0, 0.5, 0.7, 0.8, 1.0)`.
        n_bits: the data's bits per channel, for `postprocess`.
        num_samples: images per grid.
        log_dir: TensorBoard folder (None: no TensorBoard images).
        seed: seed of the latent noise.
    """

    def __init__(self, folder, temperatures, n_bits, num_samples=64, log_dir=None, seed=0):
        super().__init__()
        self.folder = Path(folder)
        self.temperatures = tuple(float(t) for t in temperatures)
        self.n_bits = int(n_bits)
        self.num_samples = int(num_samples)
        self.log_dir = log_dir
        self.seed = int(seed)
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        with ema_weights(self.model):
            grids = write_sample_grids(self.model, self.folder, self.temperatures, self.n_bits,
                                       self.num_samples, self.seed,
                                       prefix=f"epoch_{epoch + 1:04d}_")
        if self.log_dir is not None:
            self._write_summaries(grids, epoch)

    def _write_summaries(self, grids, epoch):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(Path(self.log_dir) / "samples"))
        with self._writer.as_default():
            for temperature, grid in grids.items():
                image = grid if grid.ndim == 3 else grid[..., None]
                tf.summary.image(f"samples/T={temperature:g}", image[None], step=epoch)
        self._writer.flush()


def write_sample_grids(model, folder, temperatures, n_bits, num_samples=64, seed=0, prefix=""):
    """Writes `<folder>/<prefix>T<t>.png`, a grid of samples per temperature `t`.

    All temperatures decode the same standard normal noise (seeded) scaled by `t`, in one
    batch. Each sample gets a one-pixel grey frame; small grids are enlarged to >= 256 px. A class-conditional model gets labels `0, 1, ..., C-1, 0, ...` and `C` columns, so
    each column shows one class.

    Returns:
        `{temperature: uint8 grid}`.
    """
    from keras_flow.preprocessing import postprocess

    temperatures = tuple(float(t) for t in temperatures)
    noise = model.latent_noise(num_samples, 1.0, seed)
    eps_list = [ops.concatenate([eps * t for t in temperatures]) for eps in noise]
    labels, columns = None, None
    if model.num_classes:
        labels = np.tile(np.arange(num_samples, dtype="int32") % model.num_classes,
                         len(temperatures))
        columns = model.num_classes
    images = np.asarray(postprocess(model.decode(eps_list, labels), n_bits))
    images = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=GRID_BORDER)
    grids = {}
    for index, temperature in enumerate(temperatures):
        grid = _enlarged(make_grid(images[index * num_samples:(index + 1) * num_samples],
                                   columns))
        save_png(grid, Path(folder) / f"{prefix}T{temperature:g}.png")
        grids[temperature] = grid
    return grids


def _enlarged(grid, min_width=256):
    """Small grids (e.g. of 8x8 digits) repeated pixel by pixel to at least `min_width` wide."""
    factor = max(1, -(-min_width // grid.shape[1]))
    return np.repeat(np.repeat(grid, factor, axis=0), factor, axis=1)


class MetricsHistory(keras.callbacks.Callback):
    """Per-epoch metrics in `<folder>/history.json` and the bits/dim curves in a PNG.

    Each record: `epoch` (1-based), `step`, `seconds` (since this process started training)
    and every scalar in the epoch logs (`bits_per_dim`, `val_bits_per_dim`,
    `test_bits_per_dim`, `learning_rate`, ...). A resumed run keeps the records of the epochs
    before the one it resumes in.
    """

    def __init__(self, folder, counter, resume_epoch=0, plot_name="bits_per_dim.png"):
        super().__init__()
        self.folder = Path(folder)
        self.counter = counter
        self.plot_name = plot_name
        previous = files.read_json(self.folder / "history.json", [])
        self.records = [record for record in previous if record["epoch"] <= resume_epoch]
        self.start = None

    def on_train_begin(self, logs=None):
        if self.start is None:
            self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "step": self.counter.step,
                  "seconds": round(time.monotonic() - self.start, 3)}
        record.update({k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0})
        record["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
        self.records.append(record)
        files.write_json(self.folder / "history.json", self.records)
        plot_bits_per_dim(self.records, self.folder / self.plot_name)


def plot_bits_per_dim(records, path):
    """Plots train / validation / test bits/dim against the epoch into a PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    epochs = [record["epoch"] for record in records]
    for key, label in (("bits_per_dim", "train"), ("val_bits_per_dim", "validation"),
                       ("test_bits_per_dim", "test")):
        values = [record.get(key, np.nan) for record in records]
        if not np.all(np.isnan(values)):
            axis.plot(epochs, values, marker=".", label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("bits/dim")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with files.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)


class Checkpoint(keras.callbacks.Callback):
    """Saves the full training state every `every` steps, at each epoch end and at the end.

    State = model and optimizer variables (`ckpt-<step>.weights.h5`, which includes the
    optimizer's step count, moments and EMA) plus `state.json` naming that file and the
    global step; the file is written before the state that names it, and older files are
    deleted after, so a kill at any moment leaves one consistent pair. `restore` reloads it.
    Non-finite weights are never saved: `save` raises `NonFiniteLossError` instead.

    Finite weights can still be bad: the loss of the step after a checkpoint is computed from
    its weights, and may overflow. So the checkpoint before the newest is kept (`fallback` in
    `state.json`, with `confirmed: false`) until a finite loss computed from the newest's
    weights confirms it (at the next call's batch end, in this run or a resumed one), and
    `settle(loss_finite)`, called when training stops at a non-finite value, puts
    `state.json` back on it when the newest was not confirmed.

    Args:
        folder: the checkpoint folder (`<out>/checkpoints`).
        counter: the run's `StepCounter`.
        every: steps between checkpoints (0: epoch ends and the end of training only).
        total_steps: the step count of a complete run (marks the final state finished).
        time_limit: the run's `TimeLimit` callback, or None.
    """

    def __init__(self, folder, counter, every, total_steps, time_limit=None):
        super().__init__()
        self.folder = Path(folder)
        self.counter = counter
        self.every = int(every)
        self.total_steps = int(total_steps)
        self.time_limit = time_limit
        self.saved_step = None
        self._last_step = counter.step
        self.newest = files.read_json(self.folder / CHECKPOINT_STATE)  # on disk, or None

    def on_train_batch_end(self, batch, logs=None):
        # at a multiple of `every`, or past one when a call ran several steps (Keras's
        # steps_per_execution): the batch callbacks then run once per call
        previous, self._last_step = self._last_step, self.counter.step
        # this call's losses were computed from the weights of its first step, those after
        # step `previous`: a finite loss confirms a checkpoint saved then or before
        if is_finite_loss(logs) and self.newest is not None and self.newest["step"] <= previous:
            self.confirm()
        if self.every and self.counter.step // self.every > previous // self.every:
            self.save()

    def on_epoch_end(self, epoch, logs=None):
        self.save()

    def on_train_end(self, logs=None):
        finished = self.finished
        self.save(finished=finished)
        if finished:  # no step will check the last weights: drop the one kept before them
            self.confirm()

    @property
    def finished(self):
        limit_reached = self.time_limit is not None and self.time_limit.reached
        return limit_reached or self.counter.step >= self.total_steps

    def save(self, finished=False):
        step = self.counter.step
        if step == self.saved_step and not finished:
            return
        if not all_finite(self.model.weights):
            raise NonFiniteLossError(
                f"The weights are non-finite at step {step}; not saving them, so the last "
                f"checkpoint in {self.folder} stays as it was. Lower the learning rate or "
                "clip the gradients, and resume from it.", step=step)
        name = f"ckpt-{step:09d}.weights.h5"
        with files.atomic_path(self.folder / name) as temporary:
            self.model.save_weights(temporary)
        fallback, confirmed = self.fallback, self.confirmed
        if self.newest is None or self.newest["weights"] != name:
            # new weights, unchecked; an unconfirmed newest is no fallback: keep the one before
            if self.newest is not None and confirmed:
                fallback = self._entry(self.newest)
            confirmed = False
        self._write_state({"weights": name, "step": step, "finished": bool(finished),
                           "confirmed": confirmed, "fallback": fallback})
        self.saved_step = step

    @property
    def confirmed(self):
        """Whether a finite loss was computed from the newest checkpoint's weights (a state
        file without the key predates the check: taken as confirmed)."""
        return self.newest is None or self.newest.get("confirmed", True)

    @property
    def fallback(self):
        """`{"weights", "step"}` of the checkpoint kept before an unconfirmed newest, or None."""
        return None if self.newest is None else self.newest.get("fallback")

    def confirm(self):
        """Marks the newest checkpoint good (a finite loss was computed from its weights) and
        deletes the one kept before it."""
        if not self.confirmed:
            self._write_state(dict(self.newest, confirmed=True, fallback=None))

    def settle(self, loss_finite):
        """Leaves `state.json` on the last checkpoint known to be good, after training stopped
        at a non-finite loss (`loss_finite` False) or weight (True: the loss computed from the
        newest checkpoint's weights was finite, which confirms it).

        A non-finite loss may come from the newest checkpoint's weights if no finite loss
        confirmed them: then `state.json` goes back to the checkpoint before it, and the
        newest is deleted. Returns `(good, suspect)`: the state `state.json` now names if it is
        confirmed (else None), and that of an unconfirmed checkpoint left in place because
        none precedes it (else None)."""
        if loss_finite or self.confirmed:
            self.confirm()
            return self.newest, None
        if self.fallback is None:
            return None, self.newest
        self._write_state(dict(self.fallback, finished=False, confirmed=True, fallback=None))
        self.saved_step = self.newest["step"]
        return self.newest, None

    @staticmethod
    def _entry(state):
        return {"weights": state["weights"], "step": state["step"]}

    def _write_state(self, state):
        """Writes `state.json`, then deletes the checkpoint files it does not name."""
        files.write_json(self.folder / CHECKPOINT_STATE, state)
        self.newest = state
        keep = {state["weights"]} | ({state["fallback"]["weights"]} if state.get("fallback")
                                     else set())
        for old in self.folder.glob(CHECKPOINT_PATTERN):
            if old.name not in keep:
                old.unlink()

    @staticmethod
    def restore(model, folder):
        """Loads the last checkpoint in `folder` into the compiled `model`.

        Returns:
            The checkpoint state `{"weights", "step", "finished"}`, or None when there is none.
        """
        state = files.read_json(Path(folder) / CHECKPOINT_STATE)
        if state is None:
            return None
        model.build_optimizer()  # its variables must exist to receive the saved ones
        model.load_weights(Path(folder) / state["weights"])
        return state

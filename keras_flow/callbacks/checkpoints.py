"""Checkpoints: the full training state every N steps (`Checkpoint`) and the best weights by
validation bits/dim (`KeepBest`).

`Checkpoint` is what train.py uses: it saves at any step, so a run resumes mid-epoch with the
step count continuing, and it never keeps a checkpoint that a non-finite loss may have come
from (`settle`). The other mechanism, `keras_flow.distribute.BackupAndRestore`, serves a plain
`model.fit` under the multi-worker strategy: Keras's own callback, which resumes at an epoch
start, with each worker writing its own folder (docs/training.md). Every file is written
atomically (`keras_flow.files`), so a kill at any moment leaves whole files.
"""

import math
from pathlib import Path

import keras
import numpy as np

from keras_flow import files
from keras_flow.callbacks.ema import ema_weights
from keras_flow.callbacks.non_finite import NonFiniteLossError
from keras_flow.callbacks.non_finite import all_finite
from keras_flow.callbacks.non_finite import is_finite_loss
from keras_flow.optimizers import build_optimizer

CHECKPOINT_STATE = "state.json"
CHECKPOINT_PATTERN = "ckpt-*.weights.h5"


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
        total_steps: the step count of a complete run (marks the final state finished);
            None when only the time limit ends it.
        time_limit: the run's `TimeLimit` callback, or None.
    """

    def __init__(self, folder, counter, every, total_steps, time_limit=None):
        super().__init__()
        self.folder = Path(folder)
        self.counter = counter
        self.every = int(every)
        self.total_steps = math.inf if total_steps is None else int(total_steps)
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
        build_optimizer(model)  # its variables must exist to receive the saved ones
        model.load_weights(Path(folder) / state["weights"])
        return state

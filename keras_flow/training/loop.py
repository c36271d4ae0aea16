"""The training loop: the callbacks in the order they must run, and `fit` from the checkpointed
step to the last, finishing an interrupted epoch first (the mid-epoch resume)."""

import dataclasses
import functools
import math
import time

import keras

from keras_flow import callbacks as flow_callbacks
from keras_flow import distribute
from keras_flow import files
from keras_flow import interrupts
from keras_flow.training.config import recipe_line


@dataclasses.dataclass
class Fitted:
    """The callbacks `finish` reads, and the seconds `fit` took."""

    counter: flow_callbacks.StepCounter
    keep_best: flow_callbacks.KeepBest
    time_limit: flow_callbacks.TimeLimit
    seconds: float = 0.0


def resume_step(state):
    """The global step a run starts from: the checkpoint's, or 0."""
    return 0 if state is None else state["step"]


def make_callbacks(model, data, plan, initial_step, interrupt=None):
    """The training callbacks, in the order they must run, and the `Fitted` that reads them;
    see `keras_flow.callbacks`.

    `KeepTrainingWeights` comes first, so that the weights are the training ones again before
    any other callback's `on_train_end` (the final checkpoint). The non-finite guard and the
    Ctrl-C stop (`keras_flow.interrupts`, with the `InterruptRequest` `interrupt`) come before
    the checkpoint: both raise before it could save a non-finite or half-stepped state.
    `ActnormCheck` comes last, after anything that restores weights."""
    config, out = plan.config, plan.out
    counter = flow_callbacks.StepCounter(initial_step)
    time_limit = flow_callbacks.TimeLimit(config.max_seconds or math.inf)
    held_out = flow_callbacks.HeldOutBitsPerDim(
        {"val_bits_per_dim": data.validation,
         "test_bits_per_dim": data.test if config.test_every_epoch else None})
    keep_best = flow_callbacks.KeepBest(out, counter)
    samples = flow_callbacks.SampleGrids(out / "samples", config.temperatures, config.n_bits,
                                         config.num_samples, out / "tensorboard", config.seed)
    history = flow_callbacks.MetricsHistory(out, counter, initial_step // plan.steps_per_epoch)
    checkpoint = flow_callbacks.Checkpoint(out / "checkpoints", counter, config.checkpoint_every,
                                           plan.total_steps, time_limit)
    tensorboard = keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False,
                                              profile_batch=0)
    guard = flow_callbacks.NonFiniteGuard(
        data.train, counter, advice=divergence_advice(config),
        checkpoint=functools.partial(last_checkpoint_note, checkpoint))
    stop = [] if interrupt is None else [interrupts.StopOnInterrupt(
        interrupt, checkpoint.save, functools.partial(interrupted_message, plan))]
    # the schedule ends where training ends: at the time limit or the last step, whichever
    # comes first
    progress = None if plan.total_steps is None else functools.partial(
        _share_of_steps, counter, plan.total_steps)
    budget = [flow_callbacks.SpendBudget(config.max_seconds, time_limit.elapsed, progress)
              ] if config.budget_decay else []
    callbacks = [flow_callbacks.KeepTrainingWeights(), counter, time_limit, *budget, guard,
                 *stop, checkpoint, held_out, keep_best, samples, history, tensorboard,
                 distribute.ActnormCheck()]
    return callbacks, Fitted(counter, keep_best, time_limit)


def _share_of_steps(counter, total_steps):
    return counter.step / total_steps


def divergence_advice(config):
    """What to try after a non-finite loss, as flags with the run's current values."""
    clipping = ("gradient clipping (--clip-norm 50)" if not config.clip_norm else
                f"tighter clipping (--clip-norm {config.clip_norm / 2:g}, now "
                f"{config.clip_norm:g})")
    tries = [f"a longer warm-up (--warmup, now {config.warmup})",
             f"a lower learning rate (--lr {config.lr / 2:g}, now {config.lr:g})", clipping]
    if config.n_bits > 5:
        tries.append(f"fewer bits per channel (--n-bits 5, now {config.n_bits})")
    if config.mixed_precision == "fp16":
        tries.append("--mixed-precision bf16 or off")
    return f"Try {', '.join(tries[:-1])}, or {tries[-1]}."


def last_checkpoint_note(checkpoint, loss_finite):
    """Where to continue from after a non-finite value (`Checkpoint.settle`)."""
    good, suspect = checkpoint.settle(loss_finite)
    if suspect is not None:
        return (f"The only checkpoint (step {suspect['step']}) holds the weights this loss "
                "was computed from, so resuming from it would stop the same way: rerun with "
                "--overwrite (starts over) and a lower --lr or a --clip-norm.")
    if good is None:
        return "No checkpoint had been written yet."
    return (f"The last good checkpoint (step {good['step']}) is "
            f"{checkpoint.folder / good['weights']}; to continue from it, rerun with the same "
            "--out and a lower --lr or a --clip-norm.")


def interrupted_message(plan):
    state = files.read_json(plan.out / "checkpoints" / flow_callbacks.CHECKPOINT_STATE)
    return (f"Interrupted at step {state['step']}{_of_total(plan)}: checkpoint saved in "
            f"{plan.out / 'checkpoints'} ({state['weights']}). Rerun the same command to "
            "resume from it.")


def fit(model, data, plan, state, callbacks, fitted):
    """Fits from the checkpointed step (`state`) to the last; an interrupted epoch is finished
    first, in a `fit` call of its own. Returns `fitted` with the seconds it took."""
    if state is not None and state["finished"]:
        return fitted
    epoch, batch = divmod(resume_step(state), plan.steps_per_epoch)
    train = data.train.repeat()
    verbose = plan.config.verbose
    started = time.monotonic()
    if batch:
        model.fit(train, initial_epoch=epoch, epochs=epoch + 1, callbacks=callbacks,
                  steps_per_epoch=plan.steps_per_epoch - batch, verbose=verbose,
                  shuffle=False)
        epoch += 1
    if epoch < plan.epochs and not fitted.time_limit.reached:
        model.fit(train, initial_epoch=epoch, epochs=plan.epochs, callbacks=callbacks,
                  steps_per_epoch=plan.steps_per_epoch, verbose=verbose, shuffle=False)
    fitted.seconds = time.monotonic() - started
    return fitted


def start_message(plan, state, replicas=1):
    """Where the run writes, its recipe and precision (`recipe_line`), and how long it
    trains."""
    config = plan.config
    where = f"Output folder: {plan.out}\n{recipe_line(config)}"
    if state is None:
        batch = f"batch {config.batch_size}"
        if replicas > 1:
            batch += f" over {replicas} replicas, {config.batch_size / replicas:g} each"
        return (f"{where}\nTraining {config.model} {_length(config)}, in epochs of "
                f"{plan.steps_per_epoch} steps ({batch}).")
    epoch, batch = divmod(state["step"], plan.steps_per_epoch)
    if state["finished"]:
        return f"{where}\nTraining already finished at step {state['step']}; writing outputs."
    return (f"{where}\nResumed from checkpoint at step {state['step']}{_of_total(plan)}: "
            f"epoch {epoch + 1}, step {batch} of {plan.steps_per_epoch} within it.")


def _length(config):
    if config.max_seconds is None:
        return f"for {config.epochs} epochs"
    if config.epochs is None:
        return f"until {config.max_seconds:g} s are up (no --epochs)"
    return f"for {config.epochs} epochs or {config.max_seconds:g} s, whichever ends first"


def _of_total(plan):
    return "" if plan.total_steps is None else f" of {plan.total_steps}"


def stopped_by(fitted, plan):
    """What ended training: `"time"` (the `max_seconds` limit) or `"epochs"` (also for a run
    resumed after it had finished, from its step count)."""
    if fitted.time_limit.reached:
        return "time"
    finished_epochs = plan.total_steps is not None and fitted.counter.step >= plan.total_steps
    return "epochs" if finished_epochs else "time"

"""Ctrl-C (SIGINT) during training: finish the running step, save a checkpoint, then stop.

    with interrupts.sigint_requests() as request:
        model.fit(..., callbacks=[..., StopOnInterrupt(request, checkpoint.save, counter), ...])

Inside `sigint_requests()` the first SIGINT only sets `request.pending` (and says so on
stderr); `StopOnInterrupt` sees it at the end of the running step (or at the start of the next
epoch, when it arrives during the epoch-end evaluation), calls `save()` and raises
`TrainingInterrupted`, a `KeyboardInterrupt` whose message names the step and the checkpoint.
A second SIGINT interrupts at once, as Python does by default. The previous handler is back
when the block exits; outside the main thread the block changes nothing.
"""

import contextlib
import signal
import sys
import threading

import keras


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped on Ctrl-C after saving a checkpoint; `str(error)` says where.

    Attributes:
        step: the global step of the checkpoint saved.
    """

    def __init__(self, message, step=None):
        super().__init__(message)
        self.step = step

    def __str__(self):
        return self.args[0] if self.args else "interrupted"


class InterruptRequest:
    """Set by the SIGINT handler of `sigint_requests`; read by `StopOnInterrupt`."""

    def __init__(self):
        self.pending = False


@contextlib.contextmanager
def sigint_requests(announce=True):
    """Turns the first SIGINT into a request (see the module docstring); yields the request."""
    request = InterruptRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):
        if request.pending:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        request.pending = True
        if announce:
            print("\nInterrupt: saving a checkpoint after this step (Ctrl-C again to stop at "
                  "once, without saving).", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield request
    finally:
        signal.signal(signal.SIGINT, previous)


class StopOnInterrupt(keras.callbacks.Callback):
    """On a pending `InterruptRequest`: `save()`, then raise `TrainingInterrupted`.

    Put it after any callback that must see the last step (`StepCounter`, a non-finite guard)
    and before the checkpoint callback: it raises inside `fit`, so no epoch-end work runs.

    Args:
        request: the `InterruptRequest` of `sigint_requests()`.
        save: called with no argument to save the checkpoint of the current step.
        message: called with no argument after `save()`; returns the error's message.
    """

    def __init__(self, request, save, message):
        super().__init__()
        self.request = request
        self.save = save
        self.message = message

    def on_train_batch_end(self, batch, logs=None):
        self._stop_if_requested()

    def on_epoch_begin(self, epoch, logs=None):
        self._stop_if_requested()

    def _stop_if_requested(self):
        from keras_flow.distribute import any_worker

        # Ctrl-C reaches one host: all workers stop together (or the others would hang).
        if not any_worker(self.request.pending, self.model.distribute_strategy):
            return
        self.model.stop_training = True
        step = self.save()
        raise TrainingInterrupted(self.message(), step=step)

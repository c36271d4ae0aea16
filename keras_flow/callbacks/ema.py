"""The optimizer's moving averages of the weights (`ema`), swapped in for evaluation only.

When the optimizer keeps an exponential moving average of the weights (`use_ema`), everything
that evaluates the model (held-out bits/dim, best weights, samples) swaps the averages in for
the evaluation (`ema_weights`) and back out for training. Keras's `fit` ends by copying the
averages into the model (`optimizer.finalize_variable_values`); `KeepTrainingWeights` undoes
that, so that training can go on in another `fit` call (a resumed epoch, then the rest).
"""

import contextlib

import keras

from keras_flow import compat
from keras_flow.optimizers import unwrapped


@contextlib.contextmanager
def ema_weights(model):
    """Swaps the optimizer's moving averages into `model` for the block (no-op without EMA)."""
    optimizer = unwrapped(model.optimizer)
    if not getattr(optimizer, "use_ema", False) or not optimizer.built:
        yield
        return
    pairs = list(zip(model.trainable_variables, compat.ema_variables(optimizer)))
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


class KeepTrainingWeights(keras.callbacks.Callback):
    """Puts back the weights that `fit` replaced with their moving averages when it returned.

    Keras's `fit` ends with `optimizer.finalize_variable_values`, which overwrites the
    trainable weights with their averages, between the last epoch's end and `on_train_end`.
    This callback copies the weights at `on_train_begin` and at every epoch end and assigns
    them back at `on_train_end`. Put it first, so that its `on_train_end` runs before any
    callback that saves the training state; call `finalize_variable_values` yourself once
    training is over. Without `use_ema` it does nothing.
    """

    def __init__(self):
        super().__init__()
        self._weights = None

    def _uses_ema(self):
        optimizer = unwrapped(self.model.optimizer)
        return bool(getattr(optimizer, "use_ema", False))

    def _copy(self):
        if self._uses_ema():
            self._weights = [variable.numpy() for variable in self.model.trainable_variables]

    def on_train_begin(self, logs=None):
        self._copy()

    def on_epoch_end(self, epoch, logs=None):
        self._copy()

    def on_train_end(self, logs=None):
        if self._weights is not None:
            for variable, value in zip(self.model.trainable_variables, self._weights):
                variable.assign(value)
        self._weights = None

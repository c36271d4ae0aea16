"""Non-finite values in training: stop at once, say where they appeared, keep the last good state.

`NonFiniteGuard` is a training callback. After every step (with Keras's `steps_per_execution =
n`, after every call of n steps) it checks the loss and, in one compiled reduction, that every
weight of the model is finite; while both are, it copies the weights into an in-memory
snapshot (same device, one graph call). At the first non-finite loss, or the first non-finite
weight (a non-finite gradient reached the update), it

1. loads the snapshot, the last finite weights, back into the model;
2. runs `diagnose` on a training batch: an eager forward pass that records the output and the
   log-det of every flow layer in network order, then each level's prior term
   `log N(eps_l; 0, I)` and the loss, then (if all of those are finite) the gradient of every
   weight; the first non-finite value found names the layer or term;
3. raises `NonFiniteLossError`, whose one-paragraph message names the step, that layer or
   term, and what to try (warm-up, a lower learning rate, gradient clipping, n_bits).

It raises inside `fit`, before the callbacks after it in the list, so a `Checkpoint` placed
after the guard never saves non-finite weights. Finite weights that give a non-finite loss
at the next step are another matter: `Checkpoint.settle` (train.py calls it through the
`checkpoint` argument) then goes back to the checkpoint before them. The diagnosis is
`keras_flow.callbacks.diagnosis`.

Under `mixed_float16` Keras wraps the optimizer in a `LossScaleOptimizer`, which skips the
update of a step whose scaled gradients overflow and halves the loss scale: that is expected,
not a failure. The guard counts those steps (`skipped_steps`, added to the epoch logs as
`skipped_steps`) instead of stopping.

Example:
    >>> guard = NonFiniteGuard(dataset=data.train)
    >>> try:
    ...     model.fit(data.train, epochs=10, callbacks=[guard])
    ... except NonFiniteLossError as error:
    ...     print(error)   # "Non-finite loss (nan) at training step 37: the log-det of ..."
"""

import math

import keras
import numpy as np
import tensorflow as tf

from keras_flow.callbacks.diagnosis import diagnose
from keras_flow.callbacks.diagnosis import is_finite
from keras_flow.callbacks.diagnosis import tf_value
from keras_flow.callbacks.steps import StepCounter
from keras_flow.optimizers import is_loss_scaled
from keras_flow.optimizers import optimizer_steps

ADVICE = ("Try a longer learning-rate warm-up, a lower learning rate, gradient clipping "
          "(global norm, e.g. 50), or fewer bits per channel (n_bits=5), and check that the "
          "inputs are dequantised images in [-0.5, 0.5] (keras_flow.preprocessing.preprocess).")


class NonFiniteLossError(ArithmeticError):
    """Training met a non-finite loss or weight; the message names the step, where, and fixes.

    Attributes:
        step: the global training step (1-based) at which it was detected.
        where: the first non-finite layer or term `diagnose` found, or None.
    """

    def __init__(self, message, step=None, where=None):
        super().__init__(message)
        self.step = step
        self.where = where


def all_finite(variables):
    """True when every floating value of `variables` (Keras or TF variables) is finite
    (eager; for occasional checks such as before a checkpoint)."""
    return is_finite(list(variables))


def _is_floating(variable):
    return keras.backend.standardize_dtype(variable.dtype).startswith(("float", "bfloat"))


class WeightSnapshot:
    """An on-device copy of the floating `variables`, refreshed only while they are all finite.

    The copy is one flat float32 vector, so `update()` is a handful of ops in one compiled
    call (1-2 ms for the 167k weights of the digits preset on 2 CPU cores): concatenate, reduce
    `is_finite`, and assign if every value is finite; it returns that flag. `restore()`
    assigns the copy back.
    """

    def __init__(self, variables):
        self.variables = [v for v in variables if _is_floating(v)]
        self.sizes = [int(np.prod(v.shape)) for v in self.variables]
        with tf.init_scope():
            self.copy = tf.Variable(tf.zeros([sum(self.sizes)]), trainable=False)
        self.step = None
        self._update = tf.function(self._update_graph, autograph=False)

    def _flat(self):
        return tf.concat([tf.reshape(tf.cast(tf_value(v), tf.float32), [-1])
                          for v in self.variables], axis=0)

    def _update_graph(self):
        values = self._flat()
        finite = tf.reduce_all(tf.math.is_finite(values))

        def copy():
            with tf.control_dependencies([self.copy.assign(values)]):
                return tf.constant(True)

        return tf.cond(finite, copy, lambda: tf.constant(False))

    def update(self, step):
        """Copies the variables if all are finite; returns whether they were."""
        finite = bool(self._update())
        if finite:
            self.step = step
        return finite

    def restore(self):
        parts = tf.split(self.copy.read_value(), self.sizes)
        for variable, part in zip(self.variables, parts):
            variable.assign(tf.cast(tf.reshape(part, variable.shape), variable.dtype))


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops `fit` at the first non-finite loss or weight with a `NonFiniteLossError`.

    See the module docstring. Place it before any checkpointing callback.

    Args:
        dataset: training `tf.data.Dataset` (images, or `{"image", "label"}` dicts); one batch
            of it feeds the diagnosis. None: the diagnosis checks the weights only.
        counter: the run's `keras_flow.callbacks.StepCounter`, placed before the guard, giving
            the global step (resumed runs); None: the guard keeps its own, counting the steps
            of its `fit` calls.
        advice: the "what to try" sentence of the message.
        checkpoint: a text naming the last good checkpoint, appended to the message; or a
            callable `f(loss_finite)` returning it, called at the stop with whether the loss
            was still finite (then the weights before the failing call were good); or None.
        snapshot: after every step (every call of the compiled step, with Keras's
            `steps_per_execution`), check that the weights are finite and keep a copy of the
            last finite ones for the diagnosis (one on-device float32 copy of the weights,
            1-2 ms per step for the digits preset on 2 CPU cores). False: check only the loss, and
            diagnose the weights as they are when it stops.
    """

    def __init__(self, dataset=None, counter=None, advice=ADVICE, checkpoint=None,
                 snapshot=True):
        super().__init__()
        self.dataset = dataset
        self.counter = StepCounter() if counter is None else counter
        self._owns_counter = counter is None
        self.advice = advice
        self.checkpoint = checkpoint
        self.use_snapshot = bool(snapshot)
        self.snapshot = None
        self.skipped_steps = 0
        self._iterations_seen = None
        self._checked_step = 0

    @property
    def step(self):
        return self.counter.step

    def on_train_begin(self, logs=None):
        if self.use_snapshot and self.snapshot is None:
            self.snapshot = WeightSnapshot(self.model.weights)
            self.snapshot.update(self.step)  # the weights training starts from
        self._iterations_seen = (optimizer_steps(self.model.optimizer), self.step)
        self._checked_step = self.step

    def on_epoch_begin(self, epoch, logs=None):
        if self._owns_counter:
            self.counter.on_epoch_begin(epoch)

    def on_train_batch_end(self, batch, logs=None):
        # With Keras's steps_per_execution = n this runs once per n steps, `batch` being the
        # last one's index in the epoch: the check covers the steps since the last one.
        if self._owns_counter:
            self.counter.on_train_batch_end(batch)
        first, self._checked_step = self._checked_step + 1, self.step
        loss = _scalar((logs or {}).get("loss"))
        weights_finite = self.snapshot is None or self.snapshot.update(self.step)
        if loss is not None and not math.isfinite(loss):
            within = "in" if first < self.step else "at"
            self._stop(f"Non-finite loss ({loss}) {within} {self._steps_text(first)}",
                       loss_finite=False)
        if not weights_finite:
            self._stop(f"Non-finite weights after {self._steps_text(first)} (a non-finite "
                       "gradient reached the update; the loss was still finite)",
                       loss_finite=True)

    def _steps_text(self, first):
        """The checked steps `first..step`, for the message."""
        if first < self.step:
            return (f"training steps {first}-{self.step} (one call of the compiled step; with "
                    "steps_per_execution=1 every step is checked)")
        return f"training step {self.step}"

    def on_epoch_end(self, epoch, logs=None):
        self.count_skipped_steps()
        if logs is not None and is_loss_scaled(self.model.optimizer):
            logs["skipped_steps"] = self.skipped_steps

    def on_train_end(self, logs=None):
        self.count_skipped_steps()

    def count_skipped_steps(self):
        """Steps whose update the fp16 loss scaling skipped (steps minus optimizer updates)."""
        if self._iterations_seen is None or not is_loss_scaled(self.model.optimizer):
            return self.skipped_steps
        iterations, step = optimizer_steps(self.model.optimizer), self.step
        before_iterations, before_step = self._iterations_seen
        self.skipped_steps += (step - before_step) - (iterations - before_iterations)
        self._iterations_seen = (iterations, step)
        return self.skipped_steps

    def _stop(self, what, loss_finite):
        self.model.stop_training = True
        weights_note = ""
        if self.snapshot is not None and self.snapshot.step is not None:
            self.snapshot.restore()
            weights_note = f" with the weights after step {self.snapshot.step}"
        finding = diagnose(self.model, *_first_batch(self.dataset))
        located = (f"Diagnosis on a training batch{weights_note}: {finding.text}"
                   if finding.where or finding.text else "")
        checkpoint = (self.checkpoint(loss_finite) if callable(self.checkpoint)
                      else self.checkpoint)
        parts = [what + ".", located, self.advice, checkpoint or ""]
        raise NonFiniteLossError(" ".join(part for part in parts if part), step=self.step,
                                 where=finding.where)


def is_finite_loss(logs):
    """Whether the batch `logs` hold a finite `loss` (True without one: nothing says otherwise)."""
    loss = _scalar((logs or {}).get("loss"))
    return loss is None or math.isfinite(loss)


def _scalar(value):
    if value is None:
        return None
    try:
        return float(np.asarray(value))
    except (TypeError, ValueError):
        return None


def _first_batch(dataset):
    """`(images, labels)` of the first element of `dataset`, or `(None, None)`."""
    if dataset is None:
        return None, None
    element = next(iter(dataset.take(1)))
    if isinstance(element, dict):
        return element["image"], element.get("label")
    return element, None

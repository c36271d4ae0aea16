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
`checkpoint` argument) then goes back to the checkpoint before them.

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

from keras_flow.layers.base import FlowLayer
from keras_flow.layers.priors import standard_normal_log_prob

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
    return _is_finite(list(variables))


def _is_floating(variable):
    return keras.backend.standardize_dtype(variable.dtype).startswith(("float", "bfloat"))


def _tf_value(variable):
    """The backend (TF) variable behind a Keras variable; anything else as it is."""
    return variable.value if isinstance(variable, keras.Variable) else variable


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
        return tf.concat([tf.reshape(tf.cast(_tf_value(v), tf.float32), [-1])
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
        counter: a `keras_flow.callbacks.StepCounter` giving the global step (resumed runs);
            None counts the steps of this guard's `fit` calls.
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
        self.counter = counter
        self.advice = advice
        self.checkpoint = checkpoint
        self.use_snapshot = bool(snapshot)
        self.snapshot = None
        self.steps = 0
        self.skipped_steps = 0
        self._iterations_seen = None
        self._epoch_start = 0
        self._checked_step = 0

    @property
    def step(self):
        return self.counter.step if self.counter is not None else self.steps

    def on_train_begin(self, logs=None):
        if self.use_snapshot and self.snapshot is None:
            self.snapshot = WeightSnapshot(self.model.weights)
            self.snapshot.update(self.step)  # the weights training starts from
        self._iterations_seen = (optimizer_steps(self.model.optimizer), self.step)
        self._checked_step = self.step

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.steps

    def on_train_batch_end(self, batch, logs=None):
        # With Keras's steps_per_execution = n this runs once per n steps, `batch` being the
        # last one's index in the epoch: the check covers the steps since the last one.
        self.steps = self._epoch_start + batch + 1
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


def is_loss_scaled(optimizer):
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def loss_scale(optimizer):
    """The current dynamic loss scale of a `LossScaleOptimizer`, else None."""
    if not is_loss_scaled(optimizer):
        return None
    return float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))


def optimizer_steps(optimizer):
    """The optimizer's update count as an int (also for a `tf.distribute` mirrored variable)."""
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


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


class Finding:
    """What `diagnose` found: `where` (a layer path or term name, None if nothing) and `text`."""

    def __init__(self, where=None, text=""):
        self.where = where
        self.text = text

    def __repr__(self):
        return f"Finding(where={self.where!r}, text={self.text!r})"


def diagnose(model, images=None, labels=None):
    """Finds the first non-finite value of one training step of a keras_flow flow model.

    In order, and stopping at the first non-finite value: the weights (model order); the
    input batch (also checked to lie in [-0.5, 0.5]); the output, then the log-det, of every
    flow layer in the order the forward pass (data -> latent, training mode) completes them;
    each level's prior term `sum log N(eps_l; 0, I)`; the loss; the gradient of every
    trainable weight (model order).

    Args:
        model: a built `FlowModel` (Glow, RealNVP).
        images: a batch of preprocessed training images, or None to check the weights only.
        labels: int labels for a class-conditional model.

    Returns:
        A `Finding`; `where` is None when every value checked is finite.
    """
    for variable in model.weights:
        if not _is_finite(variable):
            return Finding(variable.path, f"weight {variable.path} holds {_kind(variable)} "
                                          "values.")
    if images is None:
        return Finding(None, "")
    for finding in (_check_input(images), _forward_finding(model, images, labels),
                    _gradient_finding(model, images, labels)):
        if finding is not None:
            return finding
    return Finding(None, "every layer output, log-det, prior term and gradient is finite on "
                         "this batch, so the failure depended on the batch or the update "
                         "(learning rate) of that step.")


def _check_input(images):
    values = _float_arrays(images)[0]
    if not np.all(np.isfinite(values)):
        return Finding("input", f"the input batch holds {_kind(values)} values.")
    low, high = float(values.min()), float(values.max())
    if low < -0.5 - 1e-3 or high > 0.5 + 1e-3:
        return Finding("input", f"the input batch spans [{low:.4g}, {high:.4g}], outside the "
                                "expected [-0.5, 0.5]; preprocess the images with "
                                "keras_flow.preprocessing.preprocess.")
    return None


def _forward_finding(model, images, labels):
    records = []
    with _recording_flow_layers(model, records):
        eps_list, log_det, _ = model.encode_with_top(
            keras.ops.convert_to_tensor(images), labels, training=True)
    for layer, outputs, layer_log_det in records:
        name = f"{layer.path} ({layer.__class__.__name__})"
        if not _is_finite(outputs):
            return Finding(layer.path, f"the output of {name} holds {_kind(outputs)} values "
                                       "(its input was finite).")
        if not _is_finite(layer_log_det):
            return Finding(layer.path, f"the log-det of {name} is {_kind(layer_log_det)}.")
    for level, eps in enumerate(eps_list, start=1):
        term = standard_normal_log_prob(eps)
        if not _is_finite(term):
            return Finding(f"prior_level_{level}", f"the prior term log N(eps; 0, I) of level "
                                                   f"{level} is {_kind(term)}.")
    if not _is_finite(log_det):
        return Finding("log_det", f"the total log-det is {_kind(log_det)}.")
    return None


def _gradient_finding(model, images, labels):
    inputs = images if labels is None else {"image": images, "label": labels}
    with tf.GradientTape() as tape:
        model(inputs, training=True)
        loss = tf.add_n([tf.cast(value, "float32") for value in model.losses])
    if not _is_finite(loss):
        return Finding("loss", f"the loss is {_kind(loss)}.")
    variables = model.trainable_variables
    gradients = tape.gradient(loss, [_tf_value(v) for v in variables])
    for variable, gradient in zip(variables, gradients):
        if gradient is not None and not _is_finite(gradient):
            return Finding(variable.path, f"the gradient of weight {variable.path} holds "
                                          f"{_kind(gradient)} values (the loss, "
                                          f"{float(loss):.4g}, is finite).")
    return None


class _recording_flow_layers:
    """Context in which every flow layer of `model` appends `(layer, outputs, log_det)` to
    `records` when its call completes (an instance-level wrapper of `call`, removed on exit)."""

    def __init__(self, model, records):
        self.layers = [layer for layer in model._flatten_layers(include_self=False)
                       if isinstance(layer, FlowLayer)]
        self.records = records

    def __enter__(self):
        for layer in self.layers:
            layer.__dict__["call"] = self._wrap(layer, type(layer).call.__get__(layer))
        return self

    def __exit__(self, *exc_info):
        for layer in self.layers:
            layer.__dict__.pop("call", None)

    def _wrap(self, layer, call):
        def recorded(*args, **kwargs):
            outputs, log_det = call(*args, **kwargs)
            self.records.append((layer, outputs, log_det))
            return outputs, log_det

        return recorded


def _float_arrays(value):
    """The floating tensors of a nest (Keras variables included) as float64 NumPy arrays."""
    tensors = [tf.convert_to_tensor(_tf_value(v)) for v in tf.nest.flatten(value)]
    return [tf.cast(t, "float64").numpy() for t in tensors if t.dtype.is_floating]


def _is_finite(value):
    return all(np.all(np.isfinite(array)) for array in _float_arrays(value))


def _kind(value):
    """"NaN", "+inf", "-inf" or a mix, for the message."""
    values = np.concatenate([np.ravel(a) for a in _float_arrays(value)] or [np.zeros(0)])
    kinds = []
    if np.isnan(values).any():
        kinds.append("NaN")
    if np.isposinf(values).any():
        kinds.append("+inf")
    if np.isneginf(values).any():
        kinds.append("-inf")
    return "/".join(kinds) or "finite"

"""Where a non-finite value first appears in one training step of a flow (`diagnose`).

`NonFiniteGuard` (`keras_flow.callbacks.non_finite`) runs it when training stops at a
non-finite loss or weight; it can also be called on its own, e.g. on a saved model.
"""

import keras
import numpy as np
import tensorflow as tf

from keras_flow import compat
from keras_flow.layers.base import FlowLayer
from keras_flow.layers.priors import standard_normal_log_prob


def tf_value(variable):
    """The backend (TF) variable behind a Keras variable; anything else as it is."""
    return variable.value if isinstance(variable, keras.Variable) else variable


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
        if not is_finite(variable):
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
    layers = [layer for layer in compat.all_sublayers(model) if isinstance(layer, FlowLayer)]
    with compat.recording_calls(layers, lambda layer, outputs: records.append((layer, *outputs))):
        eps_list, log_det, _ = model.encode_with_top(
            keras.ops.convert_to_tensor(images), labels, training=True)
    for layer, outputs, layer_log_det in records:
        name = f"{layer.path} ({layer.__class__.__name__})"
        if not is_finite(outputs):
            return Finding(layer.path, f"the output of {name} holds {_kind(outputs)} values "
                                       "(its input was finite).")
        if not is_finite(layer_log_det):
            return Finding(layer.path, f"the log-det of {name} is {_kind(layer_log_det)}.")
    for level, eps in enumerate(eps_list, start=1):
        term = standard_normal_log_prob(eps)
        if not is_finite(term):
            return Finding(f"prior_level_{level}", f"the prior term log N(eps; 0, I) of level "
                                                   f"{level} is {_kind(term)}.")
    if not is_finite(log_det):
        return Finding("log_det", f"the total log-det is {_kind(log_det)}.")
    return None


def _gradient_finding(model, images, labels):
    inputs = images if labels is None else {"image": images, "label": labels}
    with tf.GradientTape() as tape:
        model(inputs, training=True)
        loss = tf.add_n([tf.cast(value, "float32") for value in model.losses])
    if not is_finite(loss):
        return Finding("loss", f"the loss is {_kind(loss)}.")
    variables = model.trainable_variables
    gradients = tape.gradient(loss, [tf_value(v) for v in variables])
    for variable, gradient in zip(variables, gradients):
        if gradient is not None and not is_finite(gradient):
            return Finding(variable.path, f"the gradient of weight {variable.path} holds "
                                          f"{_kind(gradient)} values (the loss, "
                                          f"{float(loss):.4g}, is finite).")
    return None


def _float_arrays(value):
    """The floating tensors of a nest (Keras variables included) as float64 NumPy arrays."""
    tensors = [tf.convert_to_tensor(tf_value(v)) for v in tf.nest.flatten(value)]
    return [tf.cast(t, "float64").numpy() for t in tensors if t.dtype.is_floating]


def is_finite(value):
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

"""Every Keras (and tf.distribute) internal that keras_flow relies on, in one place.

keras_flow uses the public Keras API wherever one exists. Where none does, the private
attribute or the instance patch goes through a function of this module, so that a Keras
release that moves one breaks here, with the shim's name, and nowhere else. Each shim has its
own test in `tests/test_compat.py`; run them first after upgrading Keras.

The shims were written for `KERAS_VERSIONS` (Keras 3.15.x); importing keras_flow under
another Keras warns once (`check_keras_version`).

| shim                    | internal it reads or patches                               |
| ----------------------- | ---------------------------------------------------------- |
| `all_sublayers`         | `Layer._flatten_layers` (`Model.layers` is one level deep,  |
|                         | and a plain `Layer` has no public list of its sublayers)     |
| `optimizer_slots`       | `Optimizer._get_variable_index` and the slot lists         |
|                         | (`_m`, `_u`, `_momentums`, `_velocities`)                   |
| `learning_rate_schedule`| `Optimizer._learning_rate` (the schedule object)           |
| `ema_variables`         | `Optimizer._model_variables_moving_average`                |
| `set_untracked`         | an attribute set past Keras's tracking (`obj.__dict__`)    |
| `recording_calls`       | an instance-level `call` (`layer.__dict__["call"]`)        |
| `wrap_step_functions`   | instance-level `train_step` / `test_step` of a model       |
| `in_multi_worker_mode`  | `strategy.extended._in_multi_worker_mode()` (TensorFlow)   |
| `saved_model_root`      | `tf.__internal__.tracking.AutoTrackable` (TensorFlow): the  |
|                         | root Keras's own export saves (`tf.Module` reserves         |
|                         | `variables`)                                               |
"""

import contextlib
import re
import warnings

import keras

KERAS_VERSIONS = ((3, 15), (3, 15))  # the first and last minor release the shims were written for


def keras_version_warning(version=keras.__version__):
    """The warning text when `version` lies outside `KERAS_VERSIONS`, else None."""
    match = re.match(r"(\d+)\.(\d+)", version)
    minor = (int(match.group(1)), int(match.group(2))) if match else None
    first, last = KERAS_VERSIONS
    if minor is not None and first <= minor <= last:
        return None
    written_for = ", ".join(f"{major}.{minor}.x" for major, minor in sorted({first, last}))
    return (f"keras_flow.compat was written for Keras {written_for}; Keras {version} is "
            "installed. Its shims of Keras internals (optimizer slots, the EMA averages, "
            "sublayers, step functions) may fail or misbehave: run tests/test_compat.py.")


def check_keras_version(version=keras.__version__):
    """Warns (`UserWarning`) when `version` lies outside `KERAS_VERSIONS`; returns the text."""
    message = keras_version_warning(version)
    if message:
        warnings.warn(message, stacklevel=2)
    return message


# --- layers --------------------------------------------------------------------------------

def all_sublayers(layer):
    """Every layer inside `layer`, at any depth, in tracking order (`layer` itself excluded)."""
    return list(layer._flatten_layers(include_self=False, recursive=True))


@contextlib.contextmanager
def recording_calls(layers, record):
    """Within the block, every call of one of `layers` also passes `(layer, outputs)` to
    `record` when it returns. Keras has no forward hooks: an instance-level `call` wraps the
    class's, and is removed on exit."""
    def wrapped(layer):
        call = type(layer).call.__get__(layer)

        def recorded(*args, **kwargs):
            outputs = call(*args, **kwargs)
            record(layer, outputs)
            return outputs

        return recorded

    layers = list(layers)
    for layer in layers:
        layer.__dict__["call"] = wrapped(layer)
    try:
        yield
    finally:
        for layer in layers:
            layer.__dict__.pop("call", None)


# --- optimizers ----------------------------------------------------------------------------

def optimizer_slots(optimizer, variable, *names):
    """The slot variables `names` (e.g. `"_m", "_u"`) that `optimizer` keeps for `variable`."""
    index = optimizer._get_variable_index(variable)
    return tuple(getattr(optimizer, name)[index] for name in names)


def learning_rate_schedule(optimizer):
    """The `LearningRateSchedule` `optimizer` was built with, or None for a constant rate
    (Keras's public `learning_rate` gives its current value only)."""
    schedule = getattr(optimizer, "_learning_rate", None)
    return schedule if isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule) \
        else None


def set_untracked(obj, name, value):
    """Sets `obj.<name> = value` past Keras's attribute tracking, which would wrap a dict in a
    `TrackedDict` and track what it holds (for scratch state such as a per-step cache)."""
    obj.__dict__[name] = value


def ema_variables(optimizer):
    """The moving averages of an optimizer with `use_ema`, in the order of the variables it
    was built on."""
    return list(optimizer._model_variables_moving_average)


# --- models --------------------------------------------------------------------------------

def wrap_step_functions(model, wrap):
    """Makes `model`'s `train_step` and `test_step` return `wrap(logs)` of their logs (Keras
    calls them through the instance, so an instance attribute replaces the method)."""
    for name in ("train_step", "test_step"):
        step = getattr(model, name)
        setattr(model, name, _wrapped_step(step, wrap))


def _wrapped_step(step, wrap):
    def wrapped(*args):
        return wrap(step(*args))

    return wrapped


# --- tf.distribute -------------------------------------------------------------------------

def in_multi_worker_mode(strategy):
    """Whether `strategy` (a `MultiWorkerMirroredStrategy`) spans more than one worker: the
    condition under which Keras reduces metrics across workers."""
    return strategy.extended._in_multi_worker_mode()


def saved_model_root():
    """An empty trackable object to hang a SavedModel's functions and variables on, the kind
    Keras's `ExportArchive` saves (public `tf.Module` would refuse a `variables` attribute)."""
    import tensorflow as tf

    return tf.__internal__.tracking.AutoTrackable()


check_keras_version()

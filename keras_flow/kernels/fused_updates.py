"""TensorFlow's fused optimizer updates: one `ResourceApply*` op per variable.

On the TensorFlow backend, `ResourceApplyAdaMax` / `ResourceApplyAdam` update a variable and
its two slots in place with one op instead of Keras's ten or so elementwise ops (a step of a
Glow has hundreds of variables, and per-op overhead is a large part of a CPU step); the
arithmetic is the same. `keras_flow.optimizers` calls these where `applies` holds and runs its
backend-neutral `keras.ops` updates (the reference) elsewhere.
"""

import keras


def applies(gradient, variable):
    """Whether TensorFlow's fused kernels can update `variable` in place: the TensorFlow
    backend, a dense gradient, a resource variable (also a replica's component inside
    `tf.distribute`'s update)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not isinstance(gradient, tf.IndexedSlices) and hasattr(variable, "handle")


def slot_variable(slot):
    """The `tf.Variable` behind an optimizer slot (a `keras.Variable` on TensorFlow)."""
    return slot.value if isinstance(slot, keras.Variable) else slot


def apply_adamax(variable, m, u, gradient, scalars, lr):
    """`var -= lr / (1 - beta_1^t) * m / (u + epsilon)` after `m` and `u`'s Adamax updates
    (`scalars`: `SharedStepScalars.step_scalars`)."""
    import tensorflow as tf

    tf.raw_ops.ResourceApplyAdaMax(
        var=variable.handle, m=slot_variable(m).handle, v=slot_variable(u).handle,
        beta1_power=scalars["beta_1_power"], lr=lr, beta1=scalars["beta_1"],
        beta2=scalars["beta_2"], epsilon=scalars["epsilon"], grad=gradient)


def apply_adam(variable, m, v, gradient, scalars):
    """Adam's update of `variable` and its slots `m`, `v` (`scalars` as `apply_adamax`)."""
    import tensorflow as tf

    tf.raw_ops.ResourceApplyAdam(
        var=variable.handle, m=slot_variable(m).handle, v=slot_variable(v).handle,
        beta1_power=scalars["beta_1_power"], beta2_power=scalars["beta_2_power"],
        lr=scalars["lr"], beta1=scalars["beta_1"], beta2=scalars["beta_2"],
        epsilon=scalars["epsilon"], grad=gradient)

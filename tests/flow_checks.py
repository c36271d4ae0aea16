"""The one checker every flow layer and model goes through (backend-neutral).

invertibility, log-dets that cancel, log-det == log|det J| of the autodiff Jacobian, config and
`.keras` round trips, the symbolic output spec against a real call, weights created in `build`,
mixed precision. Weights are always moved well away from their
initialisation first, so an identity-initialised layer cannot pass by doing nothing.
"""

import numpy as np
import pytest
import keras
from keras import ops


def dtype_name(tensor):
    return keras.backend.standardize_dtype(tensor.dtype)


def random_images(shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype("float32")


def preprocessed_images(shape, seed=0):
    """Uniform values in [-0.5, 0.5), the range of preprocessed (dequantised) images."""
    return (np.random.default_rng(seed).random(shape) - 0.5).astype("float32")


def perturb_weights(layer, seed=1, scale=0.3):
    """Adds N(0, scale^2) noise to every trainable float weight (zero convs become non-zero)."""
    rng = np.random.default_rng(seed)
    for weight in layer.trainable_weights:
        value = ops.convert_to_numpy(weight)
        weight.assign(value + scale * rng.standard_normal(value.shape).astype(value.dtype))


def flatten_outputs(outputs):
    parts = outputs if isinstance(outputs, (tuple, list)) else [outputs]
    return ops.concatenate(
        [ops.reshape(ops.cast(p, "float32"), (ops.shape(p)[0], -1)) for p in parts], axis=1)


def _max_abs(a, b):
    return float(np.max(np.abs(ops.convert_to_numpy(a) - ops.convert_to_numpy(b))))


def check_round_trip(layer, x, atol=1e-5, **call_kwargs):
    """inverse(forward(x)) == x and the two log-dets cancel; returns the max abs error."""
    y, log_det = layer(x, **call_kwargs)
    x_back, inverse_log_det = layer(y, inverse=True)
    assert tuple(log_det.shape) == (x.shape[0],), log_det.shape
    assert dtype_name(log_det) == "float32"
    error = _max_abs(x_back, x)
    assert error <= atol, f"round trip error {error} > {atol}"
    np.testing.assert_allclose(ops.convert_to_numpy(log_det),
                               -ops.convert_to_numpy(inverse_log_det), atol=1e-4, rtol=1e-5)
    return error


def jacobian(fn, x):
    """Per-example Jacobian `(batch, out_dim, in_dim)` of `fn` (a batched map) at `x`."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf
        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        jac = tape.batch_jacobian(y, x)
        return np.reshape(jac.numpy(), (x.shape[0], y.shape[1], -1))
    if backend == "jax":
        import jax
        single = lambda xi: fn(xi[None])[0]  # noqa: E731
        jac = jax.jit(jax.vmap(jax.jacrev(single)))(x)  # one compiled program, not op by op
        return np.reshape(np.asarray(jac), (x.shape[0], -1, int(np.prod(x.shape[1:]))))
    raise NotImplementedError(backend)


def check_log_det(layer, x, atol=1e-4, inverse=False):
    """The layer's log-det equals log|det J| of the autodiff Jacobian of its map."""
    _, log_det = layer(x, inverse=inverse)
    jac = jacobian(lambda v: flatten_outputs(layer(v, inverse=inverse)[0]), x)
    assert jac.shape[1] == jac.shape[2], f"not a square map: {jac.shape}"
    _, expected = np.linalg.slogdet(jac.astype("float64"))
    np.testing.assert_allclose(ops.convert_to_numpy(log_det), expected, atol=atol, rtol=0)


def serialize_round_trip(layer, input_shape):
    """A new layer from `get_config` with the same weights."""
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    if not clone.built:
        clone.build(input_shape)
    clone.set_weights(layer.get_weights())
    return clone


@keras.saving.register_keras_serializable(package="keras_flow_tests")
class LayerHolder(keras.Model):
    """A model holding one flow layer, so the layer can go through a `.keras` file."""

    def __init__(self, flow, **kwargs):
        super().__init__(**kwargs)
        self.flow = flow

    def call(self, inputs, **kwargs):
        outputs, log_det = self.flow(inputs, **kwargs)
        return flatten_outputs(outputs), log_det

    def get_config(self):
        return {**super().get_config(), "flow": keras.saving.serialize_keras_object(self.flow)}

    @classmethod
    def from_config(cls, config):
        config["flow"] = keras.saving.deserialize_keras_object(config["flow"])
        return cls(**config)


def check_serialization(layer, x, tmp_path):
    """get_config round trip and `.keras` save/load reproduce outputs and log-dets exactly."""
    y, log_det = layer(x)
    clone = serialize_round_trip(layer, x.shape)
    y2, log_det2 = clone(x)
    np.testing.assert_array_equal(ops.convert_to_numpy(flatten_outputs(y)),
                                  ops.convert_to_numpy(flatten_outputs(y2)))
    np.testing.assert_array_equal(ops.convert_to_numpy(log_det), ops.convert_to_numpy(log_det2))
    holder = LayerHolder(layer)
    expected = holder(x)
    path = str(tmp_path / "layer.keras")
    holder.save(path)
    loaded = keras.saving.load_model(path)
    got = loaded(x)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(ops.convert_to_numpy(a), ops.convert_to_numpy(b))


def check_mixed_precision(make_layer, x, policy, atol):
    """Under a mixed `policy` the flow path stays float32: float32 outputs (also for inputs
    given in the compute dtype) and log-dets, and a round trip as exact as in float32 (≤ `atol`,
    the float32 tolerance)."""
    layer = make_layer(dtype=policy)
    layer(x)
    perturb_weights(layer, scale=0.1)
    y, log_det = layer(x)
    first = y[0] if isinstance(y, (tuple, list)) else y
    assert dtype_name(first) == "float32"
    assert dtype_name(log_det) == "float32"
    x_back, _ = layer(y, inverse=True)
    assert dtype_name(x_back) == "float32"
    error = _max_abs(x_back, x)
    assert error <= atol, f"{policy} round trip error {error} > {atol}"
    low = ops.cast(x, keras.DTypePolicy(policy).compute_dtype)
    y_low, _ = layer(low)
    assert dtype_name(y_low[0] if isinstance(y_low, (tuple, list)) else y_low) == "float32"


def check_rejects_other_channels(layer, x):
    """A built layer that fixed its channel count refuses an image with one channel more,
    in both directions, instead of broadcasting it (a shape-preserving layer's inverse takes
    the forward's channels)."""
    if getattr(layer, "built_channels", None) is None:
        return
    wider = np.concatenate([x, x[..., :1]], axis=-1)
    for inverse in (False, True):
        if inverse and not isinstance(layer.expected_channels(True), int):
            continue
        with pytest.raises(ValueError, match="was built for images of"):
            layer(wider, inverse=inverse)


def symbolic(inputs):
    """`keras.KerasTensor`s of the shapes and dtypes of `inputs` (a tensor or a tuple)."""
    return keras.tree.map_structure(
        lambda t: keras.KerasTensor(tuple(t.shape), dtype=dtype_name(t)), inputs)


def check_output_spec(layer, x):
    """`compute_output_spec` (what a symbolic call and the models' builds rely on) gives the
    shapes and dtypes of a real call, in both directions, log-det included."""
    forward_outputs = layer(x)[0]
    for inverse, inputs in ((False, x), (True, forward_outputs)):
        spec = layer.compute_output_spec(symbolic(inputs), inverse=inverse)
        real = layer(inputs, inverse=inverse)
        spec_parts, real_parts = keras.tree.flatten(spec), keras.tree.flatten(real)
        assert len(spec_parts) == len(real_parts), (inverse, spec, real)
        for want, got in zip(spec_parts, real_parts):
            assert tuple(want.shape) == tuple(got.shape), (inverse, want.shape, got.shape)
            assert dtype_name(want) == dtype_name(got), (inverse, want.dtype, got.dtype)


def check_weights_created_in_build(make_layer, x):
    """`build` creates every weight (the count Keras's `run_layer_test` checks): calling the
    built layer, in both directions, adds none, and a clone from its config has as many."""
    layer = make_layer()
    if not layer.built:
        layer.build(x.shape)
    counts = (len(layer.trainable_weights), len(layer.non_trainable_weights))
    y, _ = layer(x)
    layer(y, inverse=True)
    assert (len(layer.trainable_weights), len(layer.non_trainable_weights)) == counts
    clone = serialize_round_trip(layer, x.shape)
    assert (len(clone.trainable_weights), len(clone.non_trainable_weights)) == counts


def run_flow_checks(make_layer, shape, tmp_path, perturb_scale=0.3, seed=0, atol=1e-5,
                    tiny_shape=(2, 4, 4, 4), make_inputs=random_images):
    """Every check of the layer contract, for a layer factory `make_layer(**kwargs)`.

    `make_inputs(shape, seed)` draws the inputs; `atol` bounds every round trip, under the
    mixed policies too.
    """
    x = make_inputs(shape, seed)
    layer = make_layer()
    layer(x)
    perturb_weights(layer, scale=perturb_scale)
    check_round_trip(layer, x, atol=atol)
    check_serialization(layer, x, tmp_path)
    check_rejects_other_channels(layer, x)
    check_output_spec(layer, x)
    check_weights_created_in_build(make_layer, x)
    tiny = make_layer()
    xt = make_inputs(tiny_shape, seed + 1)
    tiny(xt)
    perturb_weights(tiny, scale=perturb_scale)
    check_log_det(tiny, xt)
    check_mixed_precision(make_layer, x, "mixed_bfloat16", atol)
    check_mixed_precision(make_layer, x, "mixed_float16", atol)

"""Checks shared by the Glow and RealNVP tests (the model-level counterpart of tests.flow_checks).

Every model is first initialised on random preprocessed images and then has its weights moved
off those values (`perturb_weights`), so an identity-like model cannot pass by doing nothing.
"""

import math

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from tests.flow_checks import flatten_outputs
from tests.flow_checks import perturb_weights
from tests.flow_checks import preprocessed_images


def to_numpy(tensor):
    return ops.convert_to_numpy(tensor)


def count_shards(model, method="encode_batch"):
    """Replaces `model.<method>` by a wrapper that records the batch of every call."""
    batches = []
    original = getattr(model, method)

    def recording(inputs, *args, **kwargs):
        batches.append((inputs[0] if isinstance(inputs, list) else inputs).shape[0])
        return original(inputs, *args, **kwargs)

    setattr(model, method, recording)
    return batches


def encoded(model, x):
    """`(flat latents, log_det)` as NumPy arrays."""
    eps_list, log_det = model.encode(x)
    return to_numpy(flatten_outputs(eps_list)), to_numpy(log_det)


def perturbed_model(make_model, init_shape, scale, seed=0):
    """`make_model()` initialised on random images of `init_shape`, then perturbed.

    Asserts that the perturbation really changed the map (the latents and the log-det moved).
    """
    model = make_model()
    x = preprocessed_images(init_shape, seed)
    model.initialize(x)
    before = encoded(model, x)
    perturb_weights(model, seed=seed + 1, scale=scale)
    after = encoded(model, x)
    for a, b in zip(after, before):
        assert np.max(np.abs(a - b)) > 1e-2, "perturbation had no effect"
    return model


def check_model_round_trip(model, x, atol=1e-4):
    """decode(encode(x)) == x, and encode(decode(eps)) gives back eps and the same log-det."""
    eps_list, log_det = model.encode(x)
    assert [tuple(e.shape[1:]) for e in eps_list] == [tuple(s) for s in model.latent_shapes]
    assert all(keras.backend.standardize_dtype(e.dtype) == "float32" for e in eps_list)
    x_back = model.decode(eps_list)
    error = float(np.max(np.abs(to_numpy(x_back) - x)))
    assert error <= atol, f"decode(encode(x)) error {error} > {atol}"
    eps_again, log_det_again = model.encode(x_back)
    np.testing.assert_allclose(to_numpy(flatten_outputs(eps_again)),
                               to_numpy(flatten_outputs(eps_list)), atol=atol * 10)
    np.testing.assert_allclose(to_numpy(log_det_again), to_numpy(log_det), rtol=1e-4)
    return error


def jacobian(fn, x):
    """Per-example Jacobian `(batch, dims, dims)` of a square per-example map `fn` at `x`.

    Autodiff with one forward and one backward pass: `x` is repeated `dims` times and copy `k`
    of example `b` receives the gradient of output `k` only, so its input gradient is row `k`
    of that example's Jacobian (the same numbers as `tape.batch_jacobian`, a lot faster in
    eager mode). Valid because the models map each example independently.
    """
    x = tf.convert_to_tensor(x)
    batch, dims = x.shape[0], math.prod(x.shape[1:])
    copies = tf.repeat(x, dims, axis=0)
    with tf.GradientTape() as tape:
        tape.watch(copies)
        outputs = fn(copies)
        assert outputs.shape[1] == dims, f"not a square map: {outputs.shape[1]} != {dims}"
        selected = tf.reduce_sum(outputs * tf.tile(tf.eye(dims), (batch, 1)))
    rows = tape.gradient(selected, copies)
    return np.reshape(rows.numpy(), (batch, dims, dims))


def check_realistic_round_trip(make_model, scale, latent_shapes, atol=1e-4):
    """A 32x32x3 model, initialised and perturbed: the latent shapes, decode(encode(x)) == x."""
    model = perturbed_model(make_model, (2, 32, 32, 3), scale=scale)
    assert model.latent_shapes == latent_shapes
    return check_model_round_trip(model, preprocessed_images((2, 32, 32, 3), seed=5), atol=atol)


def unflatten_latents(model, flat):
    """`(batch, sum of latent sizes)` -> the list of latents in `model.latent_shapes`."""
    sizes = [math.prod(shape) for shape in model.latent_shapes]
    parts = ops.split(flat, np.cumsum(sizes)[:-1].tolist(), axis=1)
    return [ops.reshape(p, (-1,) + tuple(s)) for p, s in zip(parts, model.latent_shapes)]


def check_log_prob_against_jacobian(model, x, atol=1e-3):
    """log_prob(x) == sum log N(eps) + log|det d eps/d x| (autodiff), and decode's Jacobian is
    the inverse of encode's, with log|det d x/d eps| == -log_det."""
    eps_list, log_det = model.encode(x)
    flat_eps = to_numpy(flatten_outputs(eps_list)).astype("float64")
    encode_jac = jacobian(lambda v: flatten_outputs(model.encode(v)[0]), x)
    assert encode_jac.shape[1] == encode_jac.shape[2] == math.prod(x.shape[1:])
    _, encode_log_det = np.linalg.slogdet(encode_jac.astype("float64"))
    prior = np.sum(-0.5 * (np.log(2 * np.pi) + flat_eps ** 2), axis=1)
    np.testing.assert_allclose(to_numpy(log_det), encode_log_det, atol=atol, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(model.log_prob(x)), prior + encode_log_det,
                               atol=atol, rtol=1e-5)
    decode_jac = jacobian(
        lambda e: flatten_outputs(model.decode(unflatten_latents(model, e))),
        flat_eps.astype("float32"))
    _, decode_log_det = np.linalg.slogdet(decode_jac.astype("float64"))
    np.testing.assert_allclose(decode_log_det, -to_numpy(log_det), atol=atol, rtol=1e-5)
    identity = np.broadcast_to(np.eye(encode_jac.shape[1]), encode_jac.shape)
    np.testing.assert_allclose(decode_jac @ encode_jac, identity, atol=1e-3)


def fit_history(model, data, epochs, optimizer=None, batch_size=None, **compile_kwargs):
    """Compiles (Adam 1e-3 by default) and fits without `y`: the objective is the `add_loss`.

    Eager tests pass SGD: Adam's eager update of a hundred small weights costs more than the
    tiny models' forward and backward passes.
    """
    model.compile(optimizer=optimizer or keras.optimizers.Adam(1e-3), **compile_kwargs)
    history = model.fit(data, epochs=epochs, batch_size=batch_size, shuffle=False, verbose=0)
    return history.history


def check_gradients(model, inputs, allow_zero=()):
    """Every trainable weight gets a finite gradient of the `add_loss` objective; all but the
    weights whose path contains a string of `allow_zero` get a non-zero one."""
    with tf.GradientTape() as tape:
        model(inputs, training=True)
        loss = sum(model.losses)
    gradients = tape.gradient(loss, model.trainable_weights)
    for weight, gradient in zip(model.trainable_weights, gradients):
        assert gradient is not None, f"no gradient for {weight.path}"
        value = to_numpy(gradient)
        assert np.all(np.isfinite(value)), f"non-finite gradient for {weight.path}"
        if not any(name in weight.path for name in allow_zero):
            assert np.any(value != 0), f"zero gradient for {weight.path}"


def check_sampling(model, labels=None):
    """Shapes, temperature 0 is the deterministic mode path, seeds repeat, seeds differ."""
    samples = to_numpy(model.sample(2, temperature=0.7, seed=3, labels=labels))
    assert samples.shape == (2,) + model.image_shape
    assert np.all(np.isfinite(samples))
    again = to_numpy(model.sample(2, temperature=0.7, seed=3, labels=labels))
    np.testing.assert_array_equal(samples, again)
    other = to_numpy(model.sample(2, temperature=0.7, seed=4, labels=labels))
    assert np.max(np.abs(other - samples)) > 1e-3
    mode = to_numpy(model.sample(2, temperature=0.0, labels=labels))
    mode_again = to_numpy(model.sample(2, temperature=0.0, seed=9, labels=labels))
    np.testing.assert_array_equal(mode, mode_again)
    if labels is None:
        np.testing.assert_array_equal(mode[0], mode[1])
    noise = model.latent_noise(3, temperature=0.0)
    assert [tuple(n.shape) for n in noise] == [(3,) + tuple(s) for s in model.latent_shapes]


def check_config_round_trip(model):
    """`from_config(get_config())` gives an equal config and, once built, the same weights."""
    config = model.get_config()
    clone = model.__class__.from_config(config)
    assert clone.get_config() == config
    assert clone.count_params() == model.count_params()
    assert [w.path for w in clone.weights] == [w.path for w in model.weights]


def check_save_load(model, x, tmp_path):
    """`.keras` save/load reproduces bits/dim exactly and keeps every actnorm initialised; a
    second `initialize` of the reloaded model moves nothing."""
    expected = to_numpy(model.bits_per_dim(x))
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(model) and loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(to_numpy(loaded.bits_per_dim(x)), expected)
    flags = [w for w in loaded.weights if w.path.endswith("initialized")]
    assert all(float(to_numpy(flag)) == 1.0 for flag in flags)
    loaded.initialize(preprocessed_images(x.shape, seed=99))
    np.testing.assert_array_equal(to_numpy(loaded.bits_per_dim(x)), expected)


def check_trained_model_persists(model, x, tmp_path, epochs=1):
    """Initialise, train a little (eager SGD), then the config and `.keras` round trips."""
    model.initialize(x)
    fit_history(model, x, epochs=epochs, optimizer=keras.optimizers.SGD(1e-2), run_eagerly=True)
    check_config_round_trip(model)
    check_save_load(model, x, tmp_path)

"""`FlowModel(batch_shards=n)`: a batch encoded (or decoded) as n slices is the same function,
in inference and in training (gradients and `fit`), for a static batch size (no empty slice)
and one known only when the graph runs;
`keras_flow.cpu_threads`."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_flow import Glow
from keras_flow import RealNVP
from keras_flow import cpu_threads
from keras_flow.kernels.batch_shards import dynamic_shard_bounds
from tests.flow_checks import perturb_weights
from tests.flow_checks import preprocessed_images
from tests.models.model_checks import count_shards
from tests.models.model_checks import to_numpy

SMALL = dict(levels=2, depth=2, hidden_width=8, image_shape=(4, 4, 1), num_classes=3)


def glow_pair(shards):
    """A perturbed class-conditional Glow and a twin with `shards` shards and the same weights."""
    model = Glow(**SMALL)
    model.initialize(preprocessed_images((16, 4, 4, 1)), np.arange(16) % 3)
    perturb_weights(model, seed=1, scale=0.05)
    twin = Glow(**SMALL, batch_shards=shards)
    twin.set_weights(model.get_weights())
    return model, twin


def objective_and_gradients(model, inputs):
    with tf.GradientTape() as tape:
        model(inputs, training=True)
        loss = sum(model.losses)
    return float(loss), [to_numpy(g) for g in tape.gradient(loss, model.trainable_weights)]


def test_sharded_encoding_is_the_same_function():
    model, twin = glow_pair(shards=3)
    x = preprocessed_images((7, 4, 4, 1), seed=4)
    labels = np.array([0, 1, 2, 0, 1, 2, 0])
    batches = count_shards(twin)
    eps_list, log_det = model.encode(x, labels)
    sharded_eps, sharded_log_det = twin.encode(x, labels)
    assert batches == [2, 2, 3]
    np.testing.assert_allclose(to_numpy(sharded_log_det), to_numpy(log_det), rtol=1e-5)
    for eps, sharded in zip(eps_list, sharded_eps):
        np.testing.assert_allclose(to_numpy(sharded), to_numpy(eps), atol=1e-5)
    decoded_batches = count_shards(twin, "decode_batch")
    decoded = twin.decode(sharded_eps, labels)
    assert decoded_batches == [2, 2, 3]
    np.testing.assert_allclose(to_numpy(decoded), x, atol=1e-4)
    np.testing.assert_allclose(to_numpy(decoded), to_numpy(model.decode(eps_list, labels)),
                               atol=1e-5)


def test_sharded_objective_has_the_same_gradients():
    model, twin = glow_pair(shards=2)
    inputs = {"image": preprocessed_images((6, 4, 4, 1), seed=5),
              "label": np.array([2, 1, 0, 2, 1, 0])}
    loss, gradients = objective_and_gradients(model, inputs)
    batches = count_shards(twin)
    sharded_loss, sharded_gradients = objective_and_gradients(twin, inputs)
    assert batches == [3, 3]
    assert sharded_loss == pytest.approx(loss, rel=1e-6)
    assert any(np.abs(g).max() > 1e-3 for g in gradients)
    for gradient, sharded in zip(gradients, sharded_gradients):
        np.testing.assert_allclose(sharded, gradient, rtol=1e-4, atol=1e-6)


def test_remat_with_shards_keeps_the_gradients():
    """Recomputed steps (remat) of a sharded model give the unsharded model's gradients."""
    model, _ = glow_pair(shards=1)
    twin = Glow(**SMALL, batch_shards=2, remat=True)
    twin.set_weights(model.get_weights())
    inputs = {"image": preprocessed_images((6, 4, 4, 1), seed=8),
              "label": np.array([0, 2, 1, 0, 2, 1])}
    loss, gradients = objective_and_gradients(model, inputs)
    twin_loss, twin_gradients = objective_and_gradients(twin, inputs)
    assert twin_loss == pytest.approx(loss, rel=1e-6)
    for gradient, sharded in zip(gradients, twin_gradients):
        np.testing.assert_allclose(sharded, gradient, rtol=1e-4, atol=1e-6)


def test_fit_with_shards_takes_the_same_steps():
    """Two SGD steps in a traced `fit` (static batch of 8, two shards) move the weights as
    the unsharded model's do."""
    model, twin = glow_pair(shards=2)
    images = preprocessed_images((16, 4, 4, 1), seed=6)
    data = tf.data.Dataset.from_tensor_slices(
        {"image": images, "label": np.arange(16) % 3}).batch(8, drop_remainder=True)
    histories, initial, batches = [], model.get_weights(), count_shards(twin)
    for flow in (model, twin):
        flow.compile(optimizer=keras.optimizers.SGD(0.05))
        histories.append(flow.fit(data, epochs=1, shuffle=False, verbose=0).history["loss"])
    assert batches[:2] == [4, 4]  # traced with two shards
    assert histories[1] == pytest.approx(histories[0], rel=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(model.get_weights(), initial)) > 1e-4
    for weight, sharded in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(sharded, weight, rtol=1e-4, atol=1e-6)


def test_shard_bounds_never_leave_a_shard_empty():
    model = Glow(**{**SMALL, "num_classes": 0}, batch_shards=4)
    assert model.shard_bounds(np.zeros((10, 4, 4, 1))) == [0, 2, 5, 7, 10]
    assert model.shard_bounds(np.zeros((2, 4, 4, 1))) == [0, 1, 2]
    assert model.shard_bounds(np.zeros((1, 4, 4, 1))) == [0, 1]
    assert model.shard_bounds(keras.KerasTensor((None, 4, 4, 1))) == [0, None]
    assert model.shard_bounds(np.zeros((10, 4, 4, 1)), initialize=True) == [0, 10]


def test_dynamic_shard_bounds_put_the_larger_shards_first():
    """A batch size known only when the graph runs: ceil(batch * i / n), empty shards last."""
    for batch, expected in [(1, [0, 1, 1, 1]), (2, [0, 1, 2, 2]), (7, [0, 3, 5, 7]),
                            (9, [0, 3, 6, 9])]:
        bounds = dynamic_shard_bounds(tf.constant(batch), 3)
        assert [int(bound) for bound in bounds] == expected
    assert dynamic_shard_bounds(None, 3) == [0, None]


def test_unknown_batch_size_is_sharded_too():
    """A function traced for any batch size (as `evaluate`, `predict` and exports trace
    them) runs the shards, and is the unsharded model's function at every batch size,
    including those smaller than the number of shards (whose empty shards run on a
    stand-in row and return nothing)."""
    model, twin = glow_pair(shards=3)
    specs = [tf.TensorSpec((None, 4, 4, 1), tf.float32), tf.TensorSpec((None,), tf.int32)]
    encoded = tf.function(lambda x, y: twin.encode(x, y), input_signature=specs)
    latents = [tf.TensorSpec((None,) + tuple(shape), tf.float32)
               for shape in twin.latent_shapes]
    decoded = tf.function(lambda eps, y: twin.decode(eps, y),
                          input_signature=[latents, specs[1]])
    batches = count_shards(twin)
    decoded_batches = count_shards(twin, "decode_batch")
    for size in (1, 2, 7):
        x = preprocessed_images((size, 4, 4, 1), seed=10 + size)
        labels = (np.arange(size) % 3).astype("int32")
        eps_list, log_det = model.encode(x, labels)
        sharded_eps, sharded_log_det = encoded(x, labels)
        np.testing.assert_allclose(to_numpy(sharded_log_det), to_numpy(log_det), rtol=1e-5)
        for eps, sharded in zip(eps_list, sharded_eps):
            assert sharded.shape == eps.shape
            np.testing.assert_allclose(to_numpy(sharded), to_numpy(eps), atol=1e-5)
        images = decoded([to_numpy(eps) for eps in sharded_eps], labels)
        np.testing.assert_allclose(to_numpy(images), x, atol=1e-4)
    assert batches == [None] * 3 and decoded_batches == [None] * 3  # one trace, 3 shards


def test_fit_with_a_partial_last_batch_is_sharded():
    """`fit` on arrays whose last batch is partial traces its step for any batch size; the
    shards then take the unsharded model's steps."""
    model, twin = glow_pair(shards=2)
    inputs = {"image": preprocessed_images((10, 4, 4, 1), seed=9), "label": np.arange(10) % 3}
    initial, batches = model.get_weights(), count_shards(twin)
    for flow in (model, twin):
        flow.compile(optimizer=keras.optimizers.SGD(0.05))
        flow.fit(inputs, batch_size=4, epochs=1, shuffle=False, verbose=0)
    assert batches[:2] == [None, None]  # traced once, with two shards
    assert max(np.abs(a - b).max() for a, b in zip(model.get_weights(), initial)) > 1e-4
    for weight, sharded in zip(model.get_weights(), twin.get_weights()):
        np.testing.assert_allclose(sharded, weight, rtol=1e-4, atol=1e-6)


def test_realnvp_shards_an_unknown_batch_size_in_inference():
    model = RealNVP(levels=2, hidden_width=4, residual_blocks=1, image_shape=(8, 8, 2))
    x = preprocessed_images((7, 8, 8, 2), seed=3)
    model.initialize(x)
    perturb_weights(model, seed=1, scale=0.05)
    twin = RealNVP(levels=2, hidden_width=4, residual_blocks=1, image_shape=(8, 8, 2),
                   batch_shards=3)
    twin.set_weights(model.get_weights())
    batches = count_shards(twin)
    bits = tf.function(lambda images: twin.bits_per_dim(images),
                       input_signature=[tf.TensorSpec((None, 8, 8, 2), tf.float32)])
    for size in (1, 7):
        np.testing.assert_allclose(to_numpy(bits(x[:size])),
                                   to_numpy(model.bits_per_dim(x[:size])), rtol=1e-6)
    assert batches == [None] * 3


def test_realnvp_shards_in_inference_only():
    """Its batch normalisation takes the whole batch's statistics in training."""
    model = RealNVP(levels=2, hidden_width=4, residual_blocks=1, image_shape=(4, 4, 2),
                    batch_shards=2)
    x = np.zeros((6, 4, 4, 2))
    assert model.shard_bounds(x, training=True) == [0, 6]
    assert model.shard_bounds(x, training=False) == [0, 3, 6]


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2"])
def test_bad_batch_shards_are_refused(value):
    with pytest.raises(ValueError, match="batch_shards must be a positive integer"):
        Glow(**SMALL, batch_shards=value)


def test_batch_shards_survive_the_config_round_trip():
    model = Glow(**SMALL, batch_shards=3)
    assert Glow.from_config(model.get_config()).batch_shards == 3


@pytest.mark.parametrize("batch, image, cores, expected", [
    (64, (8, 8), 2, 1),      # the embedded digits: too little work per shard
    (64, (32, 32), 2, 2),    # W2
    (32, (32, 32), 2, 2),    # W1
    (64, (32, 32), 16, 4),   # each shard keeps 16 images of 32x32
    (64, (32, 32), 1, 1),
])
def test_automatic_shards(batch, image, cores, expected):
    assert cpu_threads.auto_batch_shards(batch, image, cores) == expected


def test_threads_set_in_a_fresh_process_and_a_warning_once_too_late():
    code = ("from keras_flow import cpu_threads; import tensorflow as tf; "
            "assert cpu_threads.set_threads(2); "
            "t = tf.config.threading; "
            "print(t.get_intra_op_parallelism_threads(), t.get_inter_op_parallelism_threads())")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["1", "2"]
    tf.constant(0.0)  # this process's runtime has started (with the default threads)
    threads = (tf.config.threading.get_intra_op_parallelism_threads(),
               tf.config.threading.get_inter_op_parallelism_threads())
    if threads != (1, 5):
        assert not cpu_threads.set_threads(5)
        with pytest.warns(UserWarning, match="threads cannot be set for 5 batch shards"):
            assert cpu_threads.configure(5) == 5


def test_shards_derive_each_weight_once(monkeypatch):
    """The model passes the shards one `SharedDerivations`, so a sharded call computes what
    layers derive from weights alone (here the LU product W) once per layer, as an unsharded
    one does."""
    from keras_flow.layers.inv_conv_1x1 import InvConv1x1

    model, twin = glow_pair(shards=2)
    products = []
    lu_product = InvConv1x1._lu_product
    monkeypatch.setattr(InvConv1x1, "_lu_product",
                        lambda self: products.append(self) or lu_product(self))
    x, labels = preprocessed_images((6, 4, 4, 1), seed=7), np.array([0, 1, 2, 0, 1, 2])
    model.encode(x, labels)
    unsharded = len(products)
    products.clear()
    batches = count_shards(twin)
    twin.encode(x, labels)
    assert batches == [3, 3]
    assert len(products) == unsharded == SMALL["levels"] * SMALL["depth"]

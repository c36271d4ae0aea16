"""The process that tests/test_jax_backend.py starts: the core under Keras's JAX backend.

    KERAS_BACKEND=jax python tests/jax_worker.py OUT.json

Runs the layer contract checks (round trip, log-dets that cancel, log-det == log|det J| of
JAX's autodiff Jacobian) for a few layers, and a few `fit` steps of a tiny Glow and RealNVP
with the `add_loss` objective and keras_flow's optimizers (GlowAdamax, FusedAdam), whose
backend-neutral update runs there, a Glow with batch shards, and the custom gradient of the
1x1 convolution; writes a JSON report to OUT.json for the test to check.
"""

import json
import os
import random
import sys
import time
from pathlib import Path

os.environ["KERAS_BACKEND"] = "jax"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_flow  # noqa: E402
from keras_flow import layers  # noqa: E402
from keras_flow.optimizers import make_optimizer  # noqa: E402
from tests.flow_checks import check_log_det  # noqa: E402
from tests.flow_checks import check_round_trip  # noqa: E402
from tests.flow_checks import perturb_weights  # noqa: E402
from tests.flow_checks import preprocessed_images  # noqa: E402
from tests.flow_checks import random_images  # noqa: E402

LAYERS = {
    "actnorm": lambda: layers.Actnorm(),
    "inv_conv_1x1_lu": lambda: layers.InvConv1x1(seed=3),
    "affine_coupling_glow": lambda: layers.AffineCoupling(8),
    "split2d": lambda: layers.Split2D(),
}
MODELS = {  # name: (model, optimizer)
    "glow": (lambda: keras_flow.Glow(levels=2, depth=1, hidden_width=8, image_shape=(4, 4, 2),
                                     seed=1), "adamax"),
    "realnvp": (lambda: keras_flow.RealNVP(levels=1, hidden_width=4, residual_blocks=1,
                                           image_shape=(4, 4, 2)), "adam"),
}


def layer_report(make):
    x = random_images((2, 4, 4, 4), seed=1)
    layer = make()
    layer(x)
    perturb_weights(layer, scale=0.3)
    error = check_round_trip(layer, x)
    check_log_det(layer, x)
    return {"round_trip_error": error}


def fit_report(make, optimizer):
    images = preprocessed_images((16, 4, 4, 2), seed=2)
    model = make()
    model.initialize(images)
    model.compile(optimizer=make_optimizer(optimizer, 1e-3))
    history = model.fit(images, batch_size=8, epochs=4, verbose=0).history
    return {"loss": history["loss"], "bits_per_dim": history.get("bits_per_dim")}


def sharded_report():
    """A Glow with `batch_shards=2` against its unsharded twin (same weights), then `fit`."""
    images = preprocessed_images((16, 4, 4, 2), seed=3)
    model, twin = MODELS["glow"][0](), keras_flow.Glow(levels=2, depth=1, hidden_width=8,
                                                      image_shape=(4, 4, 2), batch_shards=2)
    model.initialize(images)
    perturb_weights(model, scale=0.05)
    twin.set_weights(model.get_weights())
    difference = keras.ops.max(keras.ops.abs(
        twin.bits_per_dim(images) - model.bits_per_dim(images)))
    twin.compile(optimizer=make_optimizer("adam", 1e-3))
    history = twin.fit(images, batch_size=8, epochs=4, verbose=0).history
    return {"max_bits_per_dim_difference": float(difference), "loss": history["loss"]}


def pointwise_gradient_report():
    """`pointwise_conv`'s custom (matrix-product) gradients against JAX's autodiff of the 1x1
    convolution, through `jax.grad` under `jax.jit`."""
    import jax

    from keras_flow.kernels.pointwise import pointwise_conv

    rng = np.random.default_rng(5)
    x = random_images((2, 4, 5, 6), seed=4)
    kernel = rng.normal(size=(1, 1, 6, 7)).astype("float32")
    upstream = rng.normal(size=(2, 4, 5, 7)).astype("float32")

    def gradients(conv):
        loss = lambda a, w: keras.ops.sum(conv(a, w) * upstream)  # noqa: E731
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)

    got = gradients(pointwise_conv)
    expected = gradients(lambda a, w: keras.ops.conv(a, w, padding="same"))
    return {"max_gradient_error": max(float(np.max(np.abs(g - e)))
                                      for g, e in zip(got, expected)),
            "max_gradient": max(float(np.max(np.abs(e))) for e in expected)}


def main(out_path):
    # The same weights and batch order every run (Keras's unseeded initialisers draw from
    # Python's generator, fit's shuffling from NumPy's); keras.utils.set_random_seed would
    # import TensorFlow, which this worker must not.
    random.seed(0)
    np.random.seed(0)
    start = time.time()
    report = {"backend": keras.backend.backend(),
              "tensorflow_imported": "tensorflow" in sys.modules}
    report["layers"] = {name: layer_report(make) for name, make in LAYERS.items()}
    report["fit"] = {name: fit_report(*spec) for name, spec in MODELS.items()}
    report["sharded"] = sharded_report()
    report["pointwise_conv"] = pointwise_gradient_report()
    report["seconds"] = round(time.time() - start, 1)
    Path(out_path).write_text(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])

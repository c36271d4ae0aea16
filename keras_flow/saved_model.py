"""Export of a trained flow as a TensorFlow SavedModel that loads without keras_flow.

`export(model, path)` writes a SavedModel whose endpoints take and return plain tensors (uint8
images, float32 flat latents) whatever the model's dtype policy:

    sample(num_samples, temperature)        -> uint8 [N, H, W, C]   fresh noise every call
    sample_seeded(num_samples, temperature, seed) -> uint8 [N, H, W, C]   reproducible
    encode(images)                          -> float32 [N, D]       bin-centre dequantisation
    decode(latents)                         -> uint8 [N, H, W, C]
    bits_per_dim(images)                    -> float32 [N]          bin-centre dequantisation
    bits_per_dim_terms(images)              -> {level_1, ..., level_L, log_det, discretisation,
                                                total}: float32 [N] each, adding up to total
    metadata()                              -> {image_shape, latent_dim, n_bits, num_classes}

A class-conditional model (`num_classes > 0`) takes `labels`, int32 `[N]`, as the last input of
sample, sample_seeded, encode, decode, bits_per_dim and bits_per_dim_terms.

Mathematical details:

The flat latent concatenates each level's standardised latent eps_l (each ~ N(0, I) under the
model), flattened row-major in level order: `latents = [vec(eps_1), ..., vec(eps_L)]`,
`D = H * W * C`. Images are mapped to the model's input by `preprocess(images, n_bits,
noise="center")`, the centre of each pixel's bin, so `decode(encode(x)) == x` exactly (for the
bit-reduced x) and `bits_per_dim` is deterministic: it is the model's bits/dim at the bin
centre, `(-log p(x_c) + D log(num_bins)) / (D ln 2)`, a point estimate of the usual
uniformly-dequantised value (which averages over the bin). Sampling at temperature T decodes
`latents = T * n` with `n ~ N(0, I)`; `sample_seeded` draws `n` with
`tf.random.stateless_normal([N, D], seed=[seed, 0])`, so
`decode(T * tf.random.stateless_normal([N, D], [seed, 0]))` gives the same images.

Example:
    >>> keras_flow.export(model, "exports/glow_mnist")
    >>> loaded = tf.saved_model.load("exports/glow_mnist")        # no keras_flow needed
    >>> images = loaded.sample(tf.constant(16), tf.constant(0.7))  # uint8 [16, H, W, C]
"""

import math
import os
import shutil
import tempfile

import tensorflow as tf

from keras_flow import compat
from keras_flow import preprocessing
from keras_flow.models import objective
from keras_flow.models.flow_model import FlowModel

ENDPOINTS = ("sample", "sample_seeded", "encode", "decode", "bits_per_dim", "bits_per_dim_terms",
             "metadata")


def export(model, path, overwrite=False, dtype=None, verbose=False):
    """Writes `model` to `path` as a SavedModel with the endpoints of this module's docstring.

    The archive is written into a temporary sibling directory and renamed into place, so a
    failure never leaves a half-written export at `path`.

    Args:
        model: a built `keras_flow` flow (Glow or RealNVP), any dtype policy.
        path: directory to create.
        overwrite: replace an existing `path` (the old export is removed only once the new
            one is in place).
        dtype: dtype policy the endpoints compute in, e.g. `"float32"` for a model trained
            under `mixed_bfloat16` whose export must reconstruct images exactly
            (`decode(encode(x)) == x`); default: the model's own policy. The signatures are
            float32 / uint8 / int32 either way.
        verbose: print the endpoints' signatures.

    Returns:
        `path`.

    Raises:
        TypeError: if `model` is not a keras_flow flow model.
        ValueError: if the model is not built or its `num_bins` is not a power of two <= 256.
        FileExistsError: if `path` exists and `overwrite` is False.
    """
    if dtype is not None:
        model = with_dtype_policy(model, dtype)
    archive = build_archive(model)
    write_atomically(archive, path, overwrite=overwrite, verbose=verbose)
    return path


def build_archive(model):
    """The `EndpointArchive` of `model`: every endpoint, ready to `write_out`."""
    return EndpointArchive(FlowEndpoints(model))


class EndpointArchive:
    """The exported object: the endpoints as `tf.function`s with input signatures (also the
    SavedModel's signatures; `serving_default` is `sample`) and `variables`, `model.weights`.

    `write_out` saves it with one `tf.saved_model.save` call, which traces every endpoint once.
    (Keras's `ExportArchive` traced each twice: once to find the variables the endpoints use
    and again inside the save, whose traces are cached under a key of their own; a third of
    the export's time.) No endpoint maps float inputs to float outputs (images go in or come
    out as uint8), but the custom gradients of the model's ops are saved all the same: a
    SavedModel without them warns on every load.
    """

    def __init__(self, endpoints):
        self.root = compat.saved_model_root()
        self.functions = {}
        for name in ENDPOINTS:
            function = tf.function(getattr(endpoints, name), autograph=False,
                                   input_signature=endpoints.signature(name))
            setattr(self.root, name, function)
            self.functions[name] = function
        self.root.variables = list(endpoints.model.weights)

    def write_out(self, path, verbose=False):
        """Saves the SavedModel in the new directory `path`; `verbose` prints each endpoint's
        signature (tracing the endpoints once more)."""
        signatures = dict(self.functions, serving_default=self.functions[ENDPOINTS[0]])
        tf.saved_model.save(self.root, path, signatures=signatures)
        if verbose:
            for name, function in self.functions.items():
                outputs = tf.nest.map_structure(
                    tf.TensorSpec.from_tensor, function.get_concrete_function().structured_outputs)
                print(f"{name}{tuple(function.input_signature)} -> {outputs}")


def with_dtype_policy(model, dtype):
    """A copy of the built flow `model` (same config and weights) under the dtype policy
    `dtype`."""
    FlowEndpoints.check_model(model)
    copy = model.__class__.from_config(dict(model.get_config(), dtype=dtype))
    copy.set_weights(model.get_weights())
    return copy


def n_bits_of(num_bins):
    """`log2(num_bins)`; raises `ValueError` unless num_bins is a power of two in 2..256."""
    num_bins = int(num_bins)
    if num_bins < 2 or num_bins > 256 or num_bins & (num_bins - 1):
        raise ValueError(
            f"Export needs num_bins = 2**n_bits with n_bits in 1..8 (uint8 images); the model "
            f"has num_bins={num_bins}. Train with num_bins=256 (8-bit) or e.g. 32 (5-bit).")
    return int(math.log2(num_bins))


def flatten_latents(eps_list):
    """One latent per level `[N, h_l, w_l, c_l]` -> float32 `[N, D]`, levels in order."""
    return tf.concat([tf.reshape(tf.cast(eps, tf.float32), [tf.shape(eps)[0], -1])
                      for eps in eps_list], axis=1)


def unflatten_latents(latents, latent_shapes):
    """float32 `[N, D]` -> one latent per level, shapes `latent_shapes` with a batch axis."""
    sizes = [math.prod(shape) for shape in latent_shapes]
    parts = tf.split(latents, sizes, axis=1)
    return [tf.reshape(part, (-1,) + tuple(shape)) for part, shape in zip(parts, latent_shapes)]


class FlowEndpoints:
    """The endpoint functions of an export and their input signatures (see module docstring).

    Each function takes the tensors of its signature (plus `labels` for a class-conditional
    model), checks them with `tf.debugging` asserts whose messages name the expected shape,
    and casts at the boundary: uint8 / float32 / int32 in, uint8 / float32 out. The flow's
    two directions are `tf.function`s traced once and shared: `decode_graph` (flat latents ->
    uint8 images) by sample, sample_seeded and decode; `encode_graph` (bin-centre images ->
    flat latents and log-det) by encode and bits_per_dim.
    """

    def __init__(self, model):
        self.check_model(model)
        self.model = model
        self.n_bits = n_bits_of(model.num_bins)
        self.image_shape = tuple(model.image_shape)
        self.latent_shapes = [tuple(shape) for shape in model.latent_shapes]
        self.latent_dim = sum(math.prod(shape) for shape in self.latent_shapes)
        self.num_classes = model.num_classes
        labels = [tf.TensorSpec([None], tf.int32)] if self.num_classes else []
        self.decode_graph = tf.function(
            self._decode_latents, autograph=False,
            input_signature=[tf.TensorSpec([None, self.latent_dim], tf.float32)] + labels)
        self.encode_graph = tf.function(
            self._encode_images, autograph=False,
            input_signature=[tf.TensorSpec((None,) + self.image_shape, tf.float32)] + labels)

    @staticmethod
    def check_model(model):
        """Raises `TypeError` for a non-flow model and `ValueError` for an unbuilt one."""
        if not isinstance(model, FlowModel):
            raise TypeError(
                f"export needs a keras_flow flow model (Glow, RealNVP); received "
                f"{type(model).__name__}.")
        model.check_built()

    # --- signatures ------------------------------------------------------------------------
    def signature(self, name):
        scalar = lambda dtype, arg: tf.TensorSpec([], dtype, name=arg)  # noqa: E731
        inputs = {
            "sample": [scalar(tf.int32, "num_samples"), scalar(tf.float32, "temperature")],
            "sample_seeded": [scalar(tf.int32, "num_samples"), scalar(tf.float32, "temperature"),
                              scalar(tf.int32, "seed")],
            "encode": [tf.TensorSpec([None, None, None, None], tf.uint8, name="images")],
            "decode": [tf.TensorSpec([None, None], tf.float32, name="latents")],
            "bits_per_dim": [tf.TensorSpec([None, None, None, None], tf.uint8, name="images")],
            "bits_per_dim_terms": [
                tf.TensorSpec([None, None, None, None], tf.uint8, name="images")],
            "metadata": [],
        }[name]
        if self.num_classes and name != "metadata":
            inputs.append(tf.TensorSpec([None], tf.int32, name="labels"))
        return inputs

    # --- endpoints -------------------------------------------------------------------------
    def sample(self, num_samples, temperature, labels=None):
        num_samples = self._check_sampling(num_samples, temperature, labels)
        noise = tf.raw_ops.RandomStandardNormal(  # seed=0, seed2=0: fresh OS seed, any policy
            shape=tf.stack([num_samples, self.latent_dim]), dtype=tf.float32, seed=0, seed2=0)
        return self.decode_graph(temperature * noise, *_given(labels))

    def sample_seeded(self, num_samples, temperature, seed, labels=None):
        num_samples = self._check_sampling(num_samples, temperature, labels)
        noise = tf.random.stateless_normal(tf.stack([num_samples, self.latent_dim]),
                                           seed=tf.stack([seed, 0]), dtype=tf.float32)
        return self.decode_graph(temperature * noise, *_given(labels))

    def encode(self, images, labels=None):
        latents, _ = self.encode_graph(self._preprocess(images, labels, "encode"),
                                       *_given(labels))
        return latents

    def decode(self, latents, labels=None):
        message = f"decode expects float32 latents of shape [None, {self.latent_dim}]"
        checks = [tf.debugging.assert_rank(latents, 2, message=message),
                  tf.debugging.assert_equal(tf.shape(latents)[1], self.latent_dim,
                                            message=message),
                  tf.debugging.assert_positive(
                      tf.shape(latents)[0],
                      message="decode got an empty batch: pass at least one latent")]
        checks += self._check_labels(labels, tf.shape(latents)[0])
        latents = _after(checks, latents, [None, self.latent_dim])
        return self.decode_graph(latents, *_given(labels))

    def bits_per_dim(self, images, labels=None):
        latents, log_det = self.encode_graph(self._preprocess(images, labels, "bits_per_dim"),
                                             *_given(labels))
        # The objective on the flat latent (the same sum over dimensions).
        return self.model.bits_from_log_prob(objective.log_prob([latents], log_det))

    def bits_per_dim_terms(self, images, labels=None):
        latents, log_det = self.encode_graph(
            self._preprocess(images, labels, "bits_per_dim_terms"), *_given(labels))
        terms = objective.bits_per_dim_terms(
            unflatten_latents(latents, self.latent_shapes), log_det, self.model.num_dims,
            self.model.num_bins)
        return {term_key(name): value for name, value in terms.items()}

    def metadata(self):
        return {"image_shape": tf.constant(self.image_shape, tf.int32),
                "latent_dim": tf.constant(self.latent_dim, tf.int32),
                "n_bits": tf.constant(self.n_bits, tf.int32),
                "num_classes": tf.constant(self.num_classes, tf.int32)}

    # --- helpers ---------------------------------------------------------------------------
    def _decode_latents(self, latents, labels=None):
        images = self.model.decode(unflatten_latents(latents, self.latent_shapes), labels)
        return preprocessing.postprocess(images, self.n_bits)

    def _encode_images(self, x, labels=None):
        eps_list, log_det = self.model.encode(x, labels)
        return flatten_latents(eps_list), tf.cast(log_det, tf.float32)

    def _preprocess(self, images, labels, endpoint):
        expected = [None] + list(self.image_shape)
        message = (f"{endpoint} expects uint8 images of shape {expected} (batch, height, "
                   "width, channels)")
        checks = [tf.debugging.assert_rank(images, 4, message=message)]
        with tf.control_dependencies(checks):
            checks.append(tf.debugging.assert_equal(
                tf.shape(images)[1:], tf.constant(self.image_shape, tf.int32), message=message))
            checks.append(tf.debugging.assert_positive(
                tf.shape(images)[0],
                message=f"{endpoint} got an empty batch: pass at least one image"))
        checks += self._check_labels(labels, tf.shape(images)[0])
        return preprocessing.preprocess(_after(checks, images, expected), self.n_bits,
                                        noise="center")

    def _check_sampling(self, num_samples, temperature, labels):
        checks = [
            tf.debugging.assert_positive(num_samples, message="num_samples must be >= 1"),
            tf.debugging.assert_non_negative(temperature, message="temperature must be >= 0")]
        return _after(checks + self._check_labels(labels, num_samples), num_samples, [])

    def _check_labels(self, labels, batch_size):
        """Asserts that `labels` holds one class in 0..num_classes-1 per example."""
        if labels is None:
            return []
        message = (f"labels must be int32 [N] in 0..{self.num_classes - 1}, one per "
                   "image / latent / sample")
        return [tf.debugging.assert_equal(tf.size(labels), batch_size, message=message),
                tf.debugging.assert_less(labels, self.num_classes, message=message),
                tf.debugging.assert_non_negative(labels, message=message)]


def term_key(name):
    """`objective.bits_per_dim_terms`'s term name as an identifier ("level 1" -> "level_1",
    "log-det" -> "log_det"): the key of the `bits_per_dim_terms` endpoint's output."""
    return name.replace(" ", "_").replace("-", "_")


def _given(labels):
    return [] if labels is None else [labels]


def _after(checks, tensor, shape):
    """`tensor` with static `shape`, computed only once every assert in `checks` has passed."""
    with tf.control_dependencies(checks):
        return tf.ensure_shape(tf.identity(tensor), shape)


def write_atomically(archive, path, overwrite=False, verbose=False):
    """`archive.write_out` into a temporary sibling of `path`, then renames it into place.

    With `overwrite`, an existing `path` is first renamed into the temporary directory,
    restored if the final rename fails, and deleted with it once the new export is in place.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.lexists(path) and not overwrite:
        raise FileExistsError(
            f"{path} already exists; pass overwrite=True to replace it or choose another path.")
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.partial-", dir=parent)
    try:
        new = os.path.join(staging, "export")
        archive.write_out(new, verbose=verbose)
        _swap_into_place(new, path, os.path.join(staging, "previous"))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _swap_into_place(new, path, previous):
    if os.path.lexists(path):
        os.rename(path, previous)
    try:
        os.rename(new, path)
    except BaseException:
        if os.path.lexists(previous):
            os.rename(previous, path)
        raise

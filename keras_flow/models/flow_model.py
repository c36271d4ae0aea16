"""What Glow and RealNVP share: the likelihood objective, `add_loss`, and the user-facing API."""

import math
import numbers
import warnings

import keras
import numpy as np
from keras import ops

from keras_flow.kernels import batch_shards
from keras_flow.layers.base import FLOW_DTYPE
from keras_flow.layers.base import FloatFlowPath
from keras_flow.layers.priors import check_labels
from keras_flow.models import objective
PREPROCESSED_TOLERANCE = 1e-3  # slack on [-0.5, 0.5] for the inputs' range check


def unpack_inputs(inputs):
    """`images` or `{"image": images, "label": labels}` -> `(images, labels or None)`."""
    if isinstance(inputs, dict):
        if "image" not in inputs:
            raise ValueError(
                f"A dict input needs an 'image' entry (and 'label' for a class-conditional "
                f"model); received keys {sorted(inputs)}.")
        return inputs["image"], inputs.get("label")
    return inputs, None


def image_input_shape(input_shape):
    return tuple(input_shape["image"]) if isinstance(input_shape, dict) else tuple(input_shape)


def is_positive_int(value):
    """Whether `value` is an integer >= 1 (not a bool or a float)."""
    return not isinstance(value, bool) and isinstance(value, numbers.Integral) and value >= 1


def check_positive_ints(model, **values):
    """Raises `ValueError` unless every value is an integer >= 1 (`is_positive_int`)."""
    bad = {name: value for name, value in values.items() if not is_positive_int(value)}
    if bad:
        raise ValueError(
            f"{model} needs {', '.join(values)} to be integers >= 1; got "
            + ", ".join(f"{name}={value!r}" for name, value in bad.items()) + ".")


def check_float_images(images, what="images"):
    """Raises `ValueError` for integer or boolean images: a flow models dequantised floats."""
    dtype = keras.backend.standardize_dtype(images.dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise ValueError(
            f"The {what} are {dtype}; a flow takes dequantised float images in [-0.5, 0.5). "
            "Preprocess uint8 images with keras_flow.preprocessing.preprocess(images, n_bits) "
            "(keras_flow.data.load does it).")


def check_not_empty(shape, what):
    """Raises `ValueError` for a batch of static size 0 (TensorFlow's oneDNN convolutions
    would fail on it with an unrelated message)."""
    if shape and shape[0] == 0:
        raise ValueError(f"Received an empty batch of {what} (shape {shape}); pass at least "
                         "one example.")


def check_preprocessed(images, what="images"):
    """Raises `ValueError` if `images` (NumPy-convertible) hold NaN/Inf, and warns if they
    leave [-0.5, 0.5], the range of `keras_flow.preprocessing.preprocess` (other continuous
    data is allowed, but for images it usually means they were not preprocessed)."""
    values = np.asarray(ops.convert_to_numpy(ops.cast(images, "float32")))
    if values.size == 0:
        return
    if not np.all(np.isfinite(values)):
        raise ValueError(
            f"The {what} hold {values.size - np.count_nonzero(np.isfinite(values))} NaN/Inf "
            "values; remove or repair those images.")
    low, high = float(values.min()), float(values.max())
    if low < -0.5 - PREPROCESSED_TOLERANCE or high > 0.5 + PREPROCESSED_TOLERANCE:
        warnings.warn(
            f"The {what} span [{low:.4g}, {high:.4g}]; a flow expects dequantised images in "
            "[-0.5, 0.5] (bits/dim assume it). Preprocess uint8 images with "
            "keras_flow.preprocessing.preprocess(images, n_bits) (keras_flow.data.load does "
            "it).", stacklevel=3)


class FlowModel(FloatFlowPath, keras.Model):
    """Base of the multi-scale flows: exact likelihood in bits/dim, encode/decode, sampling.

    A subclass builds its layers and implements `encode_batch(x, labels, training, initialize,
    shared)` -> `(eps_list, log_det, z_top)` (passing `training`, `initialize` and the batch
    shards' `shared` derivations to its flow layers) and `decode_batch(eps_list, labels,
    shared)`, and sets `latent_shapes` in `build`. This class turns that into:

        log p(x) = sum_levels log N(eps; 0, I) + log|det d eps / d x|     (nats per example)
        bits/dim = (-log p(x) + D log(num_bins)) / (D ln 2),  D = height * width * channels

    `call(x)` returns the per-example bits/dim (float32 `(batch_size,)`) and registers the
    objective, their batch mean (plus the subclass's `auxiliary_loss`, e.g. Glow's classifier),
    with `add_loss`, so `compile(optimizer)`
    and `fit(images)` train it; `bits_per_dim` is also a metric of `fit` and `evaluate`.
    Inputs are preprocessed images in [-0.5, 0.5) (see `keras_flow.preprocessing`), or a dict
    `{"image": ..., "label": int}` for a class-conditional model.

    `batch_shards` = n > 1 encodes (and decodes) a batch as n slices of it side by side
    (`keras_flow.kernels.batch_shards`: data parallelism over the CPU's cores inside one step);
    the data-dependent initialisation runs as one shard, and subclasses whose training uses
    batch statistics set `shards_in_training = False`. It is saved with the model's config; set the attribute
    before the first `fit` / traced call to change it.
    """

    shards_in_training = True

    num_classes = 0  # an unconditional flow; Glow(num_classes=...) conditions on labels

    def __init__(self, num_bins=256, image_shape=None, seed=0, batch_shards=1, **kwargs):
        super().__init__(**kwargs)
        if not is_positive_int(batch_shards):
            raise ValueError(f"batch_shards must be a positive integer (1: no sharding); got "
                             f"{batch_shards!r}.")
        if int(num_bins) < 2:
            raise ValueError(f"num_bins must be >= 2 (256 for 8-bit data); got {num_bins}.")
        self.num_bins = int(num_bins)
        self.image_shape = None if image_shape is None else tuple(int(d) for d in image_shape)
        self.seed = int(seed)
        self.batch_shards = int(batch_shards)
        self.latent_shapes = None
        self.bits_per_dim_tracker = keras.metrics.Mean(name="bits_per_dim")

    # --- to be provided by the subclasses -------------------------------------------------
    def encode_batch(self, images, labels=None, training=None, initialize=False,
                     shared=None):  # pragma: no cover
        raise NotImplementedError

    def decode_batch(self, eps_list, labels=None, shared=None):  # pragma: no cover
        raise NotImplementedError

    def auxiliary_loss(self, z_top, labels):
        """A loss the subclass adds to the mean bits/dim in `call` (Glow: its classifier's),
        or None."""
        return None

    # --- shapes and validation ---------------------------------------------------------------
    @classmethod
    def halvings_for(cls, levels):  # pragma: no cover - abstract
        """How many times a model of `levels` levels halves the image's height and width
        (each must divide by `2**halvings`): what the data pipeline pads or resizes to."""
        raise NotImplementedError

    @property
    def halvings(self):
        """`halvings_for(self.levels)`."""
        return self.halvings_for(self.levels)

    def validate_image_shape(self, shape):
        """Raises `ValueError` unless `shape` is `(batch, H, W, C)` with H, W divisible by
        `2**halvings`."""
        levels = self.halvings
        if len(shape) != 4:
            raise ValueError(
                f"{self.__class__.__name__} expects images of shape (batch_size, height, width, "
                f"channels); received {tuple(shape)}. Add a channel axis for grey images.")
        height, width, channels = shape[1:]
        factor = 2 ** levels
        if (height is not None and height % factor) or (width is not None and width % factor):
            raise ValueError(
                f"Image size {height}x{width} is not divisible by 2**levels = {factor} "
                f"(levels={levels}). Pad or resize the images (keras_flow.data: fit='pad' or "
                "fit='resize', CLI --fit), or use fewer levels.")
        if self.image_shape is not None and tuple(shape[1:]) != self.image_shape:
            raise ValueError(
                f"This model was built for images of shape {self.image_shape}; received "
                f"{tuple(shape[1:])}. Resize the images or build a new model.")

    def check_inputs(self, images, labels=None):
        """Raises `ValueError` for images whose shape does not fit the built model (e.g. 3
        channels for a model built for 1) and for labels that do not fit its conditioning."""
        shape = tuple(images.shape)
        if self.image_shape is not None and (len(shape) != 4 or any(
                got is not None and got != want for got, want in zip(shape[1:], self.image_shape))):
            raise ValueError(
                f"This model was built for images of shape {self.image_shape} (height, width, "
                f"channels); received {shape[1:]}. Resize or convert the images (grey <-> RGB) "
                "to that shape, or build a new model for them.")
        check_not_empty(shape, "images")
        check_float_images(images)
        self.check_labels(labels)
        if labels is not None:
            count = tuple(labels.shape)[:1] if hasattr(labels, "shape") else (len(labels),)
            if count and None not in (count[0], shape[0]) and count[0] != shape[0]:
                raise ValueError(f"Received {shape[0]} images but {count[0]} labels; pass one "
                                 "label per image.")

    def check_labels(self, labels):
        """Raises `ValueError` for labels given to an unconditional model, or none given to a
        class-conditional one."""
        check_labels(self.num_classes, labels)

    def check_built(self):
        if self.latent_shapes is None:
            raise ValueError(
                f"{self.__class__.__name__} is not built yet: pass image_shape=(H, W, C) to the "
                "constructor, or call model.initialize(images) first.")

    @property
    def num_dims(self):
        self.check_built()
        return int(math.prod(self.image_shape))

    # --- the likelihood --------------------------------------------------------------------
    def encode_with_top(self, images, labels=None, training=None, initialize=False):
        """`encode_batch` of the whole batch, or of its `batch_shards` slices concatenated;
        `initialize=True` runs the data-dependent initialisation (see `initialize`)."""
        return batch_shards.map_shards(
            lambda tensors, shard_labels, shared: self.encode_batch(
                tensors[0], shard_labels, training=training, initialize=initialize,
                shared=shared),
            [images], labels, self.shard_bounds(images, training, initialize))

    def decode(self, eps_list, labels=None):
        """Standardised latents -> images, the exact inverse of `encode`; `decode_batch` of
        the whole batch or of its `batch_shards` slices, concatenated.

        Args:
            eps_list: one latent per level, shapes `self.latent_shapes` with a batch axis.
            labels: int `(batch_size,)` for a class-conditional model.

        Returns: float32 images `(batch_size, H, W, C)`, whatever the policy.
        """
        self.check_built()
        if len(eps_list) != self.levels:
            raise ValueError(
                f"decode needs {self.levels} latents (one per level, shapes "
                f"{self.latent_shapes}); received {len(eps_list)}. Use encode()'s full list, "
                "or sample() to draw the missing levels.")
        for level, (eps, shape) in enumerate(zip(eps_list, self.latent_shapes)):
            got = tuple(eps.shape)
            if len(got) != len(shape) + 1 or any(
                    dim is not None and dim != want for dim, want in zip(got[1:], shape)):
                raise ValueError(
                    f"decode's latent {level} has shape {got}; this model's latents have shapes "
                    f"{self.latent_shapes} after the batch axis. Use encode()'s outputs, or "
                    "latent_noise(n) for new ones.")
        check_not_empty(tuple(eps_list[0].shape), "latents")
        return batch_shards.map_shards(
            lambda tensors, shard_labels, shared: self.decode_batch(tensors, shard_labels,
                                                                    shared=shared),
            list(eps_list), labels, self.shard_bounds(eps_list[0]))

    def shard_bounds(self, images, training=None, initialize=False):
        """Batch indices of the shards `images` runs as (`keras_flow.kernels.batch_shards`):
        one shard without `batch_shards`, during the data-dependent initialisation, and in
        training for a model that uses batch statistics (`shards_in_training = False`)."""
        one = initialize or (training and not self.shards_in_training)
        return batch_shards.shard_bounds(images, 1 if one else self.batch_shards)

    def encode(self, images, labels=None):
        """Data -> standardised latents.

        Args:
            images: `(batch_size, H, W, C)` preprocessed images in [-0.5, 0.5).
            labels: int `(batch_size,)`, for a class-conditional model.

        Returns:
            `(eps_list, log_det)`: one float32 latent per level (each ~ N(0, I) under the
            model; shapes `self.latent_shapes`) and `log|det d eps / d x|`, float32
            `(batch_size,)`.
        """
        images = images if hasattr(images, "shape") else ops.convert_to_tensor(images)
        self.check_inputs(images, labels)
        eps_list, log_det, _ = self.encode_with_top(images, labels, training=False)
        return eps_list, log_det

    def log_prob(self, images, labels=None):
        """`log p(x)` in nats per example, float32 `(batch_size,)` (density of the input;
        `keras_flow.models.objective.log_prob`)."""
        return objective.log_prob(*self.encode(images, labels))

    def bits_per_dim(self, images, labels=None):
        """Bits per dimension of each example, float32 `(batch_size,)`, with the discretisation
        term: `(-log p(x) + D log(num_bins)) / (D ln 2)` (`objective.bits_per_dim`)."""
        return self.bits_from_log_prob(self.log_prob(images, labels))

    def bits_per_dim_terms(self, images, labels=None):
        """Each example's bits/dim split into per-level prior terms, the log-det term and the
        discretisation term (`objective.bits_per_dim_terms`): a dict of float32
        `(batch_size,)` tensors whose `"total"` equals `bits_per_dim(images, labels)`."""
        eps_list, log_det = self.encode(images, labels)
        return objective.bits_per_dim_terms(eps_list, log_det, self.num_dims, self.num_bins)

    def bits_from_log_prob(self, log_prob):
        """`objective.bits_per_dim` of `log p(x)` (nats per example) for this model's image size
        and `num_bins`."""
        return objective.bits_per_dim(log_prob, self.num_dims, self.num_bins)

    def call(self, inputs, training=None):
        images, labels = unpack_inputs(inputs)
        self.check_inputs(images, labels)
        eps_list, log_det, z_top = self.encode_with_top(images, labels, training=training)
        bits = self.bits_from_log_prob(objective.log_prob(eps_list, log_det))
        loss = ops.mean(bits)
        auxiliary = self.auxiliary_loss(z_top, labels)
        self.add_loss(loss if auxiliary is None else loss + auxiliary)
        return bits

    def fit(self, x=None, y=None, batch_size=None, epochs=1, verbose="auto", callbacks=None,
            **kwargs):
        """`keras.Model.fit`, after checking the batch size and NumPy inputs (shape, dtype,
        labels, range). Under a `tf.distribute` strategy pass
        `keras_flow.distribute.ActnormCheck()` among the callbacks."""
        if batch_size is not None and (not isinstance(batch_size, numbers.Integral)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None; got {batch_size!r}.")
        if isinstance(x, (np.ndarray, dict)):
            images, labels = unpack_inputs(x)
            self.check_inputs(images, labels)
            check_preprocessed(images, "training images")
        return super().fit(x, y, batch_size, epochs, verbose, callbacks, **kwargs)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.bits_per_dim_tracker.update_state(y_pred)
        return super().compute_metrics(x, y, y_pred, sample_weight)

    # --- initialisation and sampling --------------------------------------------------------
    def initialize(self, images, labels=None):
        """Data-dependent initialisation of every actnorm, in network order, on one batch.

        Runs one eager forward pass in which each not-yet-initialised `Actnorm` sets its bias
        and scale from the activations it receives (which the layers before it have already
        normalised), as openai/glow does. Layers that are already initialised (e.g. after a
        reload) keep their values, and the pass runs in inference mode, so nothing else moves
        (RealNVP's batch-norm statistics included: for it this only builds the model).
        Call it once before `fit`, outside any compiled function;
        under a `tf.distribute` strategy call it inside `strategy.scope()` (not in a replica
        context): the values are then the same on every replica
        (`keras_flow.distribute.initialize` checks it).

        Args:
            images: `(batch_size, H, W, C)` preprocessed (dequantised) training images.
            labels: int `(batch_size,)` for a class-conditional model.
        """
        images = ops.convert_to_tensor(images)
        if not self.built:
            self.build(tuple(images.shape))
        self.check_inputs(images, labels)
        check_preprocessed(images, "initialisation images")
        self.encode_with_top(ops.cast(images, FLOW_DTYPE), labels, training=False,
                             initialize=True)

    def latent_noise(self, num_samples, temperature=1.0, seed=None):
        """Standard normal latents scaled by `temperature`, one per level (float32)."""
        self.check_built()
        if isinstance(temperature, numbers.Real) and not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: the mode, 1: the model's own "
                             f"spread); got {temperature}.")
        noise = []
        for index, shape in enumerate(self.latent_shapes):
            level_seed = None if seed is None else int(seed) * 1009 + index
            noise.append(keras.random.normal((num_samples,) + tuple(shape), stddev=temperature,
                                             seed=level_seed, dtype="float32"))
        return noise

    def sample(self, num_samples, temperature=1.0, seed=None, labels=None):
        """Draws `num_samples` images: `decode(eps)` with `eps ~ N(0, temperature^2 I)` at every
        level (openai/glow's temperature; means and scales of the priors stay learned).

        Returns: `(num_samples, H, W, C)` images in about [-0.5, 0.5] (see
        `keras_flow.preprocessing.postprocess` for uint8).
        """
        if not isinstance(num_samples, numbers.Integral) or num_samples < 1:
            raise ValueError(f"num_samples must be a positive integer; got {num_samples!r}.")
        self.check_labels(labels)
        return self.decode(self.latent_noise(num_samples, temperature, seed), labels)

    def get_config(self):
        config = super().get_config()
        config.update(num_bins=self.num_bins, image_shape=self.image_shape, seed=self.seed,
                      batch_shards=self.batch_shards)
        return config

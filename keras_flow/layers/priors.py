"""Gaussian priors as standardising flow layers: z -> eps = (z - mean) / std.

A Gaussian `N(z; mean, std)` equals a standard normal on `eps = (z - mean) / std` times the
Jacobian of that map: `log N(z; mean, std) = log N(eps; 0, I) - sum(log std)`. So every prior of
the model is a flow layer with `log_det = -sum(log std)` that outputs the *standardised latent*
eps, and the model scores all latents under one N(0, I). Sampling at temperature T feeds
`eps ~ N(0, T^2 I)` to the inverse, which is openai/glow's temperature (it scales the noise of
every prior, means and scales stay learned). Latents eps are float32 under every policy.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_flow.layers.base import FLOW_DTYPE
from keras_flow.layers.base import LOG_DET_DTYPE
from keras_flow.layers.base import FlowLayer
from keras_flow.layers.base import deinterleave_channels
from keras_flow.layers.base import require_channels
from keras_flow.layers.base import split_channels
from keras_flow.layers.base import sum_per_example
from keras_flow.layers.base import zero_log_det
from keras_flow.layers.convolutions import ZeroConv2D

LOG_2PI = math.log(2.0 * math.pi)


def standard_normal_log_prob(eps):
    """`sum log N(eps; 0, I)` per example, float32: `(batch_size, ...) -> (batch_size,)`."""
    eps = ops.cast(eps, LOG_DET_DTYPE)
    return sum_per_example(-0.5 * (LOG_2PI + ops.square(eps)))


def standardize(z, mean, log_std):
    """`eps = (z - mean) * exp(-log_std)` in float32, with `log_det = -sum(log_std)`."""
    mean, log_std = ops.cast(mean, "float32"), ops.cast(log_std, "float32")
    eps = (ops.cast(z, "float32") - mean) * ops.exp(-log_std)
    return eps, -sum_per_example(log_std + ops.zeros_like(eps))


def destandardize(eps, mean, log_std, dtype):
    """`z = mean + exp(log_std) * eps` (computed in float32, returned in `dtype`)."""
    mean, log_std = ops.cast(mean, "float32"), ops.cast(log_std, "float32")
    z = mean + ops.exp(log_std) * ops.cast(eps, "float32")
    return ops.cast(z, dtype), sum_per_example(log_std + ops.zeros_like(z))


def zero_image_like(z):
    """One all-zero image of `z`'s size, channels and dtype: the input of a learned prior that
    does not look at `z` (its conv then adds only its bias and border term)."""
    shape = ops.shape(z)
    return ops.zeros((1, shape[1], shape[2], z.shape[-1]), dtype=z.dtype)


def check_labels(num_classes, labels):
    """Raises `ValueError` for labels given to an unconditional prior (`num_classes == 0`),
    none given to a class-conditional one, or labels that are not integers in
    `0..num_classes - 1` (their values are checked when they are host arrays: NumPy, lists;
    a label outside the range would select no class at all)."""
    if num_classes and labels is None:
        raise ValueError(
            f"This model is class-conditional (num_classes={num_classes}); pass labels, int "
            "(batch_size,) (to call or fit: a dict {'image': ..., 'label': ...}).")
    if not num_classes and labels is not None:
        raise ValueError(
            "Labels were given to an unconditional model; drop them, or build the model with "
            "num_classes > 0 (CLI: --conditional).")
    if labels is None:
        return
    if isinstance(labels, (list, tuple, int)):
        labels = np.asarray(labels)
    dtype = keras.backend.standardize_dtype(labels.dtype)
    if not dtype.startswith(("int", "uint")):
        raise ValueError(
            f"Labels must be integer class indices in 0..{num_classes - 1}; got dtype {dtype}. "
            "Cast whole-number labels with labels.astype('int32').")
    if isinstance(labels, np.ndarray) and labels.size and (
            labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"Labels must be in 0..{num_classes - 1} (num_classes={num_classes}); got values "
            f"from {labels.min()} to {labels.max()}.")


@keras.saving.register_keras_serializable(package="keras_flow")
class Split2D(FlowLayer):
    """Factors out half of the channels under a learned conditional Gaussian (openai/glow split2d).

        forward: (z1, z2) = (z[..., :C - C//2], z[..., C - C//2:]);  h = ZeroConv(z1)
                 mean, log_std = h[..., 0::2], h[..., 1::2];  eps = (z2 - mean) / exp(log_std)
                 outputs (z1, eps),  log_det = -sum(log_std)
        inverse: z2 = mean(z1) + exp(log_std(z1)) * eps,  z = concat(z1, z2)

    The conv starts at zero, so the prior starts as N(0, I). `eps` is exposed so the split is
    exactly invertible; `inverse` also accepts `z1` alone and then draws
    `eps ~ N(0, temperature^2 I)` (optionally with `seed`). With `conditional=False` the conv
    sees zeros instead of `z1` (as the learned top prior does): a learned Gaussian per channel
    (and, with edge padding, at the border) that does not depend on `z1`, like normflows'
    `GlowBase`. With `learned=False` the factored half is scored under N(0, I) (RealNVP) and
    `eps = z2`.

    Args:
        learned: learn the prior (openai/glow) or use N(0, I) (RealNVP).
        conditional: condition the learned prior on `z1` (openai/glow, default) or not.
        edge_padding: openai/glow's border channel in the prior's 3x3 conv.
        zero_log_scale_factor: log-scale multiplier of the prior's zero-initialised conv
            (openai/glow: 3).

    Call arguments:
        inputs: forward `(batch_size, height, width, channels)`; inverse `(z1, eps)` or `z1`.
        inverse, temperature, seed: direction; sampling options when eps is not given.

    Returns: forward `((z1, eps), log_det)`, inverse `(z, log_det)`.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
        >>> split = keras_flow.layers.Split2D()
        >>> (z1, eps), log_det = split(x)
        >>> tuple(z1.shape), tuple(eps.shape)
        ((2, 4, 4, 4), (2, 4, 4, 4))
        >>> x_back, _ = split.inverse((z1, eps))
        >>> float(np.max(np.abs(x_back - x))) < 1e-5
        True

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, section 3; openai/glow `split2d`.
    """

    def __init__(self, learned=True, conditional=True, edge_padding=True,
                 zero_log_scale_factor=3.0, **kwargs):
        super().__init__(**kwargs)
        self.learned = bool(learned)
        self.conditional = bool(conditional)
        self.edge_padding = bool(edge_padding)
        self.zero_log_scale_factor = float(zero_log_scale_factor)

    def build(self, input_shape):
        if input_shape and isinstance(input_shape[0], (tuple, list)):
            raise ValueError(
                f"Split2D '{self.name}' builds from the forward input, (batch_size, height, "
                f"width, channels); received the inverse's (z1, eps) shapes {input_shape}. "
                "Call it forward once, or build((batch_size, height, width, channels)), "
                "before an inverse call.")
        channels = require_channels(self, input_shape)
        if channels < 2:
            raise ValueError(
                f"Split2D '{self.name}' needs at least 2 channels; received shape "
                f"{tuple(input_shape)}. Squeeze before splitting.")
        self.kept_channels = channels - channels // 2
        self.factored_channels = channels // 2
        if self.learned:
            self.prior = ZeroConv2D(2 * self.factored_channels, 3, name="prior",
                                    edge_padding=self.edge_padding,
                                    log_scale_factor=self.zero_log_scale_factor,
                                    dtype=self.dtype_policy)
            self.prior.build(tuple(input_shape[:-1]) + (self.kept_channels,))

    def expected_channels(self, inverse):
        """Forward: the built channels; inverse: `(z1, eps)` channels (or `z1`'s alone)."""
        if not inverse or not self.built:
            return super().expected_channels(inverse)
        return self.kept_channels, self.factored_channels

    def _mean_and_log_std(self, kept, shared=None):
        if not self.learned:
            shape = ops.shape(kept)[:-1] + (self.factored_channels,)
            return ops.zeros(shape, "float32"), ops.zeros(shape, "float32")
        return deinterleave_channels(
            self.prior(kept if self.conditional else zero_image_like(kept), shared=shared))

    def _forward(self, inputs, shared=None, **kwargs):
        kept, factored = split_channels(inputs, self.kept_channels)
        eps, log_det = standardize(factored, *self._mean_and_log_std(kept, shared))
        return (kept, eps), log_det

    def _inverse(self, outputs, temperature=1.0, seed=None, shared=None, **kwargs):
        if isinstance(outputs, (tuple, list)):
            kept, eps = outputs
        else:
            kept = outputs
            shape = ops.shape(kept)[:-1] + (self.factored_channels,)
            eps = keras.random.normal(shape, stddev=temperature, seed=seed)
        factored, log_det = destandardize(eps, *self._mean_and_log_std(kept, shared), kept.dtype)
        return ops.concatenate([kept, factored], axis=-1), log_det

    def compute_output_spec(self, inputs, inverse=False, **kwargs):
        if inverse:
            kept = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
            b, h, w, c = kept.shape
            return (keras.KerasTensor((b, h, w, c + self.factored_channels), FLOW_DTYPE),
                    keras.KerasTensor((b,), LOG_DET_DTYPE))
        b, h, w, c = inputs.shape
        kept = keras.KerasTensor((b, h, w, c - c // 2), FLOW_DTYPE)
        eps = keras.KerasTensor((b, h, w, c // 2), LOG_DET_DTYPE)
        return (kept, eps), keras.KerasTensor((b,), LOG_DET_DTYPE)

    def get_config(self):
        config = super().get_config()
        config.update(learned=self.learned, conditional=self.conditional,
                      edge_padding=self.edge_padding,
                      zero_log_scale_factor=self.zero_log_scale_factor)
        return config


@keras.saving.register_keras_serializable(package="keras_flow")
class TopPrior(FlowLayer):
    """The prior of the last level: learned (`learn_top`) and optionally class-conditional.

        h = ZeroConv(0) [if learn_top]  +  ZeroLinear(onehot(label)) [if num_classes]
        mean, log_std = h[..., :C], h[..., C:]        (openai/glow `prior`)
        forward: eps = (z - mean) / exp(log_std),  log_det = -sum(log_std)

    With `learn_top` the only input of the zero-initialised conv is openai/glow's border channel,
    so the prior is a learned per-channel Gaussian that can differ at the image border. With
    neither option it is N(0, I) and the layer is the identity.

    Args:
        learn_top: learn the top prior (openai/glow `learntop`).
        num_classes: > 0 for a class-conditional prior (openai/glow `ycond`); then the call
            needs `labels`, int `(batch_size,)`.
        edge_padding: the border channel of the learned prior.
        zero_log_scale_factor: log-scale multiplier of the zero-initialised convs
            (openai/glow: 3).

    Example:
        >>> z = np.random.default_rng(0).normal(size=(2, 4, 4, 8)).astype("float32")
        >>> prior = keras_flow.layers.TopPrior(num_classes=3)
        >>> eps, log_det = prior(z, labels=np.array([0, 2]))
        >>> tuple(eps.shape), tuple(log_det.shape)
        ((2, 4, 4, 8), (2,))

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039; openai/glow `prior`.
    """

    def __init__(self, learn_top=True, num_classes=0, edge_padding=True,
                 zero_log_scale_factor=3.0, **kwargs):
        super().__init__(**kwargs)
        if int(num_classes) < 0:
            raise ValueError(f"num_classes must be >= 0; received {num_classes}.")
        self.learn_top = bool(learn_top)
        self.num_classes = int(num_classes)
        self.edge_padding = bool(edge_padding)
        self.zero_log_scale_factor = float(zero_log_scale_factor)

    def build(self, input_shape):
        channels = require_channels(self, input_shape)
        self.channels = channels
        if self.learn_top:
            self.top = ZeroConv2D(2 * channels, 3, edge_padding=self.edge_padding,
                                  log_scale_factor=self.zero_log_scale_factor, name="top",
                                  dtype=self.dtype_policy)
            self.top.build((1,) + tuple(input_shape[1:]))
        if self.num_classes:
            self.class_embedding = ZeroConv2D(2 * channels, 1, edge_padding=False,
                                              log_scale_factor=self.zero_log_scale_factor,
                                              name="class_embedding", dtype=self.dtype_policy)
            self.class_embedding.build((None, 1, 1, self.num_classes))

    def _mean_and_log_std(self, z, labels, shared=None):
        check_labels(self.num_classes, labels)
        h = None
        if self.learn_top:
            h = self.top(zero_image_like(z), shared=shared)
        if self.num_classes:
            onehot = ops.one_hot(ops.cast(ops.reshape(labels, (-1,)), "int32"),
                                 self.num_classes, dtype=z.dtype)
            embedding = self.class_embedding(ops.reshape(onehot, (-1, 1, 1, self.num_classes)))
            h = embedding if h is None else h + embedding
        if h is None:
            return None, None
        return split_channels(h, self.channels)

    def _forward(self, inputs, labels=None, shared=None, **kwargs):
        mean, log_std = self._mean_and_log_std(inputs, labels, shared)
        if mean is None:
            return ops.cast(inputs, "float32"), zero_log_det(inputs)
        return standardize(inputs, mean, log_std)

    def _inverse(self, outputs, labels=None, shared=None, **kwargs):
        mean, log_std = self._mean_and_log_std(outputs, labels, shared)
        if mean is None:
            return ops.cast(outputs, FLOW_DTYPE), zero_log_det(outputs)
        return destandardize(outputs, mean, log_std, FLOW_DTYPE)

    def compute_output_spec(self, inputs, inverse=False, **kwargs):
        return (keras.KerasTensor(inputs.shape, FLOW_DTYPE),
                keras.KerasTensor((inputs.shape[0],), LOG_DET_DTYPE))

    def get_config(self):
        config = super().get_config()
        config.update(learn_top=self.learn_top, num_classes=self.num_classes,
                      edge_padding=self.edge_padding,
                      zero_log_scale_factor=self.zero_log_scale_factor)
        return config

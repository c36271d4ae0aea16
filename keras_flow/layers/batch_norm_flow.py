"""RealNVP's batch normalisation as an invertible layer."""

import keras
from keras import ops

from keras_flow.layers.base import FlowLayer
from keras_flow.layers.base import per_example
from keras_flow.layers.base import require_channels
from keras_flow.layers.base import spatial_size
from keras_flow.layers.couplings import MASKS
from keras_flow.layers.couplings import checkerboard

# What a config written before `center`, `scale`, `mask` and `mask_parity` existed (keras_flow
# 0.1.0) meant: a learned log-scale and shift on every unit. `from_config` fills these in for
# missing keys, so old `.keras` files rebuild the layer they were saved with.
LEGACY_OPTIONS = dict(center=True, scale=True, mask=None, mask_parity=0)


@keras.saving.register_keras_serializable(package="keras_flow")
class BatchNormFlow(FlowLayer):
    """Batch normalisation with its log-determinant (RealNVP, section 3.7), data -> latent.

        y = (x - mean) / sqrt(var + epsilon) [* exp(log_gamma)] [+ beta]   on the active units
        y = x                                                              on the others
        log_det = sum over active units of (log_gamma_c - 0.5 * log(var_c + epsilon))
        inverse:  x = (y [- beta]) * sqrt(var + epsilon) [* exp(-log_gamma)] + mean

    The active units are all of them (`mask=None`) or, as the RealNVP code's output batch norm
    (`bn_out` in tensorflow/models real_nvp), only those the coupling before it transforms:
    `mask` and `mask_parity` name that coupling's mask (`Coupling`). As in that code the
    statistics are then those of `x * active` over (batch, height, width), so a checkerboard's
    given pixels count as zeros in them. `center` and `scale` add the learned `beta` and
    `log_gamma` (the RealNVP code has neither; keras_flow 0.1.0 had both).

    In training (`training=True`) `mean` and `var` are the batch moments over
    (batch, height, width) and the moving averages are updated
    (`moving = momentum * moving + (1 - momentum) * batch`); otherwise, and in the inverse
    direction always, the moving averages are used, so inference-mode forward and inverse are
    exact inverses. Moments are computed in float32.

    Args:
        momentum: of the moving averages (RealNVP code: decay 0.1, i.e. momentum 0.9).
        epsilon: variance floor (1e-4 as the RealNVP code).
        center: learn a shift `beta` (RealNVP code: no).
        scale: learn a log-scale `log_gamma` (RealNVP code: no).
        mask: None (every unit), `"checkerboard"` or `"channel"`: normalise only the units a
            coupling with this mask and `mask_parity` transforms.
        mask_parity: that coupling's `mask_parity` (0 or 1).

    Call arguments: `inputs` `(batch_size, height, width, channels)`, `inverse`, `training`.
    Returns: `(outputs, log_det)`, log-det float32 `(batch_size,)`.

    Example:
        >>> x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 4, 4, 2)).astype("float32")
        >>> norm = keras_flow.layers.BatchNormFlow()
        >>> y, log_det = norm(x, training=True)  # normalised by the batch's moments
        >>> bool(np.allclose(np.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-4))
        True

    Reference: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803;
    tensorflow/models research/real_nvp (`batch_norm_log_diff`).
    """

    def __init__(self, momentum=0.9, epsilon=1e-4, center=False, scale=False, mask=None,
                 mask_parity=0, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0 or epsilon <= 0:
            raise ValueError(
                f"BatchNormFlow needs 0 <= momentum < 1 and epsilon > 0; received "
                f"momentum={momentum}, epsilon={epsilon}.")
        if mask is not None and mask not in MASKS:
            raise ValueError(f"Unknown mask {mask!r}; choose None or one of {MASKS}.")
        if mask_parity not in (0, 1):
            raise ValueError(f"mask_parity must be 0 or 1; received {mask_parity!r}.")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)
        self.center = bool(center)
        self.scale = bool(scale)
        self.mask = mask
        self.mask_parity = int(mask_parity)

    def build(self, input_shape):
        channels = require_channels(self, input_shape)
        if self.mask == "channel" and channels < 2:
            raise ValueError(
                f"BatchNormFlow '{self.name}' with mask='channel' needs at least 2 channels; "
                f"received shape {tuple(input_shape)}. Use mask='checkerboard' or None.")

        def weight(name, initializer, trainable):
            return self.add_weight(name=name, shape=(channels,), initializer=initializer,
                                   trainable=trainable, autocast=False)

        # (creation order = the order in a `.keras` file: keep it)
        self.log_gamma = weight("log_gamma", "zeros", True) if self.scale else None
        self.beta = weight("beta", "zeros", True) if self.center else None
        self.moving_mean = weight("moving_mean", "zeros", False)
        self.moving_variance = weight("moving_variance", "ones", False)

    def _active(self, inputs):
        """Float32 1/0 map of the normalised units, broadcastable to the inputs; None: all."""
        if self.mask is None:
            return None
        if self.mask == "checkerboard":  # the coupling's changed pixels
            return 1.0 - checkerboard(ops.cast(inputs[:1], "float32"), self.mask_parity)
        channels = inputs.shape[-1]
        split = channels // 2
        changed = ops.arange(channels) >= split if self.mask_parity == 0 else (
            ops.arange(channels) < split)
        return ops.cast(changed, "float32")

    def _moments(self, inputs, training):
        if not training:
            return self.moving_mean, self.moving_variance
        mean = ops.mean(inputs, axis=(0, 1, 2))
        variance = ops.mean(ops.square(inputs - mean), axis=(0, 1, 2))
        m = self.momentum
        self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * mean)
        self.moving_variance.assign(m * self.moving_variance + (1.0 - m) * variance)
        return mean, variance

    def _log_scale(self, variance):
        if self.scale:
            return self.log_gamma - 0.5 * ops.log(variance + self.epsilon)
        return -0.5 * ops.log(variance + self.epsilon)

    def _log_det(self, inputs, log_scale, active):
        if active is None:
            return per_example(spatial_size(inputs) * ops.sum(log_scale), inputs)
        shape = ops.shape(inputs)
        units = ops.broadcast_to(active, (1, shape[1], shape[2], shape[3]))
        return per_example(ops.sum(units * log_scale), inputs)

    def _forward(self, inputs, training=None, **kwargs):
        x = ops.cast(inputs, "float32")
        active = self._active(inputs)
        mean, variance = self._moments(x if active is None else x * active, training)
        log_scale = self._log_scale(variance)
        outputs = (x - mean) * ops.exp(log_scale)
        if self.center:
            outputs = outputs + self.beta
        if active is not None:
            outputs = ops.where(active > 0.5, outputs, x)
        return ops.cast(outputs, inputs.dtype), self._log_det(inputs, log_scale, active)

    def _inverse(self, outputs, training=None, **kwargs):
        log_scale = self._log_scale(self.moving_variance)
        y = ops.cast(outputs, "float32")
        active = self._active(outputs)
        inputs = (y - self.beta) if self.center else y
        inputs = inputs * ops.exp(-log_scale) + self.moving_mean
        if active is not None:
            inputs = ops.where(active > 0.5, inputs, y)
        return (ops.cast(inputs, outputs.dtype),
                -self._log_det(outputs, log_scale, active))

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, epsilon=self.epsilon, center=self.center,
                      scale=self.scale, mask=self.mask, mask_parity=self.mask_parity)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**{**LEGACY_OPTIONS, **config})

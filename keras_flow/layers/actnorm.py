"""Activation normalisation (Glow, section 3.1) with explicit data-dependent initialisation."""

import keras
from keras import ops

from keras_flow.kernels.batch_shards import derive
from keras_flow.layers.base import FlowLayer
from keras_flow.layers.base import require_channels
from keras_flow.layers.base import spatial_size
from keras_flow.layers.base import per_example


@keras.saving.register_keras_serializable(package="keras_flow")
class Actnorm(FlowLayer):
    """Per-channel affine normalisation with data-dependent initialisation.

    Forward (data -> latent) and inverse, per channel c, with `s_c = log_scale_factor * v_c`:

        y = (x + b) * exp(s)            x = y * exp(-s) - b
        log_det = height * width * sum_c s_c      (negated in the inverse)

    `v` is the stored weight: the factor (3 in openai/glow) scales its effective learning rate.
    `initialize(x)` sets `b = -mean(x)` and `s = log(scale / (std(x) + epsilon))` over the batch
    and spatial axes, so the outputs on that batch have zero mean and standard deviation `scale`
    per channel. It is computed in float32 whatever the policy, and recorded in the saved,
    non-trainable `initialized` weight so that a reloaded layer never re-initialises. A forward
    call with `initialize=True` (the model's `initialize(batch)` passes it down) first
    initialises a layer that is not yet initialised from its input; no other call does, so a
    compiled training step or a reloaded model never re-initialises it.

    Args:
        log_scale_factor: multiplier of the stored log-scale (openai/glow: 3.0).
        scale: target standard deviation after initialisation (1.0).
        epsilon: added to the standard deviation during initialisation (1e-6).

    Call arguments:
        inputs: `(batch_size, height, width, channels)`.
        inverse: direction (False: data -> latent).
        initialize: forward only: initialise from `inputs` first if not yet initialised.
        shared: the model's `SharedDerivations` for a sharded call (`exp(s)` once), or None.

    Returns:
        `(outputs, log_det)`: outputs of the input's shape; float32 log-det `(batch_size,)`.

    Example:
        >>> x = np.random.default_rng(0).normal(3.0, 2.0, size=(8, 4, 4, 3)).astype("float32")
        >>> actnorm = keras_flow.layers.Actnorm()
        >>> y, log_det = actnorm(x, initialize=True)  # data-dependent init on this batch
        >>> bool(np.allclose(np.std(y, axis=(0, 1, 2)), 1.0, atol=1e-3)), actnorm.is_initialized
        (True, True)

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, section 3.1.
    """

    def __init__(self, log_scale_factor=3.0, scale=1.0, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        if log_scale_factor <= 0 or scale <= 0 or epsilon < 0:
            raise ValueError(
                "Actnorm needs log_scale_factor > 0, scale > 0 and epsilon >= 0; received "
                f"log_scale_factor={log_scale_factor}, scale={scale}, epsilon={epsilon}.")
        self.log_scale_factor = float(log_scale_factor)
        self.scale = float(scale)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = require_channels(self, input_shape)
        self.bias = self.add_weight(
            name="bias", shape=(channels,), initializer="zeros", autocast=False)
        self.log_scale = self.add_weight(
            name="log_scale", shape=(channels,), initializer="zeros", autocast=False)
        self.initialized = self.add_weight(
            name="initialized", shape=(), initializer="zeros", trainable=False,
            autocast=False)

    @property
    def is_initialized(self):
        return bool(ops.convert_to_numpy(self.initialized) > 0.5)

    def initialize(self, inputs):
        """Sets bias and log-scale from the batch `inputs` (eagerly, in float32)."""
        if not self.built:
            self.build(inputs.shape)
        x = ops.cast(inputs, "float32")
        mean = ops.mean(x, axis=(0, 1, 2))
        std = ops.sqrt(ops.mean(ops.square(x - mean), axis=(0, 1, 2)))
        log_scale = ops.log(self.scale / (std + self.epsilon))
        self.bias.assign(-mean)
        self.log_scale.assign(log_scale / self.log_scale_factor)
        self.initialized.assign(1.0)

    def _scale_log(self):
        return self.log_scale_factor * self.log_scale

    def _log_det(self, inputs):
        return per_example(spatial_size(inputs) * ops.sum(self._scale_log()), inputs)

    def output_affine(self, shared=None):
        """`(scale, shift)`, float32 `(channels,)`, with `forward(x) = x * scale + shift`:
        `scale = exp(s)`, `shift = b * exp(s)`. A convolution followed by this actnorm can fold
        them into its kernel and bias (see `EdgePaddedConv2D.call`)."""
        return derive(shared, self, "output_affine", lambda: self._output_affine(shared))

    def _output_affine(self, shared):
        scale = self._scale(shared)
        return scale, self.bias * scale

    def _scale(self, shared=None):
        """`exp(s)`, float32 `(channels,)`."""
        return derive(shared, self, "scale", lambda: ops.exp(self._scale_log()))

    def _forward(self, inputs, initialize=False, shared=None, **kwargs):
        if initialize and not self.is_initialized:
            self.initialize(inputs)
        outputs = (ops.cast(inputs, "float32") + self.bias) * self._scale(shared)
        return ops.cast(outputs, inputs.dtype), self._log_det(inputs)

    def _inverse(self, outputs, **kwargs):
        inputs = ops.cast(outputs, "float32") * ops.exp(-self._scale_log()) - self.bias
        return ops.cast(inputs, outputs.dtype), -self._log_det(outputs)

    def get_config(self):
        config = super().get_config()
        config.update(log_scale_factor=self.log_scale_factor, scale=self.scale,
                      epsilon=self.epsilon)
        return config

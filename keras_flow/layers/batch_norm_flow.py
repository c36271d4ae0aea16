"""RealNVP's batch normalisation as an invertible layer."""

import keras
from keras import ops

from keras_flow.layers.base import FlowLayer
from keras_flow.layers.base import per_example
from keras_flow.layers.base import require_channels
from keras_flow.layers.base import spatial_size


@keras.saving.register_keras_serializable(package="keras_flow")
class BatchNormFlow(FlowLayer):
    """Batch normalisation with its log-determinant (RealNVP, section 3.7).

        y = (x - mean) / sqrt(var + epsilon) * exp(log_gamma) + beta
        log_det = height * width * sum_c (log_gamma_c - 0.5 * log(var_c + epsilon))

    In training (`training=True`) `mean` and `var` are the batch moments over
    (batch, height, width) and the moving averages are updated
    (`moving = momentum * moving + (1 - momentum) * batch`); otherwise, and in the inverse
    direction always, the moving averages are used, so inference-mode forward and inverse are
    exact inverses. Moments are computed in float32.

    Args:
        momentum: of the moving averages (RealNVP code: decay 0.1, i.e. momentum 0.9).
        epsilon: variance floor (1e-4 as the RealNVP code).

    Call arguments: `inputs` `(batch_size, height, width, channels)`, `inverse`, `training`.
    Returns: `(outputs, log_det)`, log-det float32 `(batch_size,)`.

    Example:
        >>> x = np.random.default_rng(0).normal(2.0, 3.0, size=(8, 4, 4, 2)).astype("float32")
        >>> norm = keras_flow.layers.BatchNormFlow()
        >>> y, log_det = norm(x, training=True)  # normalised by the batch's moments
        >>> bool(np.allclose(np.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-4))
        True

    Reference: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803.
    """

    def __init__(self, momentum=0.9, epsilon=1e-4, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0 or epsilon <= 0:
            raise ValueError(
                f"BatchNormFlow needs 0 <= momentum < 1 and epsilon > 0; received "
                f"momentum={momentum}, epsilon={epsilon}.")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        channels = require_channels(self, input_shape)

        def weight(name, initializer, trainable):
            return self.add_weight(name=name, shape=(channels,), initializer=initializer,
                                   trainable=trainable, autocast=False)

        self.log_gamma = weight("log_gamma", "zeros", True)
        self.beta = weight("beta", "zeros", True)
        self.moving_mean = weight("moving_mean", "zeros", False)
        self.moving_variance = weight("moving_variance", "ones", False)

    def _moments(self, inputs, training):
        if not training:
            return self.moving_mean, self.moving_variance
        x = ops.cast(inputs, "float32")
        mean = ops.mean(x, axis=(0, 1, 2))
        variance = ops.mean(ops.square(x - mean), axis=(0, 1, 2))
        m = self.momentum
        self.moving_mean.assign(m * self.moving_mean + (1.0 - m) * mean)
        self.moving_variance.assign(m * self.moving_variance + (1.0 - m) * variance)
        return mean, variance

    def _log_scale(self, variance):
        return self.log_gamma - 0.5 * ops.log(variance + self.epsilon)

    def _forward(self, inputs, training=None, **kwargs):
        mean, variance = self._moments(inputs, training)
        log_scale = self._log_scale(variance)
        x = ops.cast(inputs, "float32")
        outputs = (x - mean) * ops.exp(log_scale) + self.beta
        log_det = per_example(spatial_size(inputs) * ops.sum(log_scale), inputs)
        return ops.cast(outputs, inputs.dtype), log_det

    def _inverse(self, outputs, training=None, **kwargs):
        log_scale = self._log_scale(self.moving_variance)
        y = ops.cast(outputs, "float32")
        inputs = (y - self.beta) * ops.exp(-log_scale) + self.moving_mean
        log_det = per_example(-spatial_size(outputs) * ops.sum(log_scale), outputs)
        return ops.cast(inputs, outputs.dtype), log_det

    def get_config(self):
        config = super().get_config()
        config.update(momentum=self.momentum, epsilon=self.epsilon)
        return config

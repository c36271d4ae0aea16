"""RealNVP's logit preprocessing as a flow layer, so its Jacobian enters the likelihood."""

import math

import keras
from keras import ops

from keras_flow.layers.base import FlowLayer
from keras_flow.layers.base import sum_per_example


@keras.saving.register_keras_serializable(package="keras_flow")
class LogitTransform(FlowLayer):
    """Maps images in [-0.5, 0.5) to logit space (RealNVP code, `data_constraint = 1 - 2 alpha`).

        p = alpha + (1 - 2 alpha) * (x + 0.5);   y = log p - log(1 - p)
        inverse: x = (sigmoid(y) - alpha) / (1 - 2 alpha) - 0.5
        log_det = sum [log(1 - 2 alpha) - log p - log(1 - p)]

    Computed in float32. Args: `alpha` (0.05 as tensorflow/models real_nvp).

    Call arguments: `inputs` `(batch_size, ...)`, `inverse`.
    Returns: `(outputs, log_det)`, log-det float32 `(batch_size,)`.

    Example:
        >>> x = np.random.default_rng(0).uniform(-0.5, 0.5, size=(2, 4, 4, 1)).astype("float32")
        >>> logit = keras_flow.layers.LogitTransform()
        >>> y, log_det = logit(x)
        >>> float(np.max(np.abs(logit.inverse(y)[0] - x))) < 1e-5
        True

    Reference: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803, section 4.1.
    """

    def __init__(self, alpha=0.05, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 < alpha < 0.5:
            raise ValueError(f"LogitTransform needs 0 < alpha < 0.5; received alpha={alpha}.")
        self.alpha = float(alpha)

    def _log_det(self, p):
        return sum_per_example(math.log(1.0 - 2.0 * self.alpha) - ops.log(p) - ops.log1p(-p))

    def _forward(self, inputs, **kwargs):
        p = self.alpha + (1.0 - 2.0 * self.alpha) * (ops.cast(inputs, "float32") + 0.5)
        outputs = ops.log(p) - ops.log1p(-p)
        return ops.cast(outputs, inputs.dtype), self._log_det(p)

    def _inverse(self, outputs, **kwargs):
        p = ops.sigmoid(ops.cast(outputs, "float32"))
        inputs = (p - self.alpha) / (1.0 - 2.0 * self.alpha) - 0.5
        return ops.cast(inputs, outputs.dtype), -self._log_det(p)

    def get_config(self):
        config = super().get_config()
        config.update(alpha=self.alpha)
        return config

"""The learned invertible 1x1 convolution of Glow, LU-parameterised or plain."""

import keras
import numpy as np
from keras import ops

from keras_flow.kernels.batch_shards import derive
from keras_flow.layers.base import FlowLayer
from keras_flow.layers.base import per_example
from keras_flow.layers.base import require_channels
from keras_flow.layers.base import spatial_size


def random_rotation(channels, seed):
    """A random orthogonal `(channels, channels)` matrix: Q of the QR of a normal matrix (OG)."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((channels, channels)))
    return q


def lu_decompose(matrix):
    """LU decomposition with partial pivoting: returns `(p, lower, upper)`, `matrix = p @ lower @ upper`.

    `lower` is unit lower triangular, `upper` upper triangular, `p` a permutation matrix.
    """
    n = matrix.shape[0]
    upper = np.array(matrix, dtype="float64")
    lower = np.eye(n)
    order = np.arange(n)
    for k in range(n - 1):
        pivot = k + int(np.argmax(np.abs(upper[k:, k])))
        upper[[k, pivot]] = upper[[pivot, k]]
        lower[[k, pivot], :k] = lower[[pivot, k], :k]
        order[[k, pivot]] = order[[pivot, k]]
        factors = upper[k + 1:, k] / upper[k, k]
        lower[k + 1:, k] = factors
        upper[k + 1:] -= factors[:, None] * upper[k]
    p = np.eye(n)[order].T
    return p, lower, np.triu(upper)


def mix_channels(inputs, kernel):
    """`y[b, i, j, :] = x[b, i, j, :] @ kernel`, as one matrix product over all pixels, in
    float32 (so the map is exactly the `W` whose log-determinant is reported) and returned in
    the input's dtype."""
    channels = kernel.shape[-1]
    flat = ops.reshape(ops.cast(inputs, "float32"), (-1, kernel.shape[0]))
    shape = ops.shape(inputs)
    outputs = ops.reshape(ops.matmul(flat, kernel), (-1, shape[1], shape[2], channels))
    return ops.cast(outputs, inputs.dtype)


@keras.saving.register_keras_serializable(package="keras_flow")
class InvConv1x1(FlowLayer):
    """Invertible 1x1 convolution: a learned linear mixing of the channels at every pixel.

        forward: y_ij = x_ij @ W            inverse: x_ij = y_ij @ W^-1
        log_det = height * width * log|det W|

    With `lu_decomposed=True` (default) `W = P @ L @ (U + diag(sign * exp(log_s)))`, where the
    permutation `P` and `sign` are fixed (saved, non-trainable weights), `L` is unit lower
    triangular and `U` strictly upper triangular; then `log|det W| = sum(log_s)`, W is
    invertible by construction and no determinant op is needed (so it compiles with XLA).
    With `lu_decomposed=False`, `W` is a plain trainable matrix (the variant openai/glow
    actually ran) and `log|det W|` is computed in float64 (float32 on the JAX backend unless
    x64 is enabled); TensorFlow's determinant ops do not compile with XLA, so that variant
    reports `supports_jit=False`.

    Both start from the same random rotation (Q of the QR of a seeded normal matrix). `W` and
    `W^-1` are built, and the channel mixing computed, in float32 whatever the policy (so
    under mixed precision the map is the `W` whose log-determinant is reported); only the
    outputs are cast to the input's dtype (float32 on the flow path).

    Args:
        lu_decomposed: LU parameterisation (True) or plain W (False).
        seed: seed of the initial rotation (default 0).

    Call arguments: `inputs` `(batch_size, height, width, channels)`, `inverse`.
    Returns: `(outputs, log_det)`, log-det float32 `(batch_size,)`.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 4)).astype("float32")
        >>> layer = keras_flow.layers.InvConv1x1()
        >>> z, log_det = layer(x)
        >>> x_back, inverse_log_det = layer.inverse(z)
        >>> float(np.max(np.abs(x_back - x))) < 1e-5, tuple(log_det.shape)
        (True, (2,))

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, section 3.2.
    """

    def __init__(self, lu_decomposed=True, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.lu_decomposed = bool(lu_decomposed)
        self.seed = int(seed)
        if not self.lu_decomposed:
            self.supports_jit = False

    def build(self, input_shape):
        channels = require_channels(self, input_shape)
        rotation = random_rotation(channels, self.seed)
        if not self.lu_decomposed:
            self.kernel = self._constant_weight("kernel", rotation, trainable=True)
            return
        p, lower, upper = lu_decompose(rotation)
        diagonal = np.diag(upper)
        self.permutation = self._constant_weight("permutation", p, trainable=False)
        self.sign = self._constant_weight("sign", np.sign(diagonal), trainable=False)
        self.lower = self._constant_weight("lower", np.tril(lower, -1), trainable=True)
        self.upper = self._constant_weight("upper", np.triu(upper, 1), trainable=True)
        self.log_s = self._constant_weight("log_s", np.log(np.abs(diagonal)), trainable=True)
        self._lower_mask = np.tril(np.ones((channels, channels), "float32"), -1)
        self._eye = np.eye(channels, dtype="float32")

    def _constant_weight(self, name, value, trainable):
        return self.add_weight(
            name=name, shape=value.shape, trainable=trainable, autocast=False,
            initializer=keras.initializers.Constant(value.astype("float32")))

    def weight_matrix(self, shared=None):
        """The float32 `(channels, channels)` matrix `W` (derived once per `shared`)."""
        if not self.lu_decomposed:
            return self.kernel
        return derive(shared, self, "weight_matrix", self._lu_product)

    def _lu_product(self):
        lower = self.lower * self._lower_mask + self._eye
        upper = (self.upper * ops.transpose(self._lower_mask)
                 + ops.diag(self.sign * ops.exp(self.log_s)))
        return ops.matmul(self.permutation, ops.matmul(lower, upper))

    def log_abs_det(self):
        """`log|det W|` as a float32 scalar."""
        if self.lu_decomposed:
            return ops.sum(self.log_s)
        wide = "float32" if keras.backend.backend() == "jax" else "float64"
        _, log_abs = ops.slogdet(ops.cast(self.kernel, wide))
        return ops.cast(log_abs, "float32")

    def _forward(self, inputs, shared=None, **kwargs):
        log_det = per_example(spatial_size(inputs) * self.log_abs_det(), inputs)
        return mix_channels(inputs, self.weight_matrix(shared)), log_det

    def _inverse(self, outputs, shared=None, **kwargs):
        log_det = per_example(-spatial_size(outputs) * self.log_abs_det(), outputs)
        inverse = derive(shared, self, "inverse", lambda: ops.inv(self.weight_matrix(shared)))
        return mix_channels(outputs, inverse), log_det

    def get_config(self):
        config = super().get_config()
        config.update(lu_decomposed=self.lu_decomposed, seed=self.seed)
        return config

"""Fixed channel permutations: `Reverse` (NICE/RealNVP) and `Shuffle` (a seeded random order)."""

import keras
import numpy as np
from keras import ops

from keras_flow.layers.base import FlowLayer
from keras_flow.layers.base import require_channels
from keras_flow.layers.base import zero_log_det


class ChannelPermutation(FlowLayer):
    """Reorders the channels by a fixed permutation `pi` (volume preserving).

        forward: y[..., c] = x[..., pi[c]]        inverse: x[..., pi[c]] = y[..., c]
        log_det = 0

    The order and its inverse are saved, non-trainable int32 weights (`permutation`,
    `inverse_permutation`), so a reloaded model never re-draws them. Subclasses define the
    order in `make_order(channels)`.
    """

    def make_order(self, channels):  # pragma: no cover - abstract
        raise NotImplementedError

    def build(self, input_shape):
        channels = require_channels(self, input_shape)
        order = np.asarray(self.make_order(channels), dtype="int32")
        self.permutation = self.add_weight(
            name="permutation", shape=(channels,), dtype="int32", trainable=False,
            initializer=keras.initializers.Constant(order))
        self.inverse_permutation = self.add_weight(
            name="inverse_permutation", shape=(channels,), dtype="int32", trainable=False,
            initializer=keras.initializers.Constant(np.argsort(order).astype("int32")))

    def _forward(self, inputs, **kwargs):
        return ops.take(inputs, self.permutation, axis=-1), zero_log_det(inputs)

    def _inverse(self, outputs, **kwargs):
        return ops.take(outputs, self.inverse_permutation, axis=-1), zero_log_det(outputs)


@keras.saving.register_keras_serializable(package="keras_flow")
class Reverse(ChannelPermutation):
    """Reverses the channel order, `y = x[..., ::-1]` (NICE / RealNVP; openai/glow `reverse`).

    Call arguments: `inputs` `(batch_size, height, width, channels)`, `inverse`.
    Returns: `(outputs, log_det)` with `log_det = 0` of shape `(batch_size,)`.

    Example:
        >>> x = np.arange(4, dtype="float32").reshape(1, 1, 1, 4)
        >>> y, log_det = keras_flow.layers.Reverse()(x)
        >>> np.asarray(y).ravel().tolist(), float(log_det[0])
        ([3.0, 2.0, 1.0, 0.0], 0.0)

    Reference: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803 (the
    reversal); Kingma & Dhariwal, "Glow", arXiv:1807.03039, section 3.2 (as a baseline).
    """

    def make_order(self, channels):
        return np.arange(channels)[::-1]


@keras.saving.register_keras_serializable(package="keras_flow")
class Shuffle(ChannelPermutation):
    """A fixed random channel permutation drawn once from `seed` (openai/glow `shuffle`).

    Args:
        seed: integer seed of the permutation (default 0). Unlike openai/glow, which seeds from
            Python's per-process `hash()` of the scope name, the order is reproducible.

    Call arguments: `inputs` `(batch_size, height, width, channels)`, `inverse`.
    Returns: `(outputs, log_det)` with `log_det = 0` of shape `(batch_size,)`.

    Example:
        >>> x = np.arange(4, dtype="float32").reshape(1, 1, 1, 4)
        >>> shuffle = keras_flow.layers.Shuffle(seed=0)
        >>> y, _ = shuffle(x)
        >>> sorted(np.asarray(y).ravel().tolist()), np.asarray(shuffle.inverse(y)[0]).ravel().tolist()
        ([0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0])

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, section 3.2 (the baseline).
    """

    def __init__(self, seed=0, **kwargs):
        super().__init__(**kwargs)
        self.seed = int(seed)

    def make_order(self, channels):
        return np.random.default_rng(self.seed).permutation(channels)

    def get_config(self):
        config = super().get_config()
        config.update(seed=self.seed)
        return config

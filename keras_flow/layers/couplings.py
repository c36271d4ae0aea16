"""Additive (NICE) and affine (RealNVP / Glow) coupling layers with channel or checkerboard masks."""

import math

import keras
from keras import ops

from keras_flow.layers.base import FlowLayer
from keras_flow.layers.base import deinterleave_channels
from keras_flow.layers.base import require_channels
from keras_flow.layers.base import split_channels
from keras_flow.layers.base import sum_per_example
from keras_flow.layers.base import zero_log_det
from keras_flow.layers.coupling_networks import RESNET_LEGACY_OPTIONS
from keras_flow.layers.coupling_networks import GlowCouplingNetwork
from keras_flow.layers.coupling_networks import ResNetCouplingNetwork

MASKS = ("channel", "checkerboard")
NETWORKS = ("glow", "resnet")


def checkerboard(inputs, parity):
    """`(1, height, width, 1)` mask, 1 where `(i + j + parity)` is even (the given positions)."""
    shape = ops.shape(inputs)
    rows = ops.arange(shape[1])[:, None]
    cols = ops.arange(shape[2])[None, :]
    mask = ops.cast(ops.equal((rows + cols + parity) % 2, 0), inputs.dtype)
    return ops.reshape(mask, (1, shape[1], shape[2], 1))


class Coupling(FlowLayer):
    """Shared machinery of the couplings: split, conditioner network, merge.

    The input is split into a *given* part `x_a`, passed through unchanged, and a *changed* part
    `x_b`, transformed elementwise with parameters computed from `x_a` by the network `NN`:

        y_a = x_a,    y_b = (x_b + shift) * scale,    (shift, scale) = g(NN(x_a))
        inverse:      x_b = y_b / scale - shift
        log_det = sum log(scale)   (0 for additive couplings)

    Masks: `"channel"` splits the channels into the first `C // 2` and the rest (openai/glow:
    the first half is given); `mask_parity=1` swaps the roles. `"checkerboard"` (RealNVP) keeps
    the pixels where `(i + j + mask_parity)` is even and transforms the others; the network sees
    `x * mask` and the mask itself as an extra channel. Subclasses define
    `params_per_channel` and `shift_and_scale(h)`.
    """

    params_per_channel = 1

    def __init__(self, hidden_width=512, mask="channel", mask_parity=0, network="glow",
                 residual_blocks=4, edge_padding=True, zero_log_scale_factor=3.0,
                 resnet_input_norm=True, resnet_skip=True, **kwargs):
        super().__init__(**kwargs)
        if mask not in MASKS:
            raise ValueError(f"Unknown mask {mask!r}; choose one of {MASKS}.")
        if network not in NETWORKS:
            raise ValueError(f"Unknown network {network!r}; choose one of {NETWORKS}.")
        if int(hidden_width) <= 0 or int(residual_blocks) < 0 or mask_parity not in (0, 1):
            raise ValueError(
                "A coupling needs hidden_width > 0, residual_blocks >= 0 and mask_parity in "
                f"(0, 1); received hidden_width={hidden_width}, residual_blocks="
                f"{residual_blocks}, mask_parity={mask_parity}.")
        self.hidden_width = int(hidden_width)
        self.mask = mask
        self.mask_parity = int(mask_parity)
        self.network_type = network
        self.residual_blocks = int(residual_blocks)
        self.edge_padding = bool(edge_padding)
        self.zero_log_scale_factor = float(zero_log_scale_factor)
        self.resnet_input_norm = bool(resnet_input_norm)
        self.resnet_skip = bool(resnet_skip)

    def build(self, input_shape):
        channels = require_channels(self, input_shape)
        if self.mask == "channel":
            if channels < 2:
                raise ValueError(
                    f"{self.__class__.__name__} '{self.name}' with mask='channel' needs at "
                    f"least 2 channels to split; received shape {tuple(input_shape)}. Use "
                    "mask='checkerboard', or squeeze the image first.")
            split = channels // 2
            given, changed = (split, channels - split) if self.mask_parity == 0 else (
                channels - split, split)
        else:
            given, changed = channels + 1, channels
        self.network = self._make_network(self.params_per_channel * changed)
        self.network.build(tuple(input_shape[:-1]) + (given,))

    def _make_network(self, output_channels):
        if self.network_type == "glow":
            return GlowCouplingNetwork(output_channels, self.hidden_width, self.edge_padding,
                                       self.zero_log_scale_factor, name="network",
                                       dtype=self.dtype_policy)
        return ResNetCouplingNetwork(output_channels, self.hidden_width, self.residual_blocks,
                                     input_norm=self.resnet_input_norm, skip=self.resnet_skip,
                                     masked_input=self.mask == "checkerboard", name="network",
                                     dtype=self.dtype_policy)

    def _split(self, inputs):
        """Returns `(network input, changed part, unchanged channels or None, active mask or
        None)`: a channel mask passes its given half through, a checkerboard multiplies."""
        if self.mask == "checkerboard":
            mask = checkerboard(inputs, self.mask_parity)
            given = ops.concatenate(
                [inputs * mask, ops.broadcast_to(mask, ops.shape(inputs)[:-1] + (1,))], axis=-1)
            return given, inputs, None, 1.0 - mask
        first, second = split_channels(inputs, inputs.shape[-1] // 2)
        return (first, second, first, None) if self.mask_parity == 0 else (
            second, first, second, None)

    def _merge(self, unchanged, changed):
        if unchanged is None:
            return changed
        parts = [unchanged, changed] if self.mask_parity == 0 else [changed, unchanged]
        return ops.concatenate(parts, axis=-1)

    def _parameters(self, inputs, **kwargs):
        """`(changed, unchanged, shift, scale, log_scale)`, all but the first two float32;
        `scale` and `log_scale` are None for a volume-preserving coupling."""
        given, changed, unchanged, active = self._split(inputs)
        shift, scale, log_scale = self.shift_and_scale(self.network(given, **kwargs))
        shift = ops.cast(shift, "float32")
        if active is not None:  # the given pixels pass through: shift 0, scale 1
            active = ops.cast(active, "float32")
            shift = shift * active
            if log_scale is not None:
                log_scale = log_scale * active
                scale = ops.where(active > 0.5, scale, 1.0)
        return changed, unchanged, shift, scale, log_scale

    def _forward(self, inputs, **kwargs):
        changed, unchanged, shift, scale, log_scale = self._parameters(inputs, **kwargs)
        outputs = ops.cast(changed, "float32") + shift
        if scale is None:
            log_det = zero_log_det(inputs)
        else:
            outputs = outputs * scale
            log_det = sum_per_example(log_scale)
        return self._merge(unchanged, ops.cast(outputs, changed.dtype)), log_det

    def _inverse(self, outputs, **kwargs):
        changed, unchanged, shift, scale, log_scale = self._parameters(outputs, **kwargs)
        inputs = ops.cast(changed, "float32")
        if scale is None:
            log_det = zero_log_det(outputs)
        else:
            inputs = inputs / scale
            log_det = -sum_per_example(log_scale)
        return self._merge(unchanged, ops.cast(inputs - shift, changed.dtype)), log_det

    def shift_and_scale(self, h):  # pragma: no cover - abstract
        """`(shift, scale, log(scale))` from the network's output `h`; scale and log-scale
        float32, or None for a volume-preserving coupling."""
        raise NotImplementedError

    def get_config(self):
        config = super().get_config()
        config.update(hidden_width=self.hidden_width, mask=self.mask,
                      mask_parity=self.mask_parity, network=self.network_type,
                      residual_blocks=self.residual_blocks, edge_padding=self.edge_padding,
                      zero_log_scale_factor=self.zero_log_scale_factor,
                      resnet_input_norm=self.resnet_input_norm, resnet_skip=self.resnet_skip)
        return config

    @classmethod
    def from_config(cls, config):
        # a config from before the `resnet_*` options rebuilds the network it was saved with
        legacy = {f"resnet_{key}": value for key, value in RESNET_LEGACY_OPTIONS.items()}
        return cls(**{**legacy, **config})


@keras.saving.register_keras_serializable(package="keras_flow")
class AdditiveCoupling(Coupling):
    """Additive coupling (NICE; openai/glow `flow_coupling=0`), volume preserving.

        y_a = x_a,   y_b = x_b + NN(x_a);   inverse x_b = y_b - NN(y_a);   log_det = 0

    The network's last convolution starts at zero, so an untrained layer is the identity.

    Args:
        hidden_width: width of the conditioner network (Glow: 512).
        mask: `"channel"` (Glow) or `"checkerboard"` (RealNVP).
        mask_parity: 0 or 1, which half (or which checkerboard colour) is given.
        network: `"glow"` (conv3x3-actnorm-ReLU-conv1x1-actnorm-ReLU-zero conv3x3) or
            `"resnet"` (RealNVP's weight-normalised ResNet).
        residual_blocks: residual blocks of the `"resnet"` network.
        edge_padding: openai/glow's border channel in the `"glow"` network.
        zero_log_scale_factor: log-scale multiplier of the `"glow"` network's zero-initialised
            last convolution (openai/glow: 3).
        resnet_input_norm, resnet_skip: the `"resnet"` network's `input_norm` and `skip`
            (`ResNetCouplingNetwork`; both on, as the RealNVP code).

    Call arguments: `inputs` `(batch_size, height, width, channels)`, `inverse`.
    Returns: `(outputs, log_det)`, log-det float32 `(batch_size,)`.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 4)).astype("float32")
        >>> layer = keras_flow.layers.AdditiveCoupling(hidden_width=16)
        >>> z, log_det = layer(x)
        >>> x_back, inverse_log_det = layer.inverse(z)
        >>> float(np.max(np.abs(x_back - x))) < 1e-5, tuple(log_det.shape)
        (True, (2,))

    Reference: Dinh et al., "NICE", arXiv:1410.8516; Kingma & Dhariwal, arXiv:1807.03039.
    """

    params_per_channel = 1

    def shift_and_scale(self, h):
        return h, None, None


SCALE_FUNCTIONS = ("sigmoid", "tanh", "exp")


@keras.saving.register_keras_serializable(package="keras_flow")
class AffineCoupling(Coupling):
    """Affine coupling (RealNVP; openai/glow `flow_coupling=1`), shift first, then scale.

        h = NN(x_a);  shift = h[..., 0::2];  raw = h[..., 1::2]
        y_b = (x_b + shift) * scale;   inverse x_b = y_b / scale - shift
        log_det = sum log(scale)

    with `scale_fn`:
      - `"sigmoid"` (Glow, default): `scale = sigmoid(raw + 2)`, bounded in (0, 1); an
        untrained layer is the fixed contraction `scale = sigmoid(2) ~ 0.881`;
      - `"tanh"` (RealNVP): `log(scale) = c * tanh(raw)` with a learned scalar `c` starting at
        `tanh_scale_init` (RealNVP code: 0 for checkerboard, 1 for channel couplings);
      - `"exp"` (RealNVP paper): `log(scale) = raw`.
    `log(scale)` is computed in float32 and clipped to `[-log_scale_clip, log_scale_clip]`, in
    both directions alike, so the inverse never divides by a scale that rounded to zero
    (`sigmoid` is unaffected above exp(-15) ~ 3e-7; with a clip it runs as
    `scale = max(sigmoid(raw + 2), exp(-clip))` and `log(scale)`, two passes fewer than a
    log-sigmoid and its exp).

    Args: those of `AdditiveCoupling`, plus `scale_fn`, `tanh_scale_init`, `log_scale_clip`.

    Call arguments: `inputs` `(batch_size, height, width, channels)`, `inverse`.
    Returns: `(outputs, log_det)`, log-det float32 `(batch_size,)`.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 4)).astype("float32")
        >>> layer = keras_flow.layers.AffineCoupling(hidden_width=16)
        >>> z, log_det = layer(x)
        >>> x_back, inverse_log_det = layer.inverse(z)
        >>> float(np.max(np.abs(x_back - x))) < 1e-5, tuple(log_det.shape)
        (True, (2,))

    Reference: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803;
    Kingma & Dhariwal, arXiv:1807.03039 and openai/glow model.py.
    """

    params_per_channel = 2

    def __init__(self, hidden_width=512, scale_fn="sigmoid", tanh_scale_init=1.0,
                 log_scale_clip=15.0, **kwargs):
        super().__init__(hidden_width=hidden_width, **kwargs)
        if scale_fn not in SCALE_FUNCTIONS:
            raise ValueError(f"Unknown scale_fn {scale_fn!r}; choose one of {SCALE_FUNCTIONS}.")
        if log_scale_clip is not None and log_scale_clip <= 0:
            raise ValueError(f"log_scale_clip must be positive or None; got {log_scale_clip}.")
        self.scale_fn = scale_fn
        self.tanh_scale_init = float(tanh_scale_init)
        self.log_scale_clip = None if log_scale_clip is None else float(log_scale_clip)

    def build(self, input_shape):
        if self.scale_fn == "tanh":
            self.tanh_scale = self.add_weight(
                name="tanh_scale", shape=(), autocast=False,
                initializer=keras.initializers.Constant(self.tanh_scale_init))
        super().build(input_shape)

    def shift_and_scale(self, h):
        shift, raw = deinterleave_channels(h)
        raw = ops.cast(raw, "float32")
        if self.scale_fn == "sigmoid" and self.log_scale_clip is not None:
            # scale < 1, so only the lower clip can act; a sigmoid and a log are two fast
            # passes, where log_sigmoid (a softplus) and its exp would be slower ones
            scale = ops.maximum(ops.sigmoid(raw + 2.0), math.exp(-self.log_scale_clip))
            return shift, scale, ops.log(scale)
        if self.scale_fn == "sigmoid":
            log_scale = ops.log_sigmoid(raw + 2.0)
        elif self.scale_fn == "tanh":
            log_scale = self.tanh_scale * ops.tanh(raw)
        else:
            log_scale = raw
        if self.log_scale_clip is not None:
            log_scale = ops.clip(log_scale, -self.log_scale_clip, self.log_scale_clip)
        return shift, ops.exp(log_scale), log_scale

    def get_config(self):
        config = super().get_config()
        config.update(scale_fn=self.scale_fn, tanh_scale_init=self.tanh_scale_init,
                      log_scale_clip=self.log_scale_clip)
        return config

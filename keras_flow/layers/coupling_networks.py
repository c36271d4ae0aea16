"""The conditioner networks of the couplings: Glow's 3-layer CNN and RealNVP's ResNet."""

import keras
from keras import ops

from keras_flow.layers.actnorm import Actnorm
from keras_flow.layers.convolutions import EdgePaddedConv2D
from keras_flow.layers.convolutions import WeightNormConv2D
from keras_flow.layers.convolutions import ZeroConv2D


def normalized_conv(conv, actnorm, inputs, initialize=False, shared=None):
    """`actnorm(conv(inputs))`, with the actnorm folded into the convolution's kernel and bias
    (`EdgePaddedConv2D.call(x, output_scale, output_shift)`): the same function without the
    elementwise passes. During data-dependent initialisation (`initialize=True`) the actnorm
    runs on the convolution's output, which it needs to see. `shared`: the model's
    `SharedDerivations` for a sharded call, or None."""
    if initialize:
        outputs, _ = actnorm(conv(inputs), initialize=True)
        return outputs
    scale, shift = actnorm.output_affine(shared)
    return conv(inputs, output_scale=scale, output_shift=shift, shared=shared)


@keras.saving.register_keras_serializable(package="keras_flow")
class GlowCouplingNetwork(keras.layers.Layer):
    """openai/glow's `f`: conv3x3 -> actnorm -> ReLU -> conv1x1 -> actnorm -> ReLU -> zero conv3x3.

    The hidden convolutions have no bias (the actnorm that follows replaces it, initialised from
    data like every actnorm) and start from N(0, 0.05) weights; the last is a `ZeroConv2D`, so
    the network outputs zeros until trained.

    Args:
        output_channels: channels of the output.
        hidden_width: channels of the two hidden layers (openai/glow: 512).
        edge_padding: openai/glow's border-indicator channel on the 3x3 convolutions.
        zero_log_scale_factor: the last convolution's log-scale multiplier (`ZeroConv2D`'s
            `log_scale_factor`; openai/glow: 3).

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 2)).astype("float32")
        >>> network = keras_flow.layers.GlowCouplingNetwork(4, hidden_width=16)
        >>> float(np.max(np.abs(network(x))))  # the zero-initialised last convolution
        0.0

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, section 3.3; openai/glow `f`.
    """

    def __init__(self, output_channels, hidden_width=512, edge_padding=True,
                 zero_log_scale_factor=3.0, **kwargs):
        super().__init__(**kwargs)
        self.output_channels = int(output_channels)
        self.hidden_width = int(hidden_width)
        self.edge_padding = bool(edge_padding)
        self.zero_log_scale_factor = float(zero_log_scale_factor)
        normal = keras.initializers.RandomNormal(stddev=0.05)
        policy = self.dtype_policy
        self.conv_in = EdgePaddedConv2D(
            self.hidden_width, 3, use_bias=False, edge_padding=self.edge_padding,
            kernel_initializer=normal, name="conv_in", dtype=policy)
        self.norm_in = Actnorm(name="actnorm_in", dtype=policy)
        self.conv_hidden = EdgePaddedConv2D(
            self.hidden_width, 1, use_bias=False, kernel_initializer=normal,
            name="conv_hidden", dtype=policy)
        self.norm_hidden = Actnorm(name="actnorm_hidden", dtype=policy)
        self.conv_out = ZeroConv2D(
            self.output_channels, 3, edge_padding=self.edge_padding,
            log_scale_factor=self.zero_log_scale_factor, name="conv_out", dtype=policy)

    def build(self, input_shape):
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_width,)
        self.conv_in.build(input_shape)
        self.norm_in.build(hidden_shape)
        self.conv_hidden.build(hidden_shape)
        self.norm_hidden.build(hidden_shape)
        self.conv_out.build(hidden_shape)

    def call(self, inputs, training=None, initialize=False, shared=None):
        hidden = normalized_conv(self.conv_in, self.norm_in, inputs, initialize, shared)
        hidden = normalized_conv(self.conv_hidden, self.norm_hidden, ops.relu(hidden),
                                 initialize, shared)
        return self.conv_out(ops.relu(hidden), shared=shared)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(output_channels=self.output_channels, hidden_width=self.hidden_width,
                      edge_padding=self.edge_padding,
                      zero_log_scale_factor=self.zero_log_scale_factor)
        return config


# What a `ResNetCouplingNetwork` config written before `input_norm` and `skip` existed (keras_flow
# 0.1.0) meant: the raw input into the first convolution, no skip path. `from_config` fills
# these in for missing keys, so old `.keras` files rebuild the network they were saved with.
RESNET_LEGACY_OPTIONS = dict(input_norm=False, skip=False)


@keras.saving.register_keras_serializable(package="keras_flow")
class ResNetCouplingNetwork(keras.layers.Layer):
    """RealNVP's s/t network, as tensorflow/models real_nvp builds it: an input layer, then a
    ResNet of weight-normalised convolutions with batch norm and a skip path.

        input layer (input_norm):
            checkerboard (masked_input): r = 2 * BN(x * mask);  h = ReLU([r, -r, mask])
            channel:                     r = BN(x_a);           h = ReLU([r, -r])
        h = conv3x3(h);  s = skip_in(h)
        per block:  h += conv3x3(ReLU(BN(conv3x3(ReLU(BN(h))))));  s += skip_i(h)
        out = conv1x1(ReLU(BN(s)))            (without the skip path: s = h)

    `skip_in` and `skip_i` are 1x1 weight-normalised convolutions with gain and bias; every BN
    normalises over (batch, height, width) without a learned scale (it keeps a learned shift,
    like the original's `batch_norm(scale=False)`), epsilon 1e-4, moving averages with decay
    0.1. Convolutions: `WeightNormConv2D` (the block's first one without gain and bias, the
    input one without gain, the rest with both).

    Args:
        output_channels: channels of the output.
        hidden_width: feature maps of the residual blocks.
        residual_blocks: number of residual blocks.
        input_norm: the original's input layer above (default); False feeds the input
            straight into the first convolution (keras_flow 0.1.0).
        skip: the skip path (default, the original's `skip=1`); False: the head reads the
            last block (keras_flow 0.1.0).
        masked_input: the input is a checkerboard coupling's `concat([x * mask, mask])`
            (the coupling sets it); only the input layer reads it.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 2)).astype("float32")
        >>> network = keras_flow.layers.ResNetCouplingNetwork(4, hidden_width=8, residual_blocks=1)
        >>> tuple(network(x).shape)
        (2, 4, 4, 4)

    Reference: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803;
    tensorflow/models research/real_nvp (`resnet`, `masked_conv_aff_coupling`).
    """

    def __init__(self, output_channels, hidden_width=64, residual_blocks=4, input_norm=True,
                 skip=True, masked_input=False, **kwargs):
        super().__init__(**kwargs)
        self.output_channels = int(output_channels)
        self.hidden_width = int(hidden_width)
        self.residual_blocks = int(residual_blocks)
        self.input_norm = bool(input_norm)
        self.skip = bool(skip)
        self.masked_input = bool(masked_input)
        policy = self.dtype_policy

        def norm(name):
            return keras.layers.BatchNormalization(
                scale=False, epsilon=1e-4, momentum=0.9, name=name, dtype=policy)

        # (layers exist only for the options that use them: a 0.1.0 network has exactly its
        # old weights, under the same paths)
        self.norm_in = norm("norm_in") if self.input_norm else None
        self.conv_in = WeightNormConv2D(self.hidden_width, 3, use_gain=False, name="conv_in",
                                        dtype=policy)
        self.blocks = [
            (norm(f"block{i}_norm_a"),
             WeightNormConv2D(self.hidden_width, 3, use_gain=False, use_bias=False,
                              name=f"block{i}_conv_a", dtype=policy),
             norm(f"block{i}_norm_b"),
             WeightNormConv2D(self.hidden_width, 3, name=f"block{i}_conv_b", dtype=policy))
            for i in range(self.residual_blocks)]
        self.skips = [
            WeightNormConv2D(self.hidden_width, 1, name=name, dtype=policy)
            for name in ["skip_in"] + [f"skip_{i}" for i in range(self.residual_blocks)]
        ] if self.skip else []
        self.norm_out = norm("norm_out")
        self.conv_out = WeightNormConv2D(self.output_channels, 1, name="conv_out", dtype=policy)

    def build(self, input_shape):
        hidden_shape = tuple(input_shape[:-1]) + (self.hidden_width,)
        self.conv_in.build(self._input_layer_shape(input_shape))
        for norm_a, conv_a, norm_b, conv_b in self.blocks:
            for layer in (norm_a, conv_a, norm_b, conv_b):
                layer.build(hidden_shape)
        for conv in self.skips:
            conv.build(hidden_shape)
        self.norm_out.build(hidden_shape)
        self.conv_out.build(hidden_shape)

    def _input_layer_shape(self, input_shape):
        """The input layer's output shape: `2 C (+ 1 for the mask)` channels."""
        if not self.input_norm:
            return tuple(input_shape)
        channels = int(input_shape[-1]) - int(self.masked_input)
        if channels < 1:
            raise ValueError(
                f"ResNetCouplingNetwork '{self.name}' with masked_input=True needs the image "
                f"channels plus the mask channel; received shape {tuple(input_shape)}.")
        self.norm_in.build(tuple(input_shape[:-1]) + (channels,))
        return tuple(input_shape[:-1]) + (2 * channels + int(self.masked_input),)

    def _input_layer(self, inputs, training):
        if not self.input_norm:
            return inputs
        if self.masked_input:
            given, mask = inputs[..., :-1], inputs[..., -1:]
            normalised = 2.0 * self.norm_in(given, training=training)
            return ops.relu(ops.concatenate([normalised, -normalised, mask], axis=-1))
        normalised = self.norm_in(inputs, training=training)
        return ops.relu(ops.concatenate([normalised, -normalised], axis=-1))

    def call(self, inputs, training=None, initialize=False, shared=None):
        hidden = self.conv_in(self._input_layer(inputs, training))
        skips = iter(self.skips)
        summed = next(skips)(hidden) if self.skip else None
        for norm_a, conv_a, norm_b, conv_b in self.blocks:
            branch = conv_a(ops.relu(norm_a(hidden, training=training)))
            hidden = hidden + conv_b(ops.relu(norm_b(branch, training=training)))
            if self.skip:
                summed = summed + next(skips)(hidden)
        head = summed if self.skip else hidden
        return self.conv_out(ops.relu(self.norm_out(head, training=training)))

    def gains(self):
        """The weight-norm gains (the original's `magnitude` variables, which it regularises)."""
        convs = [self.conv_in, self.conv_out, *self.skips]
        convs += [conv for _, conv_a, _, conv_b in self.blocks for conv in (conv_a, conv_b)]
        return [conv.gain for conv in convs if conv.use_gain]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(output_channels=self.output_channels, hidden_width=self.hidden_width,
                      residual_blocks=self.residual_blocks, input_norm=self.input_norm,
                      skip=self.skip, masked_input=self.masked_input)
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**{**RESNET_LEGACY_OPTIONS, **config})

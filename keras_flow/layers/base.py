"""The one contract every flow layer follows.

Direction vocabulary: *forward* maps data -> latent (the training and density direction, as in
Glow); *inverse* maps latent -> data (sampling). Every flow layer's

    call(inputs, inverse=False) -> (outputs, log_det)

returns `log_det`, a float32 tensor of shape `(batch_size,)` equal to
`log |det d outputs / d inputs|` for the direction computed, so the forward and the inverse
log-dets of one example sum to zero.

Dtypes: the flow path is float32 under every policy. A flow layer casts its inputs to float32
and returns float32 outputs and log-dets; under a mixed policy (`mixed_bfloat16`,
`mixed_float16`) only the networks inside it (the couplings' conditioners, the priors'
convolutions) compute in the low-precision dtype, and their outputs are cast back before they
touch the flow path. So a mixed-precision model sees its data unrounded, and its inverse is
exact to float32 round-off, as in float32.
"""

import keras
from keras import ops

LOG_DET_DTYPE = "float32"
FLOW_DTYPE = "float32"


class FloatFlowPath:
    """Mixin of the flow layers and models: Keras casts their floating inputs to
    `FLOW_DTYPE` (float32) whatever the dtype policy, so the flow path is never rounded."""

    @property
    def input_dtype(self):
        return FLOW_DTYPE


class FlowLayer(FloatFlowPath, keras.layers.Layer):
    """Base class of the invertible layers: `call(inputs, inverse=False) -> (outputs, log_det)`.

    Users call the layer (`layer(x)`, `layer(z, inverse=True)`) or its two symmetric public
    methods, `forward(x)` and `inverse(z)`, both through `__call__`, so that Keras's building,
    autocasting and name scopes apply in both directions. Subclasses implement the private
    hooks `_forward(inputs, **kwargs)` and `_inverse(outputs, **kwargs)`, each returning
    `(values, log_det)`, as TensorFlow Probability's bijectors do.

    Keyword arguments reach the hooks unchanged, so a layer made of flow layers passes them on:
    `training` (Keras's flag, for layers with batch statistics), `initialize=True` during the
    model's data-dependent initialisation (`Actnorm`, forward only), `shared` (the batch
    shards' `keras_flow.kernels.batch_shards.SharedDerivations`, or None) and a layer's own
    (`labels`, `temperature`, ...); a layer ignores those it does not use.
    """

    def call(self, inputs, inverse=False, training=None, initialize=False, shared=None,
             **kwargs):
        check_input_channels(self, inputs, self.expected_channels(inverse))
        hook = self._inverse if inverse else self._forward
        return hook(inputs, training=training, initialize=initialize, shared=shared, **kwargs)

    def expected_channels(self, inverse):
        """The channel count of the input in this direction (a tuple for a tuple input), or
        None for any: by default that of the build (`require_channels`) in both directions."""
        return getattr(self, "built_channels", None)

    def forward(self, inputs, **kwargs):
        """Data -> latent: `self(inputs, **kwargs)`; returns `(outputs, log_det)`."""
        return self(inputs, **kwargs)

    def inverse(self, outputs, **kwargs):
        """Latent -> data: `self(outputs, inverse=True, **kwargs)`; returns `(inputs, log_det)`."""
        return self(outputs, inverse=True, **kwargs)

    def _forward(self, inputs, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def _inverse(self, outputs, **kwargs):  # pragma: no cover - abstract
        raise NotImplementedError

    def compute_output_spec(self, inputs, inverse=False, **kwargs):
        # Shape-preserving by default; layers that change shape override this.
        batch = inputs.shape[0]
        return (keras.KerasTensor(inputs.shape, dtype=FLOW_DTYPE),
                keras.KerasTensor((batch,), dtype=LOG_DET_DTYPE))


def build_and_spec(layer, spec):
    """Builds `layer` for the input `spec` (a `keras.KerasTensor`, or a tuple of them) and
    returns the spec of its forward outputs (without the log-det): how a model chains its
    layers' own shape rules instead of re-deriving them."""
    shapes = tuple(part.shape for part in spec) if isinstance(spec, tuple) else spec.shape
    layer.build(shapes)
    outputs, _ = layer.compute_output_spec(spec)
    return outputs


def per_example(value, reference):
    """Broadcasts a float32 scalar `value` to shape `(batch_size,)` of `reference`."""
    batch_size = ops.shape(reference)[0]
    return ops.broadcast_to(ops.cast(value, LOG_DET_DTYPE), (batch_size,))


def zero_log_det(reference):
    """A float32 zero log-det of shape `(batch_size,)` for volume-preserving layers."""
    return per_example(0.0, reference)


def sum_per_example(values):
    """Sums every axis but the batch axis, in float32: `(batch_size, ...) -> (batch_size,)`."""
    values = ops.cast(values, LOG_DET_DTYPE)
    return ops.sum(values, axis=tuple(range(1, len(values.shape))))


def split_channels(values, first):
    """`(values[..., :first], values[..., first:])` as one split (its gradient is a concat,
    cheaper than the scatter that a strided slice's gradient needs)."""
    return tuple(ops.split(values, [first], axis=-1))


def deinterleave_channels(values):
    """`(values[..., 0::2], values[..., 1::2])` of an even channel count, via a reshape to
    `(..., channels // 2, 2)` and one split (no strided slices)."""
    shape = ops.shape(values)
    pairs = ops.reshape(values, (-1,) + tuple(shape[1:-1]) + (values.shape[-1] // 2, 2))
    even, odd = ops.split(pairs, 2, axis=-1)
    return ops.squeeze(even, axis=-1), ops.squeeze(odd, axis=-1)


def spatial_size(inputs):
    """`height * width` of a `(batch_size, height, width, channels)` tensor, as float32."""
    return ops.cast(ops.shape(inputs)[1] * ops.shape(inputs)[2], LOG_DET_DTYPE)


def require_rank4(layer, input_shape):
    """Raises the shared `ValueError` for a non-image input (the fix is in the message)."""
    if len(input_shape) != 4:
        raise ValueError(
            f"{layer.__class__.__name__} '{layer.name}' expects images of shape "
            f"(batch_size, height, width, channels); received shape {tuple(input_shape)}. "
            "Reshape the data to rank 4 (add a channel axis for grey images).")


def require_channels(layer, input_shape):
    """Returns the static channel count, raising if it is unknown, and records it as the
    layer's `built_channels`, which `FlowLayer.call` then requires of its inputs."""
    require_rank4(layer, input_shape)
    channels = input_shape[-1]
    if channels is None:
        raise ValueError(
            f"{layer.__class__.__name__} '{layer.name}' needs a known channel count; "
            f"received shape {tuple(input_shape)}.")
    layer.built_channels = int(channels)
    return int(channels)


def check_input_channels(layer, inputs, expected):
    """Raises `ValueError` unless each tensor of `inputs` (one, or a tuple) is an image with
    the `expected` channels (an int, a tuple of them, or None for any)."""
    if expected is None:
        return
    tensors = list(inputs) if isinstance(inputs, (tuple, list)) else [inputs]
    expected = expected if isinstance(expected, tuple) else (expected,)
    for tensor, channels in zip(tensors, expected):
        shape = tuple(tensor.shape)
        require_rank4(layer, shape)
        if shape[-1] is not None and shape[-1] != channels:
            built = layer.built_channels
            needs = "" if channels == built else f", so this input needs {channels}"
            raise ValueError(
                f"{layer.__class__.__name__} '{layer.name}' was built for images of {built} "
                f"channels{needs}; received shape {shape}. A layer builds on its first call: "
                "use a new layer for other images (a layer that changes the shape, such as "
                "Split2D, must be built with the forward input's shape before an inverse "
                "call).")

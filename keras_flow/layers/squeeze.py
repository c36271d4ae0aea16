"""Space-to-depth squeeze in openai/glow's channel order."""

import keras
from keras import ops

from keras_flow.layers.base import FLOW_DTYPE
from keras_flow.layers.base import LOG_DET_DTYPE
from keras_flow.layers.base import FlowLayer
from keras_flow.layers.base import require_rank4
from keras_flow.layers.base import zero_log_det


@keras.saving.register_keras_serializable(package="keras_flow")
class Squeeze(FlowLayer):
    """Trades space for channels: `(H, W, C) -> (H/2, W/2, 4C)`, volume preserving.

    Each 2x2 block with row offset `fy` and column offset `fx` goes to output channel
    `c * 4 + fy * 2 + fx` (openai/glow `squeeze2d`, RealNVP `squeeze_2x2`), so channel-wise
    couplings after a squeeze see each input channel's four pixels together.

        log_det = 0 in both directions

    Call arguments: `inputs` `(batch_size, height, width, channels)` with even height and
    width (forward) or channels divisible by 4 (inverse); `inverse`.
    Returns: `(outputs, log_det)`, log-det float32 zeros `(batch_size,)`.

    Example:
        >>> x = np.zeros((2, 8, 8, 3), "float32")
        >>> z, log_det = keras_flow.layers.Squeeze()(x)
        >>> tuple(z.shape)
        (2, 4, 4, 12)

    Reference: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803, section 3.6.
    """

    def build(self, input_shape):
        require_rank4(self, input_shape)
        height, width = input_shape[1], input_shape[2]
        if (height is not None and height % 2) or (width is not None and width % 2):
            raise ValueError(
                f"Squeeze '{self.name}' needs an even height and width; received shape "
                f"{tuple(input_shape)}. Pad or resize the images so that height and width are "
                "divisible by 2**levels (keras_flow.data does this with fit='pad').")

    def _forward(self, inputs, **kwargs):
        _, height, width, channels = inputs.shape
        shape = ops.shape(inputs)
        x = ops.reshape(inputs, (shape[0], shape[1] // 2, 2, shape[2] // 2, 2, channels))
        x = ops.transpose(x, (0, 1, 3, 5, 2, 4))
        outputs = ops.reshape(x, (shape[0], shape[1] // 2, shape[2] // 2, channels * 4))
        return outputs, zero_log_det(inputs)

    def _inverse(self, outputs, **kwargs):
        channels = outputs.shape[-1]
        if channels % 4:
            raise ValueError(
                f"Squeeze '{self.name}' inverse needs channels divisible by 4; received "
                f"shape {tuple(outputs.shape)}.")
        shape = ops.shape(outputs)
        x = ops.reshape(outputs, (shape[0], shape[1], shape[2], channels // 4, 2, 2))
        x = ops.transpose(x, (0, 1, 4, 2, 5, 3))
        inputs = ops.reshape(x, (shape[0], shape[1] * 2, shape[2] * 2, channels // 4))
        return inputs, zero_log_det(outputs)

    def compute_output_spec(self, inputs, inverse=False):
        b, h, w, c = inputs.shape
        if inverse:
            shape = (b, None if h is None else h * 2, None if w is None else w * 2, c // 4)
        else:
            shape = (b, None if h is None else h // 2, None if w is None else w // 2, c * 4)
        return (keras.KerasTensor(shape, dtype=FLOW_DTYPE),
                keras.KerasTensor((b,), dtype=LOG_DET_DTYPE))

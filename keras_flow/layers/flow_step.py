"""One step of Glow: actnorm -> channel permutation -> coupling."""

import keras

from keras_flow.layers.actnorm import Actnorm
from keras_flow.layers.base import FlowLayer
from keras_flow.layers.couplings import AdditiveCoupling
from keras_flow.layers.couplings import AffineCoupling
from keras_flow.layers.inv_conv_1x1 import InvConv1x1
from keras_flow.layers.permutations import Reverse
from keras_flow.layers.permutations import Shuffle

PERMUTATIONS = ("reverse", "shuffle", "conv1x1")
COUPLINGS = ("additive", "affine")


def make_permutation(permutation, lu_decomposed, seed, name, dtype):
    """The channel-mixing layer named `permutation` (`"reverse"`, `"shuffle"`, `"conv1x1"`)."""
    if permutation == "reverse":
        return Reverse(name=name, dtype=dtype)
    if permutation == "shuffle":
        return Shuffle(seed=seed, name=name, dtype=dtype)
    if permutation == "conv1x1":
        return InvConv1x1(lu_decomposed=lu_decomposed, seed=seed, name=name, dtype=dtype)
    raise ValueError(f"Unknown permutation {permutation!r}; choose one of {PERMUTATIONS}.")


def make_coupling(coupling, hidden_width, edge_padding, zero_log_scale_factor, name, dtype):
    """The coupling named `coupling` (`"additive"` or `"affine"`) with Glow's network."""
    if coupling not in COUPLINGS:
        raise ValueError(f"Unknown coupling {coupling!r}; choose one of {COUPLINGS}.")
    layer = AdditiveCoupling if coupling == "additive" else AffineCoupling
    return layer(hidden_width, edge_padding=edge_padding,
                 zero_log_scale_factor=zero_log_scale_factor, name=name, dtype=dtype)


@keras.saving.register_keras_serializable(package="keras_flow")
class FlowStep(FlowLayer):
    """Glow's step of flow (openai/glow `revnet2d_step`), data -> latent:

        y = coupling(permutation(actnorm(x)));   log_det = sum of the three log-dets
        inverse: x = actnorm^-1(permutation^-1(coupling^-1(y)))

    Args:
        hidden_width: coupling network width (512).
        permutation: `"reverse"`, `"shuffle"` or `"conv1x1"` (default).
        coupling: `"additive"` or `"affine"` (default).
        lu_decomposed: LU parameterisation of the 1x1 convolution (True).
        seed: seed of the shuffle order or the 1x1 convolution's initial rotation.
        edge_padding: openai/glow's border channel in the coupling network.
        zero_log_scale_factor: log-scale multiplier of the coupling network's zero-initialised
            last convolution (openai/glow: 3).

    Call arguments: `inputs` `(batch_size, height, width, channels)`, `inverse`.
    Returns: `(outputs, log_det)`, log-det float32 `(batch_size,)`.

    Example:
        >>> x = np.random.default_rng(0).normal(size=(2, 4, 4, 4)).astype("float32")
        >>> layer = keras_flow.layers.FlowStep(hidden_width=16)
        >>> z, log_det = layer(x)
        >>> x_back, inverse_log_det = layer.inverse(z)
        >>> float(np.max(np.abs(x_back - x))) < 1e-5, tuple(log_det.shape)
        (True, (2,))

    Reference: Kingma & Dhariwal, "Glow", arXiv:1807.03039, section 3 and figure 2.
    """

    def __init__(self, hidden_width=512, permutation="conv1x1", coupling="affine",
                 lu_decomposed=True, seed=0, edge_padding=True, zero_log_scale_factor=3.0,
                 **kwargs):
        super().__init__(**kwargs)
        self.hidden_width = int(hidden_width)
        self.permutation = permutation
        self.coupling = coupling
        self.lu_decomposed = bool(lu_decomposed)
        self.seed = int(seed)
        self.edge_padding = bool(edge_padding)
        self.zero_log_scale_factor = float(zero_log_scale_factor)
        policy = self.dtype_policy
        self.flows = [
            Actnorm(name="actnorm", dtype=policy),
            make_permutation(permutation, self.lu_decomposed, self.seed, "permutation", policy),
            make_coupling(coupling, self.hidden_width, self.edge_padding,
                          self.zero_log_scale_factor, "coupling", policy),
        ]
        if any(not flow.supports_jit for flow in self.flows):
            self.supports_jit = False

    def build(self, input_shape):
        for flow in self.flows:
            flow.build(input_shape)

    def _forward(self, inputs, **kwargs):
        total = 0.0
        for flow in self.flows:
            inputs, log_det = flow(inputs, **kwargs)
            total = total + log_det
        return inputs, total

    def _inverse(self, outputs, **kwargs):
        total = 0.0
        for flow in reversed(self.flows):
            outputs, log_det = flow(outputs, inverse=True, **kwargs)
            total = total + log_det
        return outputs, total

    def get_config(self):
        config = super().get_config()
        config.update(hidden_width=self.hidden_width, permutation=self.permutation,
                      coupling=self.coupling, lu_decomposed=self.lu_decomposed, seed=self.seed,
                      edge_padding=self.edge_padding,
                      zero_log_scale_factor=self.zero_log_scale_factor)
        return config

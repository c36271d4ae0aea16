"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017), multi-scale with batch norm in the flow."""

import math
import numbers

import keras

from keras_flow.layers.base import build_and_spec
from keras_flow.layers.batch_norm_flow import BatchNormFlow
from keras_flow.layers.couplings import AffineCoupling
from keras_flow.layers.logit import LogitTransform
from keras_flow.layers.priors import Split2D
from keras_flow.layers.priors import TopPrior
from keras_flow.layers.squeeze import Squeeze
from keras_flow.models.flow_model import FlowModel
from keras_flow.models.flow_model import check_positive_ints
from keras_flow.models.flow_model import image_input_shape
from keras_flow.models.presets import REALNVP_PRESETS
from keras_flow.models.presets import preset_config

# What a config written before these options existed (keras_flow 0.1.0) meant. `from_config`
# fills them in for missing keys, so `.keras` files of 0.1.0 rebuild the architecture they were
# saved with, weights and outputs unchanged.
LEGACY_OPTIONS = dict(resnet_input_norm=False, resnet_skip=False, batch_norm_affine=True,
                      batch_norm_masked=False, l2=0.0)


@keras.saving.register_keras_serializable(package="keras_flow")
class RealNVP(FlowModel):
    """RealNVP's multi-scale architecture, data -> latent:

        z = logit(x)                                      (with its log-det)
        for scale s in 1..levels-1:
            3 checkerboard couplings (alternating masks), squeeze,
            3 channel couplings (alternating halves), factor out half the channels
        last scale: 4 checkerboard couplings
        every coupling is followed by batch normalisation as a flow layer

    Couplings are affine with `scale = exp(c * tanh(raw))` and ResNet s/t networks of
    weight-normalised convolutions (`ResNetCouplingNetwork`: the original's input layer,
    residual blocks and skip path; `c` starts at 0 for checkerboard, 1 for channel couplings
    as in the RealNVP code); the batch norm after each coupling normalises only the units it
    transformed, without learned scale or shift (`BatchNormFlow`); the prior is N(0, I) on
    every latent. Widths: `hidden_width * 2**s` for the checkerboard couplings of scale s,
    twice that for its channel couplings. L2 regularisation (`l2`) on the weight-norm gains
    and the checkerboard couplings' tanh scalars, as Keras weight regularizers (`model.losses`,
    so `fit` adds them to the objective; `bits_per_dim` leaves them out).

    Deviations from tensorflow/models real_nvp (docs/realnvp.md): the factored-out half is
    taken in the squeezed space (not through the "ordered" squeeze), and the s/t network's
    output interleaves shift and raw scale (the original: two halves).

    Args:
        levels: number of scales (RealNVP code: 4 for 32x32).
        hidden_width: feature maps at the first scale (32).
        residual_blocks: residual blocks per s/t network (4).
        resnet_input_norm: the s/t network's input layer (batch norm, `[r, -r]`, ReLU; the
            RealNVP code; default). False: the input straight into the first convolution.
        resnet_skip: the s/t network's skip path (RealNVP code; default). False: the head
            reads the last residual block.
        batch_norm_affine: learned `log_gamma` and `beta` in the batch norms after the
            couplings (RealNVP code: none; default False).
        batch_norm_masked: those batch norms normalise only the units their coupling
            transformed (RealNVP code; default True). False: all units.
        l2: the RealNVP code's `l2_coeff` (5e-5): weight of the sum of squares of those
            weights, per nats of one image as the original's objective; the regularizers carry
            `l2 / (D ln 2)`, the same weight beside the bits/dim objective. 0: none.
        num_bins, image_shape, seed: see `FlowModel`.
        batch_shards: see `FlowModel`; sharded in inference only, since batch normalisation
            uses the whole batch's statistics in training.

    The defaults follow the RealNVP code; a config saved by keras_flow 0.1.0 (without these
    keys) rebuilds 0.1.0's architecture (`LEGACY_OPTIONS`).

    Example:
        >>> x = np.random.default_rng(0).uniform(-0.5, 0.5, (8, 8, 8, 1)).astype("float32")
        >>> model = keras_flow.RealNVP(levels=2, hidden_width=8, residual_blocks=1,
        ...                            image_shape=(8, 8, 1))
        >>> eps_list, log_det = model.encode(x)  # train it as Glow's example does
        >>> float(np.max(np.abs(model.decode(eps_list) - x))) < 1e-4
        True
        >>> tuple(model.bits_per_dim(x).shape), tuple(model.sample(2).shape)
        ((8,), (2, 8, 8, 1))

    Reference: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803.
    """

    shards_in_training = False  # batch normalisation needs the whole batch's statistics

    def __init__(self, levels=4, hidden_width=32, residual_blocks=4, resnet_input_norm=True,
                 resnet_skip=True, batch_norm_affine=False, batch_norm_masked=True, l2=5e-5,
                 num_bins=256, image_shape=None, seed=0, **kwargs):
        if {"num_classes", "classifier_weight"} & kwargs.keys():
            raise ValueError(
                "RealNVP has no class-conditional prior; use Glow(num_classes=...) for labels.")
        super().__init__(num_bins=num_bins, image_shape=None, seed=seed, **kwargs)
        check_positive_ints("RealNVP", levels=levels, hidden_width=hidden_width,
                            residual_blocks=residual_blocks)
        self.levels = int(levels)
        self.hidden_width = int(hidden_width)
        self.residual_blocks = int(residual_blocks)
        if not (isinstance(l2, numbers.Real) and not isinstance(l2, bool)
                and math.isfinite(l2) and l2 >= 0):
            raise ValueError(f"l2 must be a number >= 0 (0: no regularisation); got {l2!r}.")
        self.resnet_input_norm = bool(resnet_input_norm)
        self.resnet_skip = bool(resnet_skip)
        self.batch_norm_affine = bool(batch_norm_affine)
        self.batch_norm_masked = bool(batch_norm_masked)
        self.l2 = float(l2)
        policy = self.dtype_policy
        self.logit = LogitTransform(name="logit", dtype=policy)
        self.scales = [self._make_scale(s, last=s == self.levels - 1) for s in range(self.levels)]
        self.top_prior = TopPrior(learn_top=False, name="top_prior", dtype=policy)
        if image_shape is not None:
            self.build((None,) + tuple(image_shape))

    def _coupling(self, name, width, mask, parity, tanh_scale_init):
        return AffineCoupling(width, scale_fn="tanh", tanh_scale_init=tanh_scale_init, mask=mask,
                              mask_parity=parity, network="resnet",
                              residual_blocks=self.residual_blocks,
                              resnet_input_norm=self.resnet_input_norm,
                              resnet_skip=self.resnet_skip, name=name, dtype=self.dtype_policy)

    def _make_scale(self, s, last):
        width = self.hidden_width * 2 ** s
        flows = []

        def add(kind, index, parity):
            mask, w, init = (("checkerboard", width, 0.0) if kind == "checker"
                             else ("channel", 2 * width, 1.0))
            flows.append(self._coupling(f"scale_{s}_{kind}_{index}", w, mask, parity, init))
            flows.append(BatchNormFlow(
                center=self.batch_norm_affine, scale=self.batch_norm_affine,
                mask=mask if self.batch_norm_masked else None, mask_parity=parity,
                name=f"scale_{s}_{kind}_{index}_bn", dtype=self.dtype_policy))

        for index in range(4 if last else 3):
            add("checker", index, index % 2)
        if last:
            return dict(flows=flows, split=None)
        flows.append(Squeeze(name=f"scale_{s}_squeeze", dtype=self.dtype_policy))
        for index in range(3):
            add("channel", index, index % 2)
        return dict(flows=flows, split=Split2D(learned=False, name=f"scale_{s}_split",
                                                dtype=self.dtype_policy))

    @classmethod
    def from_preset(cls, name, **overrides):
        """A RealNVP configured as one of `keras_flow.models.presets.REALNVP_PRESETS`."""
        return cls(**preset_config(REALNVP_PRESETS, name, overrides))

    @classmethod
    def halvings_for(cls, levels):
        """RealNVP's last scale has no squeeze."""
        return levels - 1

    def build(self, input_shape):
        shape = image_input_shape(input_shape)
        self.validate_image_shape(shape)
        self.image_shape = tuple(int(d) for d in shape[1:])
        z = build_and_spec(self.logit, keras.KerasTensor((None,) + self.image_shape))
        latent_shapes = []
        for scale in self.scales:
            for flow in scale["flows"]:
                z = build_and_spec(flow, z)
            if scale["split"] is not None:
                z, eps = build_and_spec(scale["split"], z)
                latent_shapes.append(tuple(eps.shape[1:]))
        latent_shapes.append(tuple(build_and_spec(self.top_prior, z).shape[1:]))
        self.latent_shapes = latent_shapes
        self._regularize()
        self.built = True

    def regularized_weights(self):
        """The weights `l2` applies to, as the RealNVP code selects them by name: every
        weight-norm gain (`magnitude`) and the checkerboard couplings' tanh scalars
        (`rescaling_scale`; the channel couplings' `scale` is not matched)."""
        weights = []
        for scale in self.scales:
            for flow in scale["flows"]:
                if isinstance(flow, AffineCoupling):
                    weights += flow.network.gains()
                    if flow.mask == "checkerboard":
                        weights.append(flow.tanh_scale)
        return weights

    def _regularize(self):
        """Puts `L2(l2 / (D ln 2))` on `regularized_weights()`: the original adds
        `l2 * sum(w**2)` to a loss in nats per image, keras_flow's loss is bits per dimension
        (nats / (D ln 2)), so this keeps the penalty's weight relative to the likelihood."""
        if not self.l2:
            return
        regularizer = keras.regularizers.L2(self.l2 / (self.num_dims * math.log(2.0)))
        for weight in self.regularized_weights():
            weight.regularizer = regularizer

    def encode_batch(self, images, labels=None, training=None, initialize=False, shared=None):
        z, log_det = self.logit(images, training=training)
        eps_list = []
        for scale in self.scales:
            for flow in scale["flows"]:
                z, flow_log_det = flow(z, training=training)
                log_det = log_det + flow_log_det
            if scale["split"] is not None:
                (z, eps), _ = scale["split"](z, training=training)
                eps_list.append(eps)
        eps, _ = self.top_prior(z, labels=labels, training=training)
        eps_list.append(eps)
        return eps_list, log_det, z

    def decode_batch(self, eps_list, labels=None, shared=None):
        z, _ = self.top_prior(eps_list[-1], inverse=True, labels=labels)
        for index in reversed(range(self.levels)):
            scale = self.scales[index]
            if scale["split"] is not None:
                z, _ = scale["split"]((z, eps_list[index]), inverse=True)
            for flow in reversed(scale["flows"]):
                z, _ = flow(z, inverse=True)
        images, _ = self.logit(z, inverse=True)
        return images

    def get_config(self):
        config = super().get_config()
        config.update(levels=self.levels, hidden_width=self.hidden_width,
                      residual_blocks=self.residual_blocks,
                      resnet_input_norm=self.resnet_input_norm, resnet_skip=self.resnet_skip,
                      batch_norm_affine=self.batch_norm_affine,
                      batch_norm_masked=self.batch_norm_masked, l2=self.l2)
        return config

    @classmethod
    def from_config(cls, config):
        return super().from_config({**LEGACY_OPTIONS, **config})

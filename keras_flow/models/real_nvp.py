"""RealNVP (Dinh, Sohl-Dickstein & Bengio 2017), multi-scale with batch norm in the flow."""

import keras

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
    weight-normalised convolutions (`c` starts at 0 for checkerboard, 1 for channel couplings
    as in the RealNVP code); the prior is N(0, I) on every latent. Widths: `hidden_width *
    2**s` for the checkerboard couplings of scale s, twice that for its channel couplings.

    Deviations from tensorflow/models real_nvp (README): the factored-out half is taken in the
    squeezed space (not through the "ordered" squeeze), batch normalisation follows each
    coupling on all dimensions, and the network input is `x * mask` plus the mask channel.

    Args:
        levels: number of scales (RealNVP code: 4 for 32x32).
        hidden_width: feature maps at the first scale (32).
        residual_blocks: residual blocks per s/t network (4).
        num_bins, num_classes, classifier_weight, image_shape, seed: see `FlowModel`.
        batch_shards: see `FlowModel`; sharded in inference only, since batch normalisation
            uses the whole batch's statistics in training.

    Example:
        >>> x = np.random.default_rng(0).uniform(-0.5, 0.5, (8, 8, 8, 1)).astype("float32")
        >>> model = keras_flow.RealNVP(levels=2, hidden_width=8, residual_blocks=1,
        ...                            image_shape=(8, 8, 1))
        >>> model.compile(optimizer="adam")
        >>> history = model.fit(x, batch_size=8, epochs=1, verbose=0)
        >>> tuple(model.bits_per_dim(x).shape), tuple(model.sample(2).shape)
        ((8,), (2, 8, 8, 1))

    Reference: Dinh et al., "Density estimation using Real NVP", arXiv:1605.08803.
    """

    shards_in_training = False  # batch normalisation needs the whole batch's statistics

    def __init__(self, levels=4, hidden_width=32, residual_blocks=4, num_bins=256,
                 image_shape=None, seed=0, **kwargs):
        if {"num_classes", "classifier_weight"} & kwargs.keys():
            raise ValueError(
                "RealNVP has no class-conditional prior; use Glow(num_classes=...) for labels.")
        super().__init__(num_bins=num_bins, image_shape=None, seed=seed, **kwargs)
        check_positive_ints("RealNVP", levels=levels, hidden_width=hidden_width,
                            residual_blocks=residual_blocks)
        self.levels = int(levels)
        self.hidden_width = int(hidden_width)
        self.residual_blocks = int(residual_blocks)
        policy = self.dtype_policy
        self.logit = LogitTransform(name="logit", dtype=policy)
        self.scales = [self._make_scale(s, last=s == self.levels - 1) for s in range(self.levels)]
        self.top_prior = TopPrior(learn_top=False, name="top_prior", dtype=policy)
        if image_shape is not None:
            self.build((None,) + tuple(image_shape))

    def _coupling(self, name, width, mask, parity, tanh_scale_init):
        return AffineCoupling(width, scale_fn="tanh", tanh_scale_init=tanh_scale_init, mask=mask,
                              mask_parity=parity, network="resnet",
                              residual_blocks=self.residual_blocks, name=name,
                              dtype=self.dtype_policy)

    def _make_scale(self, s, last):
        width = self.hidden_width * 2 ** s
        flows = []

        def add(kind, index, parity):
            mask, w, init = (("checkerboard", width, 0.0) if kind == "checker"
                             else ("channel", 2 * width, 1.0))
            flows.append(self._coupling(f"scale_{s}_{kind}_{index}", w, mask, parity, init))
            flows.append(BatchNormFlow(name=f"scale_{s}_{kind}_{index}_bn",
                                       dtype=self.dtype_policy))

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
        current = (None,) + self.image_shape
        self.logit.build(current)
        latent_shapes = []
        for scale in self.scales:
            for flow in scale["flows"]:
                flow.build(current)
                if isinstance(flow, Squeeze):
                    b, h, w, c = current
                    current = (b, h // 2, w // 2, c * 4)
            if scale["split"] is not None:
                scale["split"].build(current)
                b, h, w, c = current
                latent_shapes.append((h, w, c // 2))
                current = (b, h, w, c - c // 2)
        self.top_prior.build(current)
        latent_shapes.append(tuple(current[1:]))
        self.latent_shapes = latent_shapes
        self.built = True

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
                      residual_blocks=self.residual_blocks)
        return config

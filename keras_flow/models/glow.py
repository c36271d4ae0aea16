"""Glow (Kingma & Dhariwal 2018), as openai/glow builds it."""

import keras
from keras import ops

from keras_flow.layers.base import build_and_spec
from keras_flow.layers.convolutions import ZeroConv2D
from keras_flow.layers.flow_step import COUPLINGS
from keras_flow.layers.flow_step import PERMUTATIONS
from keras_flow.layers.flow_step import FlowStep
from keras_flow.layers.priors import Split2D
from keras_flow.layers.priors import TopPrior
from keras_flow.layers.squeeze import Squeeze
from keras_flow.models.flow_model import FlowModel
from keras_flow.models.flow_model import check_positive_ints
from keras_flow.models import objective
from keras_flow.models.flow_model import image_input_shape
from keras_flow.models.presets import GLOW_PRESETS
from keras_flow.models.presets import preset_config

SPLIT_PRIORS = ("conditional", "unconditional", "standard")


@keras.saving.register_keras_serializable(package="keras_flow")
class Glow(FlowModel):
    """Glow's multi-scale flow (openai/glow `codec`), data -> latent:

        z = x
        for level in 1..L:
            z = squeeze(z)                               (H, W, C) -> (H/2, W/2, 4C)
            z = step_K(...step_1(z))                     actnorm -> permutation -> coupling
            if level < L: z, eps_level = split(z)        learned prior, conditional on z
        eps_top = top_prior(z)                           learned (and class-conditional)

    The latents: `eps_1 .. eps_{L-1}` of shape `(H/2^l, W/2^l, 2^l C)` and the top one of shape
    `(H/2^L, W/2^L, 2^(L+1) C)`, each ~ N(0, I) under the model. See `FlowModel` for the
    likelihood, `call`/`add_loss`, `initialize`, `encode`/`decode`, `log_prob`, `bits_per_dim`
    and `sample`.

    Args:
        levels: L, the number of scales (3).
        depth: K, steps of flow per level (32).
        hidden_width: coupling network width (512).
        permutation: `"reverse"`, `"shuffle"` or `"conv1x1"` (default).
        lu_decomposed: LU-parameterised 1x1 convolution (True; False is openai/glow's plain W).
        coupling: `"affine"` (default) or `"additive"`.
        learn_top: learn the top prior (True).
        split_prior: the prior of the half each level factors out: `"conditional"` (default,
            openai/glow: mean and log-std from the kept half by a zero-initialised conv),
            `"unconditional"` (a learned Gaussian per channel, like normflows' GlowBase; on
            Fashion-MNIST no better than the conditional one so far, BENCHMARKS.md) or
            `"standard"` (N(0, I), as RealNVP).
        num_classes: > 0 for a class-conditional top prior (openai/glow `ycond`).
        classifier_weight: weight of the class-prediction loss (openai/glow `weight_y`).
        num_bins: quantisation levels of the data (256 for 8 bits; 32 for 5 bits).
        edge_padding: openai/glow's border channel in every 3x3 conv (True).
        zero_log_scale_factor: log-scale multiplier `f` of the zero-initialised convs of the
            couplings (their last layer) and the learned priors, `(conv(x) + b) * exp(f * logs)`;
            openai/glow's 3 (default). A smaller `f` slows the output scales' learning:
            with Adam at 1e-3, 1 avoids the loss spikes that 3 shows (BENCHMARKS.md).
        image_shape: `(H, W, C)`; when given the model is built at once.
        seed: seeds the shuffles and the 1x1 convolutions (each step its own).
        remat: gradient checkpointing (False). In training, each step of flow keeps only its
            input for the backward pass and recomputes its activations there (`keras.remat`
            around the step): activation memory drops from all steps' activations to their
            inputs plus one step's, for about one more forward pass of compute. The log-dets
            are outputs of the recomputed steps, so the `add_loss` objective keeps its full
            gradient (unlike `keras.RematScope`, which would wrap the model's own `call` and
            cut the objective off from the weights).
        batch_shards: encode each batch as this many slices side by side (1: no sharding),
            for CPU training with one shard per core; see `FlowModel` and
            `keras_flow.cpu_threads`.

    Example:
        >>> x = np.random.default_rng(0).uniform(-0.5, 0.5, (16, 8, 8, 1)).astype("float32")
        >>> model = keras_flow.Glow(levels=2, depth=2, hidden_width=16, image_shape=(8, 8, 1))
        >>> model.initialize(x)  # actnorm's data-dependent initialisation
        >>> model.compile(optimizer="adamax")
        >>> history = model.fit(x, batch_size=8, epochs=1, verbose=0)
        >>> tuple(model.bits_per_dim(x).shape), tuple(model.sample(4, temperature=0.7).shape)
        ((16,), (4, 8, 8, 1))

    Reference: Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions",
    arXiv:1807.03039; openai/glow.
    """

    def __init__(self, levels=3, depth=32, hidden_width=512, permutation="conv1x1",
                 lu_decomposed=True, coupling="affine", learn_top=True, num_classes=0,
                 classifier_weight=0.0, num_bins=256, edge_padding=True, image_shape=None,
                 seed=0, remat=False, zero_log_scale_factor=3.0, split_prior="conditional",
                 **kwargs):
        super().__init__(num_bins=num_bins, image_shape=None, seed=seed, **kwargs)
        check_positive_ints("Glow", levels=levels, depth=depth, hidden_width=hidden_width)
        if int(num_classes) < 0 or classifier_weight < 0:
            raise ValueError(
                f"num_classes and classifier_weight must be >= 0; got num_classes={num_classes},"
                f" classifier_weight={classifier_weight}.")
        if classifier_weight and not num_classes:
            raise ValueError("classifier_weight > 0 needs a class-conditional model "
                             "(num_classes > 0).")
        self.num_classes = int(num_classes)
        self.classifier_weight = float(classifier_weight)
        if permutation not in PERMUTATIONS:
            raise ValueError(f"Unknown permutation {permutation!r}; choose one of {PERMUTATIONS}.")
        if coupling not in COUPLINGS:
            raise ValueError(f"Unknown coupling {coupling!r}; choose one of {COUPLINGS}.")
        if split_prior not in SPLIT_PRIORS:
            raise ValueError(
                f"Unknown split_prior {split_prior!r}; choose one of {SPLIT_PRIORS}.")
        self.levels = int(levels)
        self.depth = int(depth)
        self.hidden_width = int(hidden_width)
        self.permutation = permutation
        self.lu_decomposed = bool(lu_decomposed)
        self.coupling = coupling
        self.learn_top = bool(learn_top)
        self.edge_padding = bool(edge_padding)
        self.remat = bool(remat)
        self.split_prior = split_prior
        self.zero_log_scale_factor = float(zero_log_scale_factor)
        if not self.zero_log_scale_factor > 0:
            raise ValueError(f"Glow needs zero_log_scale_factor > 0; got {zero_log_scale_factor}.")
        policy = self.dtype_policy
        zero_factor = dict(zero_log_scale_factor=self.zero_log_scale_factor)
        self.squeezes = [Squeeze(name=f"squeeze_{i}", dtype=policy) for i in range(self.levels)]
        self.steps = [
            [FlowStep(self.hidden_width, permutation, coupling, self.lu_decomposed,
                      seed=self.seed * 100003 + i * 1000 + k, edge_padding=self.edge_padding,
                      **zero_factor, name=f"step_{i}_{k}", dtype=policy)
             for k in range(self.depth)]
            for i in range(self.levels)]
        self.splits = [Split2D(learned=split_prior != "standard",
                               conditional=split_prior == "conditional",
                               edge_padding=self.edge_padding, **zero_factor,
                               name=f"split_{i}", dtype=policy)
                       for i in range(self.levels - 1)]
        self.top_prior = TopPrior(self.learn_top, self.num_classes, self.edge_padding,
                                  **zero_factor, name="top_prior", dtype=policy)
        if self.classifier_weight:
            self.classifier = ZeroConv2D(self.num_classes, 1, edge_padding=False,
                                         name="classifier", dtype=policy)
        if any(not step.supports_jit for level in self.steps for step in level):
            self.supports_jit = False
        if image_shape is not None:
            self.build((None,) + tuple(image_shape))

    @classmethod
    def from_preset(cls, name, **overrides):
        """A Glow configured as one of `keras_flow.models.presets.GLOW_PRESETS`."""
        return cls(**preset_config(GLOW_PRESETS, name, overrides))

    @classmethod
    def halvings_for(cls, levels):
        """Glow squeezes once per level."""
        return levels

    def build(self, input_shape):
        shape = image_input_shape(input_shape)
        self.validate_image_shape(shape)
        self.image_shape = tuple(int(d) for d in shape[1:])
        z = keras.KerasTensor((None,) + self.image_shape)
        latent_shapes = []
        for level in range(self.levels):
            z = build_and_spec(self.squeezes[level], z)
            for step in self.steps[level]:
                z = build_and_spec(step, z)
            if level < self.levels - 1:
                z, eps = build_and_spec(self.splits[level], z)
                latent_shapes.append(tuple(eps.shape[1:]))
        latent_shapes.append(tuple(build_and_spec(self.top_prior, z).shape[1:]))
        if self.classifier_weight:
            self.classifier.build((None, 1, 1, z.shape[-1]))
        self.latent_shapes = latent_shapes
        self.built = True

    def encode_batch(self, images, labels=None, training=None, initialize=False, shared=None):
        z, eps_list, log_det = images, [], 0.0
        for level in range(self.levels):
            z, _ = self.squeezes[level](z)
            for step in self.steps[level]:
                z, step_log_det = self._run_step(step, z, training, initialize, shared)
                log_det = log_det + step_log_det
            if level < self.levels - 1:
                (z, eps), split_log_det = self.splits[level](z, training=training,
                                                             shared=shared)
                eps_list.append(eps)
                log_det = log_det + split_log_det
        eps, top_log_det = self.top_prior(z, labels=labels, training=training, shared=shared)
        eps_list.append(eps)
        return eps_list, log_det + top_log_det, z

    def _run_step(self, step, z, training, initialize, shared):
        """`step(z)`, recomputed in the backward pass when `remat` is on (training only; not
        during the data-dependent initialisation, which assigns weights; a recomputed step
        derives its own weight tensors, since it may not capture the shards' shared ones)."""
        if self.remat and training and not initialize:
            return keras.remat(lambda inputs: step(inputs, training=training))(z)
        return step(z, training=training, initialize=initialize, shared=shared)

    def auxiliary_loss(self, z_top, labels):
        """`classifier_weight` times the classifier's bits (openai/glow's `weight_y * bits_y`),
        or None without a classifier."""
        if not self.classifier_weight:
            return None
        return self.classifier_weight * ops.mean(self.classifier_bits(z_top, labels))

    def classifier_bits(self, z_top, labels):
        """openai/glow's `bits_y`: cross-entropy of a zero-init linear classifier on mean(z_top)."""
        features = ops.mean(z_top, axis=(1, 2), keepdims=True)
        logits = ops.cast(ops.reshape(self.classifier(features), (-1, self.num_classes)),
                          "float32")
        xent = keras.losses.sparse_categorical_crossentropy(
            ops.cast(labels, "int32"), logits, from_logits=True)
        return xent / objective.LN2

    def decode_batch(self, eps_list, labels=None, shared=None):
        z, _ = self.top_prior(eps_list[-1], inverse=True, labels=labels, shared=shared)
        for level in reversed(range(self.levels)):
            if level < self.levels - 1:
                z, _ = self.splits[level]((z, eps_list[level]), inverse=True, shared=shared)
            for step in reversed(self.steps[level]):
                z, _ = step(z, inverse=True, shared=shared)
            z, _ = self.squeezes[level](z, inverse=True)
        return z

    def get_config(self):
        config = super().get_config()
        config.update(num_classes=self.num_classes, classifier_weight=self.classifier_weight,
                      levels=self.levels, depth=self.depth, hidden_width=self.hidden_width,
                      permutation=self.permutation, lu_decomposed=self.lu_decomposed,
                      coupling=self.coupling, learn_top=self.learn_top,
                      edge_padding=self.edge_padding, remat=self.remat,
                      zero_log_scale_factor=self.zero_log_scale_factor,
                      split_prior=self.split_prior)
        return config

"""Named configurations that reproduce the originals' runs (openai/glow README, RealNVP paper).

Each preset is the constructor arguments of the model plus `image_shape`; `n_bits` is the data
quantisation the original used (`num_bins = 2**n_bits`), `batch_size` the original global
batch, `augment` the original's augmentation of the training images, and the RealNVP presets
carry the RealNVP code's optimisation (`optimizer`, `learning_rate`, `beta_2`, `warmup`,
`clip_norm`), for the training command. `from_preset(name, **overrides)` builds the model.
"""

import math


def bits_per_dim_clip_norm(nats_clip_norm, image_shape):
    """A gradient-norm clip on a loss in nats per image (the RealNVP code's `clip_gradient`) as
    the same clip on keras_flow's loss in bits per dimension: the loss, hence its gradient, is
    `D ln 2` times smaller, so the threshold is too (D = height * width * channels)."""
    return nats_clip_norm / (math.prod(image_shape) * math.log(2.0))


# tensorflow/models real_nvp: Adam (beta1 = 1 - momentum = 0.9, beta2 = 1 - decay = 0.999) at
# 1e-3, no warm-up, gradients clipped to global norm 100 (README runs: clip_gradient=100).
def _realnvp_training(image_shape):
    return dict(optimizer="adam", learning_rate=1e-3, beta_2=0.999, warmup=0,
                clip_norm=bits_per_dim_clip_norm(100.0, image_shape))


GLOW_PRESETS = {
    # openai/glow README quantitative runs (affine coupling, learned 1x1 conv, learntop, 8 bits).
    # CIFAR-10: random translations by up to 10% (train.py --dal 1, its default); openai/glow's
    # TFRecord loaders (ImageNet, LSUN, CelebA-HQ) augment nothing.
    "cifar10": dict(image_shape=(32, 32, 3), levels=3, depth=32, hidden_width=512,
                    coupling="affine", n_bits=8, batch_size=512, augment="shift"),
    "imagenet32": dict(image_shape=(32, 32, 3), levels=3, depth=48, hidden_width=512,
                       coupling="affine", n_bits=8, batch_size=512),
    "imagenet64": dict(image_shape=(64, 64, 3), levels=4, depth=48, hidden_width=512,
                       coupling="affine", n_bits=8, batch_size=128),
    "lsun64": dict(image_shape=(64, 64, 3), levels=3, depth=48, hidden_width=512,
                   coupling="affine", n_bits=8, batch_size=128),
    # openai/glow README qualitative run (additive coupling, 5 bits, 40 GPUs for a week).
    "celeba_hq_256": dict(image_shape=(256, 256, 3), levels=6, depth=32, hidden_width=512,
                          coupling="additive", n_bits=5, batch_size=40),
    # The OpenAI blog post's small face models (additive, 5 bits).
    "faces32": dict(image_shape=(32, 32, 3), levels=3, depth=6, hidden_width=512,
                    coupling="additive", n_bits=5, batch_size=64),
    "faces64": dict(image_shape=(64, 64, 3), levels=3, depth=10, hidden_width=512,
                    coupling="additive", n_bits=5, batch_size=64),
    # keras_flow's default for the embedded 8x8 digits, tuned for about 3 minutes on 2 CPU
    # cores (`python train.py`): 1,200 steps of 64 at a high Adamax rate, Polyak averaging.
    # 4 bits: the digits' 17 grey levels in 16 touching bins (levels 8 and 9 share one); at 8
    # bits the levels are spikes 16 bins apart that a Glow cannot shape (about 5.4 bits/dim).
    "digits": dict(image_shape=(8, 8, 1), levels=2, depth=8, hidden_width=64,
                   coupling="affine", n_bits=4, batch_size=64, learning_rate=5e-3,
                   warmup="1epoch", epochs=12, steps_per_epoch=100, ema=0.99),
}

REALNVP_PRESETS = {
    # RealNVP paper section 4.1: CIFAR-10 "downscales only once", 8 blocks, 64 features;
    # horizontal flips (paper).
    "cifar10": dict(image_shape=(32, 32, 3), levels=2, hidden_width=64, residual_blocks=8,
                    n_bits=8, batch_size=64, augment="flip",
                    **_realnvp_training((32, 32, 3))),
    # 32x32: 4 residual blocks, 32 features in the first couplings; 4 scales (RealNVP code
    # README); no flips (the code's ImageNet input has none).
    "imagenet32": dict(image_shape=(32, 32, 3), levels=4, hidden_width=32, residual_blocks=4,
                       n_bits=8, batch_size=64, augment="none",
                       **_realnvp_training((32, 32, 3))),
    # 64x64: 2 residual blocks (paper), 5 scales (RealNVP code README).
    "imagenet64": dict(image_shape=(64, 64, 3), levels=5, hidden_width=32, residual_blocks=2,
                       n_bits=8, batch_size=64, augment="none",
                       **_realnvp_training((64, 64, 3))),
    # CelebA: the code flips its training images left-right.
    "celeba64": dict(image_shape=(64, 64, 3), levels=5, hidden_width=32, residual_blocks=2,
                     n_bits=8, batch_size=64, augment="flip",
                     **_realnvp_training((64, 64, 3))),
    # 32x32 grey images (MNIST and Fashion-MNIST padded to 32x32, as the Fashion-MNIST benchmark
    # runs Glow W2): the RealNVP code's choices for 32x32 images (imagenet32 above: 4 scales,
    # 32 features, 4 residual blocks, its optimisation), one channel. The original trained
    # no grey images; no flips, as for its ImageNet.
    "grey32": dict(image_shape=(32, 32, 1), levels=4, hidden_width=32, residual_blocks=4,
                   n_bits=8, batch_size=64, augment="none",
                   **_realnvp_training((32, 32, 1))),
}

# Keys of the training command, not of the model (`keras_flow.training` reads them).
TRAINING_KEYS = ("n_bits", "batch_size", "learning_rate", "warmup", "epochs", "steps_per_epoch",
                 "ema", "augment", "optimizer", "beta_2", "clip_norm")


def preset_config(presets, name, overrides):
    """Constructor arguments of preset `name` with `overrides` applied."""
    if name not in presets:
        raise ValueError(f"Unknown preset {name!r}; choose one of {sorted(presets)}.")
    config = {k: v for k, v in presets[name].items() if k not in TRAINING_KEYS}
    config["num_bins"] = 2 ** presets[name]["n_bits"]
    config.update(overrides)
    return config

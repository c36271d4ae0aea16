"""Glow's image preprocessing: bit reduction, scaling and dequantisation.

The functions follow openai/glow (`model.py`, `preprocess` and `postprocess`)
and are plain TensorFlow ops, so they run eagerly, inside `tf.function` and
inside `tf.data` maps.

Mathematical details:

With `n_bins = 2**n_bits` and an 8-bit image `x` in `{0, ..., 255}`:

```
bins = floor(x / 2**(8 - n_bits))              # reduce_bits, in {0, ..., n_bins - 1}
z    = bins / n_bins - 0.5 + u / n_bins        # preprocess, in [-0.5, 0.5)
x'   = clip(floor((z + 0.5) * n_bins), 0, n_bins - 1) * 256 / n_bins   # postprocess
```

`u ~ U(0, 1)` is uniform dequantisation noise: it spreads each discrete value
over its whole bin, so a continuous density on `z` gives a lower bound on the
discrete log-likelihood. The model's objective then carries the constant
`-D * log(n_bins)` per image (`D = height * width * channels`); that constant
belongs to the model, not to these functions. Reducing the bits needs no
log-det term: the reduced image is the data being modelled.

Reference:
    [1] Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1
        Convolutions", arXiv:1807.03039; code: openai/glow `model.py`.
"""

import numbers

import tensorflow as tf

NOISE_MODES = ("uniform", "center", "none")


def num_bins(n_bits):
    """Returns `2**n_bits`, the number of intensity levels kept.

    Args:
        n_bits: integer in 1..8.

    Raises:
        ValueError: if `n_bits` is not an integer in 1..8.
    """
    valid = isinstance(n_bits, numbers.Integral) and not isinstance(n_bits, bool)
    if not (valid and 1 <= n_bits <= 8):
        raise ValueError(
            f"n_bits must be an integer in 1..8, received n_bits={n_bits!r}. "
            "Use 8 to keep every intensity level (5 as in Glow's CelebA-HQ runs)."
        )
    return 2 ** int(n_bits)


def reduce_bits(images, n_bits):
    """Keeps the top `n_bits` of 8-bit images: `floor(x / 2**(8 - n_bits))`.

    Args:
        images: uint8 (or integer-valued) tensor of any shape, values 0..255.
        n_bits: integer in 1..8.

    Returns:
        int32 tensor of the same shape with values in `0..2**n_bits - 1`.
    """
    divisor = 256 // num_bins(n_bits)
    bins = tf.cast(images, tf.int32)
    return bins if divisor == 1 else bins // divisor


def preprocess(images, n_bits=8, noise="uniform", seed=None):
    """Maps 8-bit images to float32 in [-0.5, 0.5), optionally dequantised.

    `z = bins / n_bins - 0.5 + u / n_bins` with `bins = reduce_bits(images)`:

    - `noise="uniform"`: `u ~ U(0, 1)`, one bin of dequantisation noise (for
      training and likelihood evaluation). The result stays strictly inside
      the bin of its pixel.
    - `noise="center"`: `u = 0.5`, the bin centre; `postprocess` maps it back
      to the (bit-reduced) image exactly, so use it to encode real images.
    - `noise="none"`: `u = 0`, the lower bin edge.

    Args:
        images: uint8 (or integer-valued) tensor, e.g.
            `[batch_size, height, width, channels]`.
        n_bits: integer in 1..8, bits kept per channel.
        noise: one of `"uniform"`, `"center"`, `"none"`.
        seed: for `noise="uniform"`, `None` to draw from TensorFlow's global
            random generator, or a stateless seed (an int or a shape `[2]`
            integer tensor) for reproducible noise.

    Returns:
        float32 tensor of the shape of `images`.

    Raises:
        ValueError: for an invalid `n_bits` or `noise`.
    """
    if noise not in NOISE_MODES:
        raise ValueError(
            f"noise must be one of {NOISE_MODES}, received noise={noise!r}."
        )
    n_bins = float(num_bins(n_bits))
    lower = tf.cast(reduce_bits(images, n_bits), tf.float32) / n_bins - 0.5
    if noise == "none":
        return lower
    if noise == "center":
        return lower + 0.5 / n_bins
    z = lower + _uniform(tf.shape(lower), seed) / n_bins
    # float32 rounding can land u close to 1 on the upper bin edge; keep it below.
    return tf.minimum(z, tf.math.nextafter(lower + 1.0 / n_bins, lower))


def postprocess(x, n_bits=8):
    """Maps floats in [-0.5, 0.5] back to uint8 images on the `n_bits` grid.

    `x' = clip(floor((x + 0.5) * n_bins), 0, n_bins - 1) * 256 / n_bins`;
    values outside the range saturate and NaN becomes 0. openai/glow clips
    after scaling (to 0..255), which for `n_bits < 8` maps `x >= 0.5` to 255,
    a value no bit-reduced image holds (4 bits: 240 is the top level); the
    bin index is clipped here instead, so every output is a multiple of
    `256 / n_bins` and `postprocess(preprocess(x, n_bits, "center"), n_bits)`
    is the bit-reduced image. For `n_bits = 8` the two are the same.

    Args:
        x: float tensor of any shape.
        n_bits: integer in 1..8, the `n_bits` used by `preprocess`.

    Returns:
        uint8 tensor of the shape of `x`.
    """
    n_bins = float(num_bins(n_bits))
    x = tf.cast(x, tf.float32)
    x = tf.where(tf.math.is_nan(x), -0.5, x)
    bins = tf.clip_by_value(tf.floor((x + 0.5) * n_bins), 0.0, n_bins - 1.0)
    return tf.cast(bins * (256.0 / n_bins), tf.uint8)


def _uniform(shape, seed):
    """U(0, 1) noise: global generator for `seed=None`, else stateless."""
    if seed is None:
        return tf.random.uniform(shape)
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        seed = tf.stack([seed, tf.zeros_like(seed)])
    return tf.random.stateless_uniform(shape, seed=seed)

"""Attribute directions in a flow's latent space, and moving images along them.

Glow's manipulation vectors (Kingma & Dhariwal 2018, Section 5, openai/glow's
`demo/get_manipulators.py`): encode labelled images, average the latents of the images with
an attribute and of those without it, and take the difference. Adding a multiple of that
direction to an image's latent and decoding it moves the image towards (or, with a negative
strength, away from) the attribute.

Mathematical details:

With `eps(x) = (eps_1, ..., eps_L)` the standardised latents of all levels (`model.encode`,
the top one last), a direction is one array per level:

    d = mean{eps(x) : x has the attribute} - mean{eps(x) : x has not}
    (for classes a -> b:  d = mean{eps(x) : class b} - mean{eps(x) : class a})

and moving an image at strength `s` and temperature `T` decodes

    x' = decode(T * (eps(x) + s * d))      levels="all": every level moved
                                           levels="top": only eps_L moved (d_l = 0 below)

so `s = 0, T = 1` gives back `x` (exactly, up to float32 round-off), `s = 1` adds the whole
difference of the means (openai/glow's demo scales it by 1.6 and uses strengths in [-1, 1]),
and `T < 1` pulls every latent towards the priors' modes, as temperature does in sampling.
Moving only the top level changes the coarse, global content and keeps the finer levels'
latents, which the (conditional) split priors then reinterpret around the new top.

Example:
    >>> directions = attributes.class_means(model, images, labels)
    >>> shirt_to_trouser = attributes.direction(directions, source=6, target=1)
    >>> moved = attributes.manipulate(model, shirts, shirt_to_trouser, strength=1.0)

Reference:
    Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", NeurIPS 2018,
    arXiv:1807.03039, Section 5 (semantic manipulation).
"""

import numbers

import numpy as np

LEVELS = ("all", "top")


def encode_all(model, images, labels=None, batch_size=256):
    """`model.encode` in batches: one float32 NumPy array `[N, ...]` per level."""
    images = np.asarray(images)
    parts = []
    for start in range(0, len(images), batch_size):
        batch_labels = None if labels is None else np.asarray(labels)[start:start + batch_size]
        eps_list, _ = model.encode(images[start:start + batch_size], batch_labels)
        parts.append([np.asarray(eps) for eps in eps_list])
    return [np.concatenate(level) for level in zip(*parts)]


def mean_latent(model, images, labels=None, batch_size=256):
    """The mean of `model.encode(images)`'s latents: one array per level (no batch axis)."""
    return [level.mean(axis=0) for level in encode_all(model, images, labels, batch_size)]


def class_means(model, images, classes, batch_size=256):
    """`{class: mean latent}` over the images of each class (`classes`: int `[N]`, one per
    image; for an unconditional model these are only used to group the images)."""
    classes = np.asarray(classes).reshape(-1)
    if len(classes) != len(images):
        raise ValueError(f"Received {len(images)} images but {len(classes)} classes; pass one "
                         "class per image.")
    eps = encode_all(model, images, batch_size=batch_size)
    return {int(c): [level[classes == c].mean(axis=0) for level in eps]
            for c in np.unique(classes)}


def direction(means, source, target):
    """`means[target] - means[source]`, per level: the direction from class `source` to
    class `target` of `class_means`' output."""
    for name in (source, target):
        if name not in means:
            raise ValueError(f"No images of class {name!r}; the classes are {sorted(means)}.")
    return [b - a for a, b in zip(means[source], means[target])]


def attribute_direction(model, images, has_attribute, batch_size=256):
    """openai/glow's manipulator: mean latent of the images with the attribute minus the mean
    of those without it (`has_attribute`: bool `[N]`)."""
    mask = np.asarray(has_attribute, bool).reshape(-1)
    if mask.all() or not mask.any():
        raise ValueError("has_attribute must hold both True and False values: the direction "
                         "is a difference of the two groups' mean latents.")
    return direction(class_means(model, images, mask.astype(int), batch_size), 0, 1)


def move_latents(eps_list, direction, strength=1.0, temperature=1.0, levels="all"):
    """`T * (eps + s * d)` per level; with `levels="top"` only the top level gets `s * d`."""
    if levels not in LEVELS:
        raise ValueError(f"levels must be one of {LEVELS}; received {levels!r}.")
    if len(direction) != len(eps_list):
        raise ValueError(f"The direction has {len(direction)} levels, the latents "
                         f"{len(eps_list)}; compute it with the same model.")
    if not isinstance(temperature, numbers.Real) or not temperature >= 0:
        raise ValueError(f"temperature must be >= 0; received {temperature!r}.")
    moved = []
    for index, (eps, step) in enumerate(zip(eps_list, direction)):
        eps = np.asarray(eps, np.float32)
        if levels == "all" or index == len(eps_list) - 1:
            eps = eps + np.float32(strength) * np.asarray(step, np.float32)
        moved.append(np.float32(temperature) * eps)
    return moved


def manipulate(model, images, direction, strength=1.0, temperature=1.0, levels="all",
               labels=None):
    """Moves preprocessed images along `direction` and decodes them (module docstring).

    Args:
        model: a keras_flow flow.
        images: `(batch_size, H, W, C)` preprocessed images in [-0.5, 0.5).
        direction: one array per level (`direction`, `attribute_direction`).
        strength: `s`, a float (negative: away from the attribute).
        temperature: `T >= 0`; 1 keeps the latents' spread.
        levels: `"all"` or `"top"`.
        labels: int `(batch_size,)` for a class-conditional model.

    Returns: float32 images `(batch_size, H, W, C)` in about [-0.5, 0.5].
    """
    eps_list, _ = model.encode(images, labels)
    return model.decode(move_latents(eps_list, direction, strength, temperature, levels), labels)


def manipulation_grid(model, images, direction, strengths, temperature=1.0, levels="all"):
    """Rows of `images` moved at each of `strengths` (row-major: image, then strength), as
    `openai/glow`'s `manipulate_range`; returns `(len(images) * len(strengths), H, W, C)`."""
    eps_list, _ = model.encode(images)
    frames = [move_latents(eps_list, direction, s, temperature, levels) for s in strengths]
    # [strength][level] -> per level [image, strength] flattened image-major.
    per_level = [np.stack([frame[level] for frame in frames], axis=1).reshape(
        (-1,) + frames[0][level].shape[1:]) for level in range(len(eps_list))]
    return model.decode(per_level)

"""The likelihood objective, in one place: log p(x), bits/dim and its per-level terms.

With `D = height * width * channels` dimensions per image, standardised latents
`eps_1 .. eps_L` (one per level, the top one last) and the flow's `log|det d eps / d x|`
(the learned priors' scales included, since priors are flow layers):

    log p(x) = sum_l log N(eps_l; 0, I) + log|det d eps / d x|          nats per example
    bits/dim = (-log p(x) + D log(num_bins)) / (D ln 2)

The `D log(num_bins)` term is the discretisation: a flow models dequantised images scaled to
[-0.5, 0.5), whose bins have width 1/num_bins (openai/glow's `-log(n_bins) * n_pixels`).
Every value is float32 of shape `(batch_size,)`, whatever the dtype policy.

The model, its export, the scoring command and the notebooks' breakdown all use these
functions; nothing else writes the formula out.
"""

import math

from keras import ops

from keras_flow.layers.priors import standard_normal_log_prob

LN2 = math.log(2.0)


def log_prob(eps_list, log_det):
    """`log p(x)` in nats per example: `sum_l log N(eps_l; 0, I) + log_det`."""
    return log_det + sum(standard_normal_log_prob(eps) for eps in eps_list)


def bits_per_dim(log_prob_nats, num_dims, num_bins):
    """`(-log p(x) + D log(num_bins)) / (D ln 2)`, from `log p(x)` in nats per example."""
    dims = float(num_dims)
    return (-log_prob_nats + dims * math.log(num_bins)) / (dims * LN2)


def bits_per_dim_terms(eps_list, log_det, num_dims, num_bins):
    """The bits/dim of each example split into terms that add up to it.

        bits/dim = sum_l -log N(eps_l; 0, I) / (D ln 2)     "level 1" .. "level L"
                   - log_det / (D ln 2)                      "log-det"
                   + log2(num_bins)                          "discretisation"

    Returns:
        dict of float32 `(batch_size,)` tensors, in that order, plus `"total"`, their sum,
        which equals `bits_per_dim(log_prob(eps_list, log_det), num_dims, num_bins)`.
    """
    scale = 1.0 / (float(num_dims) * LN2)
    terms = {f"level {index}": -standard_normal_log_prob(eps) * scale
             for index, eps in enumerate(eps_list, start=1)}
    terms["log-det"] = -ops.cast(log_det, "float32") * scale
    terms["discretisation"] = ops.full_like(terms["log-det"], math.log2(num_bins))
    terms["total"] = sum(terms.values())
    return terms

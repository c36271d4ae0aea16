"""Tensors derived from weights alone, computed once per call and shared by the batch shards.

A model with `batch_shards = n` runs every layer n times in one call. What a layer derives
from its weights alone (an LU product, `exp` of a log-scale, a folded kernel) is the same for
every shard; inside `shared_derived_weights()`, `derived(layer, key, compute)` computes it
once and hands the same tensor to every shard, so the graph holds one copy and autodiff sums
the shards' gradients into it before back-propagating through the derivation once. The cache
is per thread (each `tf.distribute` replica traces its own) and lives for one block.
"""

import contextlib
import threading

_local = threading.local()


@contextlib.contextmanager
def shared_derived_weights(enabled=True):
    """Shares `derived` tensors inside the block (`enabled=False`: computes them afresh
    inside, e.g. in a function recomputed in the backward pass, which may not capture them)."""
    outer = getattr(_local, "cache", None)
    _local.cache = ({} if outer is None else outer) if enabled else None
    try:
        yield
    finally:
        _local.cache = outer


def derived(layer, key, compute, depends_on=()):
    """`compute()`, computed once per `(layer, key, depends_on)` inside a
    `shared_derived_weights()` block. `key` names what the result depends on besides the
    layer's weights and the tensors `depends_on` (matched by identity, and kept alive for the
    block so that no other tensor takes their identity)."""
    cache = getattr(_local, "cache", None)
    if cache is None:
        return compute()
    full_key = (id(layer), key) + tuple(id(tensor) for tensor in depends_on)
    if full_key not in cache:
        cache[full_key] = (compute(), tuple(depends_on))
    return cache[full_key][0]

"""Batch shards: one batch through the flow as n slices side by side, for CPU data parallelism.

A model with `batch_shards = n > 1` encodes (and decodes) a batch as n slices of it, each
through the whole flow, and concatenates the results: the same function (every output is per
example), but n independent branches in the traced graph, which TensorFlow's inter-op threads
run on n cores at once. With one intra-op thread per op (`keras_flow.cpu_threads`) that is data
parallelism across the CPU's cores inside one step, with one set of weights. What a layer
derives from its weights alone (an LU product, a folded kernel) is computed once for all
shards through the `SharedDerivations` the model passes down.
"""

import keras
from keras import ops


def shard_bounds(images, shards):
    """Batch indices `[0, ..., batch]` of `shards` near-equal shards of `images`' batch.

    A static batch size gets at most one shard per example, none empty. A batch size known
    only when the graph runs (TensorFlow: `evaluate` or `predict` on batches whose last one is
    partial, an export's endpoints, a `tf.function` without a fixed batch) gets tensor bounds
    `ceil(batch * i / n)` (`dynamic_shard_bounds`). A batch size not known at all (a Keras
    symbolic input) gets one shard."""
    batch = images.shape[0]
    if shards == 1:
        return [0, batch]
    if batch is None:
        return dynamic_shard_bounds(ops.shape(images)[0], shards)
    shards = min(shards, int(batch))
    return [int(batch) * index // shards for index in range(shards + 1)]


def dynamic_shard_bounds(batch, shards):
    """`[ceil(batch * i / n) for i = 0..n]` (n = `shards`) for a batch size `batch` that is a
    tensor: the larger shards first, and the last ones empty when the batch is smaller than n;
    `[0, None]` when it is None (a symbolic Keras input)."""
    if batch is None:
        return [0, None]
    return [0] + [(batch * index + shards - 1) // shards for index in range(1, shards)] + [batch]


def map_shards(fn, tensors, labels, bounds):
    """`fn(tensors, labels, shared)` of the whole batch (`bounds` of length 2; `shared` None),
    or of each shard's rows of `tensors` (same batch axis) and `labels`, with one
    `SharedDerivations` for all shards, the shards' outputs joined along the batch."""
    if len(bounds) <= 2:
        return fn(tensors, labels, None)
    shared = SharedDerivations()
    shards = [run_on_rows(lambda rows, row_labels: fn(rows, row_labels, shared), tensors, labels,
                          start, stop)
              for start, stop in zip(bounds[:-1], bounds[1:])]
    return keras.tree.map_structure(lambda *parts: ops.concatenate(parts, axis=0), *shards)


def run_on_rows(fn, tensors, labels, start, stop):
    """`fn` of rows `start:stop` of `tensors` and `labels` (every output of `fn` is per row).

    Tensor bounds (`dynamic_shard_bounds`) may leave the shard empty: it then runs on the row
    `stop - 1` and keeps none of its outputs' rows, since TensorFlow's oneDNN convolutions
    fail on an empty batch. A non-empty shard keeps all of them (an identity slice)."""
    static = isinstance(start, int) and isinstance(stop, int)
    first = start if static else ops.minimum(start, stop - 1)
    outputs = fn([tensor[first:stop] for tensor in tensors],
                 None if labels is None else labels[first:stop])
    if static:
        return outputs
    return keras.tree.map_structure(lambda tensor: tensor[:stop - start], outputs)


class SharedDerivations:
    """What the layers derive from their weights alone (an LU product, `exp` of a log-scale, a
    folded kernel), computed once for all the shards of one call.

    The model makes one for a sharded call and passes it down explicitly (the flow layers'
    `shared` argument); each layer asks `derive(shared, self, key, compute)`, so the graph
    holds one copy and autodiff sums the shards' gradients into it before back-propagating
    through the derivation once. Without it each shard derives its own copy: the same values,
    and on TensorFlow's CPU a few hundred more small ops per step."""

    def __init__(self):
        self._values = {}

    def get(self, layer, key, compute, depends_on=()):
        """`compute()`, once per `(layer, key, depends_on)`: `key` names what the result
        depends on besides the layer's weights and the tensors `depends_on` (matched by
        identity, and kept alive with the result so that no other tensor takes it)."""
        full_key = (id(layer), key) + tuple(id(tensor) for tensor in depends_on)
        if full_key not in self._values:
            self._values[full_key] = (compute(), tuple(depends_on))
        return self._values[full_key][0]


def derive(shared, layer, key, compute, depends_on=()):
    """`shared.get(layer, key, compute, depends_on)`, or `compute()` when `shared` is None."""
    if shared is None:
        return compute()
    return shared.get(layer, key, compute, depends_on)

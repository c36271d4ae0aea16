"""`SharedDerivations`: a derived tensor is computed once per layer, key and inputs, and
`derive` without one computes afresh."""

import numpy as np

from keras_flow.kernels.batch_shards import SharedDerivations
from keras_flow.kernels.batch_shards import derive


class Layer:
    def __init__(self):
        self.computed = 0

    def compute(self):
        self.computed += 1
        return np.full((2,), self.computed)


def test_computed_once_per_layer_and_key():
    first, second, shared = Layer(), Layer(), SharedDerivations()
    values = [derive(shared, first, "w", first.compute) for _ in range(3)]
    other = derive(shared, second, "w", second.compute)
    other_key = derive(shared, first, "v", first.compute)
    assert all(value is values[0] for value in values)
    assert (first.computed, second.computed) == (2, 1)
    assert other is not values[0] and other_key is not values[0]


def test_computed_afresh_without_shared_derivations():
    layer = Layer()
    derive(None, layer, "w", layer.compute)
    derive(None, layer, "w", layer.compute)
    assert layer.computed == 2


def test_inputs_are_matched_by_identity():
    layer, scale, other_scale, shared = Layer(), np.ones(2), np.ones(2), SharedDerivations()
    a = derive(shared, layer, "w", layer.compute, depends_on=(scale,))
    b = derive(shared, layer, "w", layer.compute, depends_on=(scale,))
    c = derive(shared, layer, "w", layer.compute, depends_on=(other_scale,))
    assert a is b and c is not a and layer.computed == 2

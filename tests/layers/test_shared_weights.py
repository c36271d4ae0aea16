"""`keras_flow.layers.shared_weights`: a derived tensor is computed once per block, layer, key
and inputs, and never shared outside its block, thread or a block that turns sharing off."""

import threading

import numpy as np

from keras_flow.layers.shared_weights import derived
from keras_flow.layers.shared_weights import shared_derived_weights


class Layer:
    def __init__(self):
        self.computed = 0

    def compute(self):
        self.computed += 1
        return np.full((2,), self.computed)


def test_computed_once_per_layer_and_key_inside_a_block():
    first, second = Layer(), Layer()
    with shared_derived_weights():
        values = [derived(first, "w", first.compute) for _ in range(3)]
        other = derived(second, "w", second.compute)
        other_key = derived(first, "v", first.compute)
    assert all(value is values[0] for value in values)
    assert (first.computed, second.computed) == (2, 1)
    assert other is not values[0] and other_key is not values[0]


def test_computed_afresh_outside_a_block_and_where_sharing_is_off():
    layer = Layer()
    derived(layer, "w", layer.compute)
    derived(layer, "w", layer.compute)
    with shared_derived_weights():
        derived(layer, "w", layer.compute)
        with shared_derived_weights(enabled=False):
            derived(layer, "w", layer.compute)
            derived(layer, "w", layer.compute)
        derived(layer, "w", layer.compute)  # the outer block's cache is back
    assert layer.computed == 5


def test_inputs_are_matched_by_identity():
    layer, scale, other_scale = Layer(), np.ones(2), np.ones(2)
    with shared_derived_weights():
        a = derived(layer, "w", layer.compute, depends_on=(scale,))
        b = derived(layer, "w", layer.compute, depends_on=(scale,))
        c = derived(layer, "w", layer.compute, depends_on=(other_scale,))
    assert a is b and c is not a and layer.computed == 2


def test_other_threads_do_not_see_the_block():
    layer, seen = Layer(), []
    with shared_derived_weights():
        derived(layer, "w", layer.compute)
        worker = threading.Thread(target=lambda: seen.append(derived(layer, "w", layer.compute)))
        worker.start()
        worker.join()
    assert layer.computed == 2 and seen[0][0] == 2

import numpy as np
import keras

from keras_flow.layers import Reverse
from keras_flow.layers import Shuffle
from tests.flow_checks import random_images
from tests.flow_checks import run_flow_checks


def test_reverse_contract(tmp_path):
    run_flow_checks(Reverse, (4, 8, 8, 5), tmp_path)


def test_shuffle_contract(tmp_path):
    run_flow_checks(lambda **kw: Shuffle(seed=7, **kw), (4, 8, 8, 5), tmp_path)


def test_reverse_reverses():
    x = random_images((2, 3, 3, 4))
    y, _ = Reverse()(x)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(y), x[..., ::-1])


def test_shuffle_is_a_seeded_permutation():
    x = random_images((2, 3, 3, 16))
    a, b, c = Shuffle(seed=1), Shuffle(seed=1), Shuffle(seed=2)
    ya, yb, yc = (keras.ops.convert_to_numpy(layer(x)[0]) for layer in (a, b, c))
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, yc)
    order = keras.ops.convert_to_numpy(a.permutation)
    assert sorted(order.tolist()) == list(range(16)) and order.tolist() != list(range(16))
    np.testing.assert_array_equal(ya, x[..., order])
    assert not a.trainable_weights

import numpy as np
import pytest
import keras

from keras_flow.layers import Squeeze
from tests.flow_checks import random_images
from tests.flow_checks import run_flow_checks


def test_flow_contract(tmp_path):
    run_flow_checks(Squeeze, (4, 8, 8, 3), tmp_path)


def test_channel_order_is_openai_glow():
    x = random_images((2, 4, 6, 3))
    y = keras.ops.convert_to_numpy(Squeeze()(x)[0])
    assert y.shape == (2, 2, 3, 12)
    for c in range(3):
        for fy in range(2):
            for fx in range(2):
                np.testing.assert_array_equal(y[..., c * 4 + fy * 2 + fx], x[:, fy::2, fx::2, c])


def test_odd_size_raises_with_the_fix():
    with pytest.raises(ValueError, match=r"even height and width.*\(2, 5, 4, 3\).*2\*\*levels"):
        Squeeze()(np.zeros((2, 5, 4, 3), "float32"))

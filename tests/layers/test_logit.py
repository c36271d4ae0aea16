import numpy as np
import pytest

from keras_flow.layers import LogitTransform
from tests.flow_checks import preprocessed_images
from tests.flow_checks import run_flow_checks


def test_flow_contract(tmp_path):
    run_flow_checks(LogitTransform, (4, 8, 8, 3), tmp_path, make_inputs=preprocessed_images)


def test_alpha_is_validated():
    with pytest.raises(ValueError, match="alpha"):
        LogitTransform(alpha=0.5)

import pytest

from keras_flow.layers import FlowStep
from tests.flow_checks import run_flow_checks


@pytest.mark.parametrize("permutation", ["reverse", "shuffle", "conv1x1"])
@pytest.mark.parametrize("coupling", ["additive", "affine"])
def test_flow_contract(permutation, coupling, tmp_path):
    run_flow_checks(lambda **kw: FlowStep(16, permutation, coupling, **kw), (4, 8, 8, 4),
                    tmp_path, perturb_scale=0.1)


def test_unknown_names_raise():
    with pytest.raises(ValueError, match="permutation"):
        FlowStep(permutation="1x1")
    with pytest.raises(ValueError, match="coupling"):
        FlowStep(coupling="spline")

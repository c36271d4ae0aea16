"""RealNVP's s/t network (`ResNetCouplingNetwork`) against the RealNVP code's formulas."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_flow.layers.coupling_networks import RESNET_LEGACY_OPTIONS
from keras_flow.layers.coupling_networks import ResNetCouplingNetwork
from tests.flow_checks import perturb_weights
from tests.flow_checks import random_images


def network(**kwargs):
    return ResNetCouplingNetwork(6, hidden_width=8, residual_blocks=2, **kwargs)


def reference(net, inputs, masked):
    """tensorflow/models real_nvp's `masked_conv_aff_coupling` input layer and `resnet`
    (skip=1), written out from the network's own sublayers (inference mode)."""
    if masked:
        given, mask = inputs[..., :-1], inputs[..., -1:]
        r = 2.0 * net.norm_in(given)
        h = ops.relu(ops.concatenate([r, -r, mask], axis=-1))
    else:
        r = net.norm_in(inputs)
        h = ops.relu(ops.concatenate([r, -r], axis=-1))
    h = net.conv_in(h)
    out = net.skips[0](h)
    for (norm_a, conv_a, norm_b, conv_b), skip in zip(net.blocks, net.skips[1:]):
        h = h + conv_b(ops.relu(norm_b(conv_a(ops.relu(norm_a(h))))))
        out = out + skip(h)
    return net.conv_out(ops.relu(net.norm_out(out)))


@pytest.mark.parametrize("masked", [True, False])
def test_input_layer_and_skip_path_are_the_originals(masked):
    x = random_images((2, 4, 4, 3))
    if masked:  # a checkerboard coupling's input: x * mask and the mask
        mask = (np.add.outer(np.arange(4), np.arange(4)) % 2 == 0).astype("float32")
        mask = np.broadcast_to(mask[None, :, :, None], (2, 4, 4, 1))
        x = np.concatenate([x * mask, mask], axis=-1)
    net = network(masked_input=masked)
    net(x)
    perturb_weights(net, scale=0.1)
    for weight in net.non_trainable_weights:  # moving statistics off (0, 1)
        weight.assign(weight + 0.5)
    np.testing.assert_allclose(ops.convert_to_numpy(net(x)),
                               ops.convert_to_numpy(reference(net, x, masked)), atol=1e-5)
    assert net.conv_in.direction.shape[2] == 2 * 3 + int(masked)  # [r, -r] (+ mask)
    assert [conv.name for conv in net.skips] == ["skip_in", "skip_0", "skip_1"]
    assert all(conv.kernel_size == 1 and conv.use_gain and conv.use_bias for conv in net.skips)


def test_gains_are_every_weight_norm_gain():
    net = network()
    net.build((None, 4, 4, 3))
    gains = net.gains()
    assert len(gains) == 1 + 3 + 2  # conv_out, three skips, each block's second conv
    assert all(g.path.endswith("gain") for g in gains)
    assert {id(g) for g in gains} == {id(w) for w in net.trainable_weights
                                      if w.path.endswith("gain")}


def test_legacy_network_has_0_1_0_weights_only():
    """Without the input layer and the skip path the network is 0.1.0's: the raw input into
    the first convolution, the head on the last block, no other weights."""
    old = network(**RESNET_LEGACY_OPTIONS)
    old.build((None, 4, 4, 3))
    assert old.norm_in is None and old.skips == []
    assert old.conv_in.direction.shape[2] == 3
    names = {w.path.split("/")[-2] for w in old.weights}
    assert not any(name.startswith(("skip", "norm_in")) for name in names)
    config = network().get_config()
    for key in RESNET_LEGACY_OPTIONS:
        config.pop(key)
    clone = ResNetCouplingNetwork.from_config(config)
    assert (clone.input_norm, clone.skip) == (False, False)


def test_config_round_trip_keeps_the_options():
    net = network(masked_input=True, skip=False)
    clone = ResNetCouplingNetwork.from_config(net.get_config())
    assert (clone.input_norm, clone.skip, clone.masked_input) == (True, False, True)
    x = random_images((2, 4, 4, 2))
    net(x)
    clone(x)
    clone.set_weights(net.get_weights())
    np.testing.assert_array_equal(ops.convert_to_numpy(net(x)), ops.convert_to_numpy(clone(x)))


def test_batch_norms_use_batch_statistics_in_training():
    x = random_images((8, 4, 4, 3), scale=4.0) + 3.0
    net = network()
    inference = ops.convert_to_numpy(net(x))
    training = ops.convert_to_numpy(net(x, training=True))
    assert np.max(np.abs(inference - training)) > 1e-3
    assert keras.ops.convert_to_numpy(net.norm_in.moving_mean).max() > 0

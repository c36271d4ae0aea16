"""benchmarks/throughput.py: its compiled functions (for any batch size, concrete) and its
alternating timing rounds."""

import time

import numpy as np
import pytest
import tensorflow as tf

from tests.scripts import load_script


def test_any_batch_size_traces_once_for_every_batch_size():
    throughput = load_script("benchmarks/throughput.py")
    traces = []

    def row_sums(x):
        traces.append(x.shape[0])
        return tf.reduce_sum(x, axis=1)

    function = throughput.compiled(row_sums, None, "tensorflow", jit=False, any_batch=True)
    for rows in (3, 5):
        np.testing.assert_allclose(function(np.ones((rows, 4), "float32")).numpy(), [4.0] * rows)
    assert traces == [None]  # one trace, for an unknown batch size
    fixed = throughput.compiled(row_sums, None, "tensorflow", jit=False)
    for rows in (3, 5):
        fixed(np.ones((rows, 4), "float32"))
    assert traces[1:] == [3, 5]  # the default: one trace per batch size


def test_any_batch_size_training_data_leaves_the_batch_size_unknown():
    throughput = load_script("benchmarks/throughput.py")
    x = np.zeros((6, 4, 4, 1), "float32")
    unknown = throughput.training_data(x, "tensorflow", any_batch=True)()
    assert unknown.element_spec.shape.as_list() == [None, 4, 4, 1]
    assert next(iter(unknown)).shape == (6, 4, 4, 1)
    fixed = throughput.training_data(x, "tensorflow")()
    assert fixed.element_spec.shape.as_list() == [6, 4, 4, 1]


@pytest.mark.parametrize("flag", ["--any-batch-size", "--concrete-functions"])
def test_tensorflow_only_flags_are_refused_with_jax(flag, capsys):
    throughput = load_script("benchmarks/throughput.py")
    with pytest.raises(SystemExit):
        throughput.parse_args(["--backend", "jax", flag])
    assert f"{flag} is for TensorFlow" in capsys.readouterr().err


def test_concrete_functions_trace_once_and_agree_with_the_tf_function():
    throughput = load_script("benchmarks/throughput.py")
    traces = []

    def scaled_sums(x, y):
        traces.append(x.shape[0])
        return tf.reduce_sum(x, axis=1) * y[:, 0]

    x, y = np.arange(12, dtype="float32").reshape(3, 4), np.full((3, 1), 2.0, "float32")
    concrete = throughput.compiled(scaled_sums, None, "tensorflow", jit=False, concrete=True)
    assert isinstance(concrete(x, y), tf.Tensor)  # NumPy arrays in, as throughput.py feeds
    np.testing.assert_allclose(concrete(tf.constant(x), y).numpy(), [12.0, 44.0, 76.0])
    assert traces == [3]  # one trace, for the first call's shapes
    with pytest.raises((TypeError, ValueError)):  # a concrete function takes only those
        concrete(np.ones((5, 4), "float32"), np.ones((5, 1), "float32"))
    any_batch = throughput.compiled(scaled_sums, None, "tensorflow", jit=False,
                                    any_batch=True, concrete=True)
    for rows in (3, 5):
        assert any_batch(np.ones((rows, 4), "float32"),
                         np.ones((rows, 1), "float32")).shape == (rows,)
    assert traces == [3, None]


def test_alternating_rounds_alternate_the_order_and_time_each_call():
    throughput = load_script("benchmarks/throughput.py")
    order = []
    calls = [lambda: order.append("a"), lambda: (order.append("b"), time.sleep(0.002))]
    first, second = throughput.alternating_rounds(calls, rounds=3, per_round=2, warmup=1)
    assert order == ["a", "b"] + ["a", "a", "b", "b"] + ["b", "b", "a", "a"] + ["a", "a", "b", "b"]
    assert len(first) == len(second) == 3
    assert min(second) >= 0.002 > max(first)  # seconds per call, not per round

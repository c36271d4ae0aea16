"""benchmarks/throughput.py: `--any-batch-size` traces its functions for any batch size."""

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


def test_any_batch_size_is_refused_with_jax(capsys):
    throughput = load_script("benchmarks/throughput.py")
    with pytest.raises(SystemExit):
        throughput.parse_args(["--backend", "jax", "--any-batch-size"])
    assert "--any-batch-size is for TensorFlow" in capsys.readouterr().err

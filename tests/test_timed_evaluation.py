"""benchmarks/timed_evaluation.py: the benchmarks' evaluation at fixed training budgets."""

import keras
import numpy as np
import pytest

from keras_flow.optimizers import make_optimizer
from tests.scripts import load_script

TimedEvaluation = load_script("benchmarks/timed_evaluation.py").TimedEvaluation


def test_timed_evaluation_at_step_points_then_stops():
    """The benchmarks' evaluation callback: one report per point, training stops after the last,
    and the evaluations leave the training metrics alone (a twin run without them logs the
    same running means, and the reported windows are the means of its batches)."""
    import tensorflow as tf
    from keras_flow import Glow
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 16, size=(32, 4, 4, 1)) / 16.0 - 0.5).astype("float32")
    images = tf.data.Dataset.from_tensor_slices(x)

    def fitted(callbacks, steps):
        keras.utils.set_random_seed(0)
        model = Glow(levels=1, depth=1, hidden_width=4, num_bins=16, image_shape=(4, 4, 1))
        model.initialize(x)
        model.compile(optimizer=make_optimizer("adam", 1e-3))
        model.fit(images.batch(8).repeat(), epochs=1, steps_per_epoch=steps,
                  callbacks=callbacks, verbose=0, shuffle=False)

    reports = []
    timed = TimedEvaluation(images.batch(16), (2, 5), reports.append, unit="steps")
    fitted([timed], 50)
    assert [r["steps"] for r in reports] == [2, 5] and timed.steps == 5
    assert all(np.isfinite(r["test_bits_per_dim"]) and r["training_seconds"] > 0
               for r in reports)
    running = []
    fitted([keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: running.append(float(logs["bits_per_dim"])))], 5)
    batches = [(n + 1) * m - n * (running[n - 1] if n else 0.0) for n, m in enumerate(running)]
    assert reports[1]["train_bits_per_dim"] == pytest.approx(running[4], abs=1e-4)
    assert [r["window_train_bits_per_dim"] for r in reports] == pytest.approx(
        [np.mean(batches[:2]), np.mean(batches[2:])], abs=1e-3)
    with pytest.raises(ValueError, match="unit"):
        TimedEvaluation(None, (1,), print, unit="epochs")


def test_timed_evaluation_recovers_the_steps_from_the_running_means():
    """From the running means Keras logs: each batch's bits/dim, or the sum over the steps of
    one call of several (Keras's steps_per_execution; the callback then has the last step's
    index), and the step count."""
    timed = TimedEvaluation(None, (10,), print, unit="steps")
    batches = [5.0, 3.0, 4.0, 2.0, 6.0, 1.0]
    # epoch 1: steps 1-3 one by one; epoch 2 (a new running mean): a call of 2, then of 1
    for epoch, ends in enumerate(([1, 2, 3], [2, 3])):
        timed.on_epoch_begin(epoch)
        epoch_batches = batches[3 * epoch:3 * epoch + 3]
        for n in ends:
            timed.on_train_batch_end(n - 1, {"bits_per_dim": np.mean(epoch_batches[:n])})
    assert timed.steps == 6
    np.testing.assert_allclose(timed._window, [(1, 5.0), (1, 3.0), (1, 4.0), (2, 8.0),
                                               (1, 1.0)])

"""Held-out bits/dim at every epoch end (with the EMA weights when the optimizer keeps them)."""

import keras

from keras_flow.callbacks.ema import ema_weights


class HeldOutBitsPerDim(keras.callbacks.Callback):
    """Adds `val_bits_per_dim` and `test_bits_per_dim` to the epoch logs.

    Evaluates each held-out dataset (fixed dequantisation noise) with the EMA weights when the
    optimizer keeps them. Put it before the callbacks that read these logs.

    Args:
        datasets: `{log_name: tf.data.Dataset or None}`, e.g.
            `{"val_bits_per_dim": data.validation, "test_bits_per_dim": data.test}`.
    """

    def __init__(self, datasets):
        super().__init__()
        self.datasets = {name: ds for name, ds in datasets.items() if ds is not None}

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update(self.evaluate())

    def evaluate(self):
        with ema_weights(self.model):
            return {name: evaluate_bits_per_dim(self.model, dataset)
                    for name, dataset in self.datasets.items()}


def evaluate_bits_per_dim(model, dataset):
    """Mean bits/dim of `model` over `dataset` (float)."""
    return float(model.evaluate(dataset, verbose=0, return_dict=True)["bits_per_dim"])

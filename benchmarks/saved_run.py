"""A saved model of a train.py run and the data to go on with it (shared by the diagnostics
that take `RUN/model.keras`: gradient_norms.py, mixed_precision_bpd.py)."""

import os
import sys


def load_model_and_data(path, dataset, batch_size, n_bits=None):
    """`(model, data)`: the model saved at `path` and `keras_flow.data` of `dataset` at the
    model's number of bits (or `n_bits`), no validation split; `None` (after printing why)
    when `path` is not a file."""
    if not os.path.isfile(path):
        print(f"error: no model file {path!r}; pass the model.keras of a train.py run",
              file=sys.stderr)
        return None
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import numpy as np

    import keras_flow  # noqa: F401  (registers the layers for loading)
    from keras_flow import training

    model = keras.models.load_model(path, compile=False)
    config = training.resolve_config(training.TrainConfig(
        dataset=dataset, preset="none", levels=model.levels,
        n_bits=n_bits or int(round(np.log2(model.num_bins))),
        model="realnvp" if type(model).__name__ == "RealNVP" else "glow",
        batch_size=batch_size, validation_fraction=0.0, verbose=0))
    return model, training.load_data(config)

"""What a run leaves to look at: sample grids (PNG and TensorBoard) and the bits/dim curves."""

import time
from pathlib import Path

import keras
import numpy as np
from keras import ops

from keras_flow import files
from keras_flow.callbacks.ema import ema_weights
from keras_flow.image_grid import make_grid
from keras_flow.image_grid import save_png

GRID_BORDER = 96  # grey frame around each sample of a grid


class SampleGrids(keras.callbacks.Callback):
    """Writes a grid of samples per temperature each epoch, as PNG files and to TensorBoard.

    Files: `<folder>/epoch_0003_T0.7.png` (one per epoch and temperature); TensorBoard images
    `samples/T=0.7` in `<log_dir>/samples`. The latent noise has a fixed seed, so the grids
    of successive epochs show the same latents decoded by the evolving model. The decoding is
    traced once, at the first grid, and reused: eager decoding cost a small data set's epoch
    ends several times more (docs/time-budget.md, "Where the budget goes").

    Args:
        folder: where the PNG files go.
        temperatures: e.g. `(0.0, 0.5, 0.7, 0.8, 1.0)`.
        n_bits: the data's bits per channel, for `postprocess`.
        num_samples: images per grid.
        log_dir: TensorBoard folder (None: no TensorBoard images).
        seed: seed of the latent noise.
    """

    def __init__(self, folder, temperatures, n_bits, num_samples=64, log_dir=None, seed=0):
        super().__init__()
        self.folder = Path(folder)
        self.temperatures = tuple(float(t) for t in temperatures)
        self.n_bits = int(n_bits)
        self.num_samples = int(num_samples)
        self.log_dir = log_dir
        self.seed = int(seed)
        self._writer = None
        self._decode = None

    def on_epoch_end(self, epoch, logs=None):
        if self._decode is None:
            import tensorflow as tf

            self._decode = tf.function(self.model.decode, autograph=False)
        with ema_weights(self.model):
            grids = write_sample_grids(self.model, self.folder, self.temperatures, self.n_bits,
                                       self.num_samples, self.seed,
                                       prefix=f"epoch_{epoch + 1:04d}_", decode=self._decode)
        if self.log_dir is not None:
            self._write_summaries(grids, epoch)

    def _write_summaries(self, grids, epoch):
        import tensorflow as tf

        if self._writer is None:
            self._writer = tf.summary.create_file_writer(str(Path(self.log_dir) / "samples"))
        with self._writer.as_default():
            for temperature, grid in grids.items():
                image = grid if grid.ndim == 3 else grid[..., None]
                tf.summary.image(f"samples/T={temperature:g}", image[None], step=epoch)
        self._writer.flush()


def write_sample_grids(model, folder, temperatures, n_bits, num_samples=64, seed=0, prefix="",
                       decode=None):
    """Writes `<folder>/<prefix>T<t>.png`, a grid of samples per temperature `t`.

    All temperatures decode the same standard normal noise (seeded) scaled by `t`, in one
    batch. Each sample gets a one-pixel grey frame; small grids are enlarged to >= 256 px.
    A class-conditional model gets labels `0, 1, ..., C-1, 0, ...` and `C` columns, so each
    column shows one class.

    `decode`: the function that decodes, `model.decode` (eager) unless given, e.g. a traced
    copy of it.

    Returns:
        `{temperature: uint8 grid}`.
    """
    from keras_flow.preprocessing import postprocess

    decode = model.decode if decode is None else decode

    temperatures = tuple(float(t) for t in temperatures)
    noise = model.latent_noise(num_samples, 1.0, seed)
    eps_list = [ops.concatenate([eps * t for t in temperatures]) for eps in noise]
    labels, columns = None, None
    if model.num_classes:
        labels = np.tile(np.arange(num_samples, dtype="int32") % model.num_classes,
                         len(temperatures))
        columns = model.num_classes
    images = np.asarray(postprocess(decode(eps_list, labels), n_bits))
    images = np.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=GRID_BORDER)
    grids = {}
    for index, temperature in enumerate(temperatures):
        grid = _enlarged(make_grid(images[index * num_samples:(index + 1) * num_samples],
                                   columns))
        save_png(grid, Path(folder) / f"{prefix}T{temperature:g}.png")
        grids[temperature] = grid
    return grids


def _enlarged(grid, min_width=256):
    """Small grids (e.g. of 8x8 digits) repeated pixel by pixel to at least `min_width` wide."""
    factor = max(1, -(-min_width // grid.shape[1]))
    return np.repeat(np.repeat(grid, factor, axis=0), factor, axis=1)


class MetricsHistory(keras.callbacks.Callback):
    """Per-epoch metrics in `<folder>/history.json` and the bits/dim curves in a PNG.

    Each record: `epoch` (1-based), `step`, `seconds` (since this process started training)
    and every scalar in the epoch logs (`bits_per_dim`, `val_bits_per_dim`,
    `test_bits_per_dim`, `learning_rate`, ...). A resumed run keeps the records of the epochs
    before the one it resumes in.
    """

    def __init__(self, folder, counter, resume_epoch=0, plot_name="bits_per_dim.png"):
        super().__init__()
        self.folder = Path(folder)
        self.counter = counter
        self.plot_name = plot_name
        previous = files.read_json(self.folder / "history.json", [])
        self.records = [record for record in previous if record["epoch"] <= resume_epoch]
        self.start = None

    def on_train_begin(self, logs=None):
        if self.start is None:
            self.start = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "step": self.counter.step,
                  "seconds": round(time.monotonic() - self.start, 3)}
        record.update({k: float(v) for k, v in (logs or {}).items() if np.ndim(v) == 0})
        record["learning_rate"] = float(np.asarray(self.model.optimizer.learning_rate))
        self.records.append(record)
        files.write_json(self.folder / "history.json", self.records)
        plot_bits_per_dim(self.records, self.folder / self.plot_name)


def plot_bits_per_dim(records, path):
    """Plots train / validation / test bits/dim against the epoch into a PNG (Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    epochs = [record["epoch"] for record in records]
    for key, label in (("bits_per_dim", "train"), ("val_bits_per_dim", "validation"),
                       ("test_bits_per_dim", "test")):
        values = [record.get(key, np.nan) for record in records]
        if not np.all(np.isnan(values)):
            axis.plot(epochs, values, marker=".", label=label)
    axis.set_xlabel("epoch")
    axis.set_ylabel("bits/dim")
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    with files.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)

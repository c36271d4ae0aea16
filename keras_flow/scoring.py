"""Per-image bits/dim of a trained flow, from the model or from its SavedModel export.

A *scorer* maps uint8 images `[N, H, W, C]` to per-image columns: `bits_per_dim` and the
per-level terms that add up to it (`keras_flow.models.objective.bits_per_dim_terms`, keys as
in the export: `level_1` .. `level_L`, `log_det`, `discretisation`). Images are dequantised
at the centre of each pixel's bin (`preprocess(images, n_bits, noise="center")`), as the
export's `bits_per_dim` endpoint does, so the score of an image is deterministic and the
three ways to compute it agree:

    scorer = scoring.load_scorer("runs/fashion-glow")      # run folder, .keras or export
    columns = scoring.score_images(scorer, uint8_images)   # {"bits_per_dim": [N], ...}

`load_scorer` takes a `train.py` run folder (its `model.keras`, else its `export/`), a
`.keras` file, or a SavedModel written by `keras_flow.export`, which is scored with
TensorFlow alone. `read_images` turns any `--dataset` source into uint8 images of the model's
size with one identifier per image (the split, the index in it, the file name for `folder:`
sources, the label). `python -m keras_flow.score` is the command line over these functions.
"""

import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import tensorflow as tf

from keras_flow import data as flow_data
from keras_flow import preprocessing
from keras_flow.saved_model import term_key

SPLITS = ("test", "train", "all")
BITS = "bits_per_dim"


def model_problem(path):
    """Why `path` holds no model `load_scorer` can read, or None (one line, with the fix)."""
    path = Path(path)
    if not path.exists():
        return f"model {str(path)!r} does not exist"
    if path.is_file():
        return None if path.suffix == ".keras" else (
            f"model file {str(path)!r} is not a .keras file; pass a run folder, a .keras file "
            "or a SavedModel folder written by keras_flow.export")
    if (path / "saved_model.pb").is_file() or (path / "model.keras").is_file() or (
            path / "export" / "saved_model.pb").is_file():
        return None
    return (f"{str(path)!r} holds no model: expected a train.py run folder (model.keras or "
            "export/), or a SavedModel folder (saved_model.pb) written by keras_flow.export; "
            "an unfinished run has only checkpoints/, so let it finish (rerun train.py)")


def load_scorer(path, batch_size=256):
    """A scorer for the model at `path` (see `model_problem`): a `ModelScorer` for a run
    folder's `model.keras` or a `.keras` file, an `ExportScorer` for a SavedModel (a run
    folder's `export/` when it has no `model.keras`).

    Raises:
        FileNotFoundError: when `path` holds no model (the message says what was expected).
    """
    problem = model_problem(path)
    if problem:
        raise FileNotFoundError(problem[0].upper() + problem[1:] + ".")
    path = Path(path)
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        keras_file = path / "model.keras"
        path = keras_file if keras_file.is_file() else path / "export"
    if path.suffix == ".keras":
        import keras

        import keras_flow  # noqa: F401  (registers the model classes for load_model)

        return ModelScorer(keras.saving.load_model(path, compile=False), batch_size)
    return ExportScorer(tf.saved_model.load(str(path)), batch_size)


class ModelScorer:
    """Scores uint8 images with a keras_flow model (`model.bits_per_dim_terms` at bin
    centres), in batches of `batch_size`, in one traced function."""

    def __init__(self, model, batch_size=256):
        from keras_flow.saved_model import n_bits_of

        model.check_built()
        self.model = model
        self.batch_size = _positive(batch_size, "batch_size")
        self.image_shape = tuple(model.image_shape)
        self.n_bits = n_bits_of(model.num_bins)
        self.num_classes = model.num_classes
        signature = [tf.TensorSpec((None,) + self.image_shape, tf.uint8)] + (
            [tf.TensorSpec([None], tf.int32)] if self.num_classes else [])
        self._terms = tf.function(
            lambda images, *labels: model.bits_per_dim_terms(
                preprocessing.preprocess(images, self.n_bits, noise="center"), *labels),
            input_signature=signature, autograph=False)

    def score_batch(self, images, labels=None):
        terms = self._terms(tf.constant(images, tf.uint8), *_labels(labels))
        return {term_key(name): np.asarray(value) for name, value in terms.items()}


class ExportScorer:
    """Scores uint8 images with a SavedModel of `keras_flow.export`: its `bits_per_dim_terms`
    endpoint, or, in an export made before that endpoint existed, `bits_per_dim` alone."""

    def __init__(self, loaded, batch_size=256):
        self.loaded = loaded
        self.batch_size = _positive(batch_size, "batch_size")
        metadata = {key: value.numpy() for key, value in loaded.metadata().items()}
        self.image_shape = tuple(int(d) for d in metadata["image_shape"])
        self.n_bits = int(metadata["n_bits"])
        self.num_classes = int(metadata["num_classes"])

    def score_batch(self, images, labels=None):
        inputs = [tf.constant(images, tf.uint8), *_labels(labels)]
        if hasattr(self.loaded, "bits_per_dim_terms"):
            terms = self.loaded.bits_per_dim_terms(*inputs)
            return {key: np.asarray(value) for key, value in terms.items()}
        return {"total": np.asarray(self.loaded.bits_per_dim(*inputs))}


def score_images(scorer, images, labels=None, progress=None):
    """Each image's bits/dim and its terms, in batches of `scorer.batch_size`.

    Args:
        scorer: from `load_scorer`, or `ModelScorer(model)` / `ExportScorer(loaded)`.
        images: uint8 `[N, H, W, C]` of the scorer's `image_shape`.
        labels: int `[N]` for a class-conditional model, else None.
        progress: called with `(done, total)` after every batch (e.g. a progress bar).

    Returns:
        dict of float64 NumPy `[N]` arrays: `bits_per_dim` first, then the terms
        (`level_1` .. `level_L`, `log_det`, `discretisation`) when the scorer has them.
    """
    images = np.asarray(images)
    check_images(images, scorer.image_shape)
    if bool(scorer.num_classes) != (labels is not None):
        raise ValueError(
            "This model is class-conditional: pass one label per image." if scorer.num_classes
            else "This model is not class-conditional: pass no labels.")
    parts = []
    for start in range(0, len(images), scorer.batch_size):
        stop = min(start + scorer.batch_size, len(images))
        parts.append(scorer.score_batch(
            images[start:stop], None if labels is None else np.asarray(labels)[start:stop]))
        if progress is not None:
            progress(stop, len(images))
    columns = {key: np.concatenate([part[key] for part in parts]).astype(np.float64)
               for key in parts[0]}
    ordered = {BITS: columns.pop("total")}
    levels = sorted((key for key in columns if key.startswith("level_")),
                    key=lambda key: int(key.split("_")[1]))
    ordered.update((key, columns.pop(key)) for key in levels)
    ordered.update(columns)
    return ordered


def check_images(images, image_shape):
    """Raises `ValueError` unless `images` are uint8 `[N, *image_shape]` with N >= 1."""
    shape = tuple(images.shape)
    if len(shape) != 4 or shape[1:] != tuple(image_shape):
        raise ValueError(
            f"The model takes images of {_size(image_shape)} (height x width x channels); "
            f"received {_size(shape[1:]) if len(shape) == 4 else f'shape {shape}'}. "
            + _fix_hint(shape[1:] if len(shape) == 4 else None, image_shape))
    if images.dtype != np.uint8:
        raise ValueError(f"Images must be uint8 (0..255); received {images.dtype}.")
    if not shape[0]:
        raise ValueError("Received no images to score.")


def _fix_hint(got, want):
    if got is not None and len(got) == 3 and got[2] != want[2]:
        return (f"Convert the images to {want[2]} channel(s) (grey <-> RGB), or score them "
                "with a model trained on such images.")
    return ("Resize them (--image-size, image_size=) or pad them (--fit pad) to the model's "
            "size, as its training data were.")


def _size(shape):
    return "x".join(str(d) for d in shape)


def _positive(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer; received {value!r}.")
    return value


def _labels(labels):
    return [] if labels is None else [tf.constant(labels, tf.int32)]


# --- images from a --dataset source ----------------------------------------------------------

@dataclasses.dataclass
class Images:
    """uint8 images `[N, H, W, C]` and one identifier per image.

    Attributes:
        images: uint8 NumPy array.
        ids: dict of `[N]` columns naming each image: `split`, `index` (the position in that
            split's fixed order, as `keras_flow.data.load(...).raw_images(split)` gives it),
            `file` (folder sources, relative to the folder) and `label` (labelled sources).
        labels: int32 `[N]` or None.
    """

    images: np.ndarray
    ids: dict
    labels: np.ndarray | None


def read_images(dataset, image_shape, split="test", image_size=None, fit="pad",
                on_bad_file="skip", data_dir=None):
    """The uint8 images of a `--dataset` source, fitted to a model's `image_shape`.

    Args:
        dataset: any `keras_flow.data.load` source (`digits`, `folder:PATH`, `npz:PATH`,
            `idx:DIR`, a TFDS name).
        image_shape: the model's `(height, width, channels)`.
        split: `"test"`: the source's test split, or every image when it has none (a folder,
            an npz without `x_test`); `"train"`: its training images; `"all"`: both.
        image_size, fit, on_bad_file, data_dir: as in `keras_flow.data.load`. With
            `fit="pad"` (`"resize"`) images smaller than the model's size are zero-padded
            (resized) up to it, as `train.py` pads 28x28 Fashion-MNIST to 32x32.

    Raises:
        ValueError, FileNotFoundError: `keras_flow.data.load`'s errors, and a `ValueError`
            naming both sizes when the fitted images do not have the model's shape.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; received {split!r}.")
    height, width = image_shape[:2]
    # Pad (or resize) up to the next multiple of the largest power of two dividing the model's
    # height and width: smaller images reach the model's size, as in training.
    levels = min(_twos(height), _twos(width))
    loaded = flow_data.load(dataset, batch_size=1, levels=levels, image_size=image_size,
                            fit=fit, validation_fraction=0.0, test_fraction=0.0,
                            on_bad_file=on_bad_file, data_dir=data_dir)
    if tuple(loaded.image_shape) != tuple(image_shape):
        raise ValueError(
            f"The images of {dataset!r} are {_size(loaded.image_shape)} after fitting "
            f"(fit={fit!r}); the model takes {_size(image_shape)}. "
            + _fix_hint(loaded.image_shape, image_shape))
    splits = {"test": ["test"] if loaded.num_test else ["train"], "train": ["train"],
              "all": ["train", "test"] if loaded.num_test else ["train"]}[split]
    images, labels, ids = [], [], {"split": [], "index": []}
    for name in splits:
        part_images, part_labels = loaded.raw_examples(name)
        images.append(part_images)
        labels.append(part_labels)
        ids["split"] += [name] * len(part_images)
        ids["index"] += list(range(len(part_images)))
    labels = None if loaded.class_names is None else np.concatenate(labels)
    if labels is not None:
        ids["label"] = labels
    names = _folder_files(dataset, loaded)
    if names is not None:
        ids["file"] = names
    return Images(np.concatenate(images), {key: np.asarray(value) for key, value in ids.items()},
                  labels)


def _twos(side):
    """The exponent of the largest power of two dividing `side`."""
    return (side & -side).bit_length() - 1


def _folder_files(dataset, loaded):
    """File names (relative to the folder) in `raw_images("train")`'s order for a `folder:`
    source with no unreadable files; None for other sources (or when files were skipped)."""
    if not dataset.startswith("folder:") or loaded.skipped_files:
        return None
    root = Path(dataset.partition(":")[2]).expanduser()
    files = sorted(f for f in root.rglob("*")
                   if f.suffix.lower() in flow_data.IMAGE_SUFFIXES and f.is_file())
    # keras_flow.data shuffles in-memory sources once, with its fixed seed: the same order.
    return [os.fspath(files[i].relative_to(root)) for i in flow_data.source_order(len(files))]


def summary(columns):
    """`{column: (mean, std, min, median, max)}` of score columns (NumPy arrays)."""
    return {key: (float(np.mean(v)), float(np.std(v)), float(np.min(v)), float(np.median(v)),
                  float(np.max(v))) for key, v in columns.items() if np.asarray(v).dtype.kind == "f"
            and math.isfinite(float(np.mean(v)))}

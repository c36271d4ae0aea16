"""Every image source -> one tf.data pipeline for the flows.

One concept, read top to bottom (the sources, then the pipeline they share), so one module
despite its length.

Sources, named by one string (the same strings as the CLI flag `--dataset`):

- `"digits"` (default): scikit-learn's bundled 8x8 handwritten digits (1,797
  images, 10 classes, no download), values 0..16 scaled to 0..255. Fixed test
  set: the last 297 images of a seed-0 permutation.
- `"folder:PATH"`: PNG/JPEG files under PATH (recursively), read with Pillow.
  One sub-folder per class gives labels (classes = sorted folder names).
- `"npz:PATH"`: a NumPy `.npz` with `x` of shape (N, H, W) or (N, H, W, C),
  optional `y`, and optional `x_test` / `y_test`.
- `"idx:DIR"`: MNIST-format IDX files as MNIST and Fashion-MNIST ship them:
  `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`, plain or `.gz`.
- any other name: a TensorFlow Datasets name (`mnist`, `fashion_mnist`,
  `cifar10`, `celeb_a`, ...), downloaded by `tfds.load` on first use, with its
  train and test splits (validation when there is no test split). `celeb_a`
  gets RealNVP's centre crop [40:188, 15:163] before any resize.

Pipeline, the same for every source:

1. Examples in a fixed order (in-memory sources: a seed-0 permutation). Held
   out from the end of the training examples: the test set when the source
   has none (`test_fraction`), then the validation set (`validation_fraction`).
   Both stay fixed whatever `seed` is.
2. uint8 stage: optional resize to `image_size`, then fitting height and width
   to multiples of `2**levels` (`fit`: zero-pad, resize or raise); cached in
   memory when the split fits.
3. Train: seeded shuffle (reshuffled every epoch), batch, optional
   augmentation of the uint8 images (`augment`, below), then
   `keras_flow.preprocessing.preprocess` with fresh uniform noise every epoch.
   Validation and test: `preprocess` with one fixed noise draw per example
   (stateless, seeded by the example's index), then batch.
4. Prefetch.

Augmentation (`augment`, training batches only; validation, test and
`init_batch` images are never augmented), each image drawn independently and
reproducibly from `seed`:

- `"none"` (default).
- `"flip"`: left-right flip with probability 1/2 (RealNVP: its code flips
  CelebA and LSUN, its paper CIFAR-10 too).
- `"shift"`: openai/glow's CIFAR-10 and MNIST augmentation (`--dal 1`, Keras's
  `ImageDataGenerator(width_shift_range=0.1, height_shift_range=0.1)`): a
  translation by a uniform real offset in [-0.1, 0.1] x height rows and,
  independently, x width columns, resampled bilinearly with the border pixels
  repeated outside the image, then floored back to uint8.

Elements are float32 images `[batch_size, height, width, channels]` in
[-0.5, 0.5), or with `with_labels=True` dicts
`{"image": images, "label": int32 [batch_size]}` (a dict, so that Keras does
not unpack it as `(x, y)`).

Example:

```python
data = keras_flow.data.load("mnist", batch_size=64, levels=3)  # 28x28 -> 32x32
model.initialize(data.init_batch(256))
model.fit(data.train, validation_data=data.validation, epochs=10)
model.evaluate(data.test)
```
"""

import collections
import dataclasses
import difflib
import gzip
import math
import numbers
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image

from keras_flow import preprocessing

FIT_MODES = ("pad", "resize", "error")
BAD_FILE_MODES = ("skip", "error")
CACHE_MODES = ("auto", True, False)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ACCEPTED_FORMS = (
    "'digits', 'folder:PATH', 'npz:PATH', 'idx:DIR', or a TensorFlow Datasets "
    "name such as 'mnist', 'fashion_mnist', 'cifar10' or 'celeb_a'"
)

_PATH_KINDS = ("folder", "npz", "idx")
_TFDS_SPEC = re.compile(r"[a-z0-9_]+(/[\w.-]+)?(:[\d.*]+)?")  # name[/config][:version]
_SPLIT_SEED = 0  # the fixed permutation of in-memory sources
_DIGITS_TEST_SIZE = 297
_CENTER_CROPS = {"celeb_a": (40, 188, 15, 163)}  # top, bottom, left, right
_GREY_MODES = ("1", "L", "LA")
_BAD_IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_SHUFFLE_BUFFER = 10_000
_AUTO_CACHE_BYTES = 2 * 2**30
_EVAL_NOISE_STREAMS = {"validation": 1, "test": 2}
_SPLITS = ("train", "validation", "test")
_AUTOTUNE = tf.data.AUTOTUNE
AUGMENTATIONS = ("none", "flip", "shift")
SHIFT_RANGE = 0.1  # openai/glow's width_shift_range = height_shift_range
_AUGMENT_STREAM = 1  # folded into a batch's noise seed for its augmentation seed


@dataclasses.dataclass(frozen=True)
class FlowData:
    """The batched splits of one image source, ready for `model.fit`.

    Attributes:
        train: `tf.data.Dataset` of training batches, reshuffled with fresh
            dequantisation noise every epoch. Drops the last partial batch
            when there is at least one full batch, so batch shapes are static.
        validation: `tf.data.Dataset` held out from the training data, with
            fixed noise; `None` when `validation_fraction=0`.
        test: `tf.data.Dataset` of the test set, with fixed noise; `None` when
            the source has no test split and `test_fraction=0`.
        image_shape: `(height, width, channels)` after resizing and fitting.
        num_classes: number of classes, `None` for unlabelled sources.
        class_names: class names in label order, `None` for unlabelled sources.
        num_train, num_validation, num_test: number of examples per split.
        name: the dataset string given to `load`.
        n_bits: bits kept per channel.
        skipped_files: unreadable image files skipped (folder source).
    """

    train: tf.data.Dataset = dataclasses.field(repr=False)
    validation: tf.data.Dataset | None = dataclasses.field(repr=False)
    test: tf.data.Dataset | None = dataclasses.field(repr=False)
    image_shape: tuple
    num_classes: int | None
    class_names: tuple | None
    num_train: int
    num_validation: int
    num_test: int
    name: str
    n_bits: int
    skipped_files: int
    _uint8: dict = dataclasses.field(repr=False)  # split -> unbatched uint8 examples, if any
    _seed: int = dataclasses.field(repr=False)

    def init_batch(self, n):
        """Returns `n` preprocessed training images for Actnorm's data-dependent init.

        The images are drawn by a shuffle seeded with `seed` and carry uniform
        dequantisation noise, as in Glow's initialisation pass.

        Args:
            n: number of images, 1..num_train.

        Returns:
            float32 NumPy array `[n, height, width, channels]`.
        """
        if not 1 <= n <= self.num_train:
            raise ValueError(
                f"init_batch needs 1 <= n <= num_train={self.num_train}, received n={n}."
            )
        examples = _shuffled(self._uint8["train"], self.num_train, self._seed)
        images = next(iter(examples.batch(n)))["image"]
        return preprocessing.preprocess(images, self.n_bits, seed=self._seed).numpy()

    def raw_images(self, split="test", count=None):
        """Returns the uint8 images of a split, resized and fitted, before any noise.

        Args:
            split: `"train"`, `"validation"` or `"test"`.
            count: number of images from the start of the split's fixed order;
                `None` for all.

        Returns:
            uint8 NumPy array `[count, height, width, channels]`.
        """
        return self.raw_examples(split, count)[0]

    def raw_examples(self, split="test", count=None):
        """`(images, labels)`: `raw_images(split, count)` and their int32 labels (None for a
        source without labels), in the same order."""
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {_SPLITS}, received split={split!r}.")
        if split not in self._uint8:
            raise ValueError(f"{self.name!r} has no {split} split.")
        examples = self._uint8[split].take(-1 if count is None else count)
        batches = list(examples.batch(1024).as_numpy_iterator())
        if not batches:
            return np.zeros((0, *self.image_shape), np.uint8), None
        labels = None if "label" not in batches[0] else np.concatenate(
            [batch["label"] for batch in batches]).astype(np.int32)
        return np.concatenate([batch["image"] for batch in batches]), labels


def load(
    dataset="digits",
    *,
    batch_size=64,
    n_bits=8,
    levels=None,
    image_size=None,
    fit="pad",
    validation_fraction=0.1,
    test_fraction=0.1,
    with_labels=False,
    seed=0,
    on_bad_file="skip",
    data_dir=None,
    cache="auto",
    augment="none",
):
    """Loads an image source into batched, preprocessed `tf.data` pipelines.

    Args:
        dataset: `"digits"`, `"folder:PATH"`, `"npz:PATH"`, `"idx:DIR"` or a
            TensorFlow Datasets name (see the module docstring).
        batch_size: positive integer.
        n_bits: bits kept per channel, 1..8 (`preprocessing.preprocess`).
        levels: number of levels of the multi-scale flow: height and width must
            divide by `2**levels`. `None` for no constraint.
        image_size: `None`, an int, or `(height, width)`: resize every image
            (bilinear with antialiasing) before fitting.
        fit: what to do when the size does not divide by `2**levels`:
            `"pad"` zero-pads symmetrically up to the next multiple (as Glow
            pads MNIST 28x28 to 32x32), `"resize"` resizes up to it, `"error"`
            raises. Images are never cropped.
        validation_fraction: fraction of the training data held out as the
            validation set, in [0, 1); 0 gives `validation=None`.
        test_fraction: fraction held out as the test set, in [0, 1), only for
            sources without their own test split.
        with_labels: yield `{"image", "label"}` dicts instead of images.
        seed: seeds the training shuffle, the training noise and `init_batch`
            (`None`: not reproducible). The held-out splits and their noise
            do not depend on it.
        on_bad_file: folder source: `"skip"` unreadable files (counted in
            `skipped_files`, with a warning) or `"error"`.
        data_dir: TensorFlow Datasets data directory.
        cache: `"auto"` caches a split's uint8 images in memory when they take
            at most 2 GiB; `True` always, `False` never.
        augment: `"none"`, `"flip"` or `"shift"` (see the module docstring):
            applied to training batches only.

    Returns:
        A `FlowData`.

    Raises:
        ValueError: for invalid options, unknown dataset strings, invalid
            data, or labels asked of a source without labels.
        FileNotFoundError: for a missing folder or file.
    """
    kind, argument = parse_dataset_spec(dataset)
    image_size = _check_options(
        batch_size, n_bits, levels, image_size, fit, validation_fraction,
        test_fraction, on_bad_file, cache,
    )
    _check_choice("augment", augment, AUGMENTATIONS)
    source = _read_source(kind, argument, image_size, on_bad_file, data_dir)
    if with_labels and source.class_names is None:
        raise ValueError(
            f"{dataset!r} has no labels, so with_labels=True cannot work. Use "
            "with_labels=False (CLI: drop --conditional), or add labels (folder: one "
            "sub-folder per class; npz: an array y)."
        )
    resize, pad, image_shape = _size_plan(source.image_shape, image_size, levels, fit, dataset)
    spans = _split(source, validation_fraction, test_fraction)
    sizes = {split: span.size for split, span in spans.items()}
    uint8 = {split: _fitted(span.dataset(), resize, pad) for split, span in spans.items()}
    batches = {}
    for split, examples in uint8.items():
        examples = _cached(examples, sizes[split], image_shape, cache)
        if split == "train":
            batches[split] = _train_batches(
                examples, sizes[split], batch_size, n_bits, seed, with_labels, augment
            )
        else:
            batches[split] = _eval_batches(examples, split, batch_size, n_bits, with_labels)
    return FlowData(
        train=batches["train"],
        validation=batches.get("validation"),
        test=batches.get("test"),
        image_shape=image_shape,
        num_classes=None if source.class_names is None else len(source.class_names),
        class_names=source.class_names,
        num_train=sizes["train"],
        num_validation=sizes.get("validation", 0),
        num_test=sizes.get("test", 0),
        name=dataset,
        n_bits=n_bits,
        skipped_files=source.skipped_files,
        _uint8=uint8,
        _seed=seed,
    )


def parse_dataset_spec(spec):
    """Splits a dataset string into `(kind, argument)` without loading anything.

    Args:
        spec: `"digits"`, `"folder:PATH"`, `"npz:PATH"`, `"idx:DIR"` or a
            TensorFlow Datasets name (optionally `name/config:version`).

    Returns:
        `("digits", None)`, `("folder", PATH)`, `("npz", PATH)`,
        `("idx", DIR)` or `("tfds", NAME)`.

    Raises:
        ValueError: for an unknown prefix or name, or a missing path.
    """
    if not isinstance(spec, str):
        raise ValueError(f"The dataset must be a string ({ACCEPTED_FORMS}), received {spec!r}.")
    if spec == "digits":
        return "digits", None
    prefix, colon, argument = spec.partition(":")
    if colon and prefix in _PATH_KINDS:
        if not argument:
            raise ValueError(f"The dataset {spec!r} needs a path after '{prefix}:'.")
        return prefix, argument
    tfds_names = _tfds_names()
    if _TFDS_SPEC.fullmatch(spec) and _base_name(spec) in tfds_names:
        return "tfds", spec
    suggestions = difflib.get_close_matches(_base_name(spec), ["digits", *tfds_names], n=3)
    hint = f" Did you mean {' or '.join(map(repr, suggestions))}?" if suggestions else ""
    raise ValueError(f"Unknown dataset {spec!r}. Accepted forms: {ACCEPTED_FORMS}.{hint}")


# --- Options -----------------------------------------------------------------


def _check_options(
    batch_size, n_bits, levels, image_size, fit, validation_fraction,
    test_fraction, on_bad_file, cache,
):
    """Validates `load`'s options; returns `image_size` as `(height, width)` or None."""
    if not isinstance(batch_size, numbers.Integral) or batch_size <= 0:
        raise ValueError(
            f"batch_size must be a positive integer, received batch_size={batch_size!r}."
        )
    preprocessing.num_bins(n_bits)
    if levels is not None and (not isinstance(levels, numbers.Integral) or levels < 0):
        raise ValueError(f"levels must be None or an integer >= 0, received levels={levels!r}.")
    _check_choice("fit", fit, FIT_MODES)
    _check_choice("on_bad_file", on_bad_file, BAD_FILE_MODES)
    _check_choice("cache", cache, CACHE_MODES)
    fractions = {"validation_fraction": validation_fraction, "test_fraction": test_fraction}
    for name, value in fractions.items():
        if not (isinstance(value, numbers.Real) and 0 <= value < 1):
            raise ValueError(f"{name} must be in [0, 1), received {name}={value!r}.")
    return _as_size(image_size)


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, received {name}={value!r}.")


def _as_size(image_size):
    if image_size is None:
        return None
    if isinstance(image_size, numbers.Integral):
        image_size = (image_size, image_size)
    size = tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, numbers.Integral) and s > 0 for s in size):
        raise ValueError(
            "image_size must be None, a positive int or (height, width), "
            f"received image_size={image_size!r}."
        )
    return tuple(int(s) for s in size)


# --- Sources -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Pool:
    """Examples in a fixed order: dicts of "image" (uint8 [H, W, C]) and, if labelled, "label"."""

    dataset: tf.data.Dataset
    size: int


@dataclasses.dataclass(frozen=True)
class _Span:
    """The examples `start:stop` of a pool."""

    pool: _Pool
    start: int
    stop: int

    @property
    def size(self):
        return self.stop - self.start

    def dataset(self):
        examples = self.pool.dataset.skip(self.start) if self.start else self.pool.dataset
        return examples.take(self.size)


@dataclasses.dataclass(frozen=True)
class _Source:
    train: _Pool
    test: _Pool | None  # None: held out from the end of `train`
    image_shape: tuple  # (H, W, C); H and W are None when sizes vary
    class_names: tuple | None  # None: unlabelled
    skipped_files: int = 0


def _read_source(kind, argument, image_size, on_bad_file, data_dir):
    if kind == "digits":
        return _digits_source()
    if kind == "folder":
        return _folder_source(argument, image_size, on_bad_file)
    if kind == "npz":
        return _npz_source(argument)
    if kind == "idx":
        return _idx_source(argument)
    return _tfds_source(argument, data_dir)


def _digits_source():
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., np.newaxis]
    images, labels = _permuted(images, digits.target.astype(np.int32))
    n_train = len(images) - _DIGITS_TEST_SIZE
    return _array_source(
        images[:n_train], labels[:n_train], images[n_train:], labels[n_train:],
        class_names=tuple(str(digit) for digit in range(10)),
    )


def _folder_source(path, image_size, on_bad_file):
    root = Path(path).expanduser()
    if not root.exists():
        raise FileNotFoundError(f"Image folder not found: {root}")
    if not root.is_dir():
        raise NotADirectoryError(f"Not a folder: {root} ('folder:PATH' needs a folder of images).")
    files = sorted(f for f in root.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
    if not files:
        raise ValueError(f"No {'/'.join(IMAGE_SUFFIXES)} images found under {root}.")
    images, read, bad = [], [], []
    for file in files:
        try:
            images.append(_read_image(file))
            read.append(file)
        except _BAD_IMAGE_ERRORS as error:
            if on_bad_file == "error":
                raise ValueError(
                    f"Cannot read image {file}: {error}. Remove the file or pass "
                    "on_bad_file='skip'."
                ) from error
            bad.append(file)
    if bad:
        warnings.warn(
            f"Skipped {len(bad)} unreadable image file(s) under {root}, e.g. {bad[0]}.",
            stacklevel=4,
        )
    if not images:
        raise ValueError(f"None of the {len(files)} image files under {root} could be read.")
    class_names, labels = _folder_labels(root, read)
    return _array_source(
        _stack_images(images, image_size, root), labels,
        class_names=class_names, skipped_files=len(bad),
    )


def _read_image(file):
    """uint8 [H, W, 1] for grey images, [H, W, 3] for everything else."""
    with Image.open(file) as image:
        array = np.asarray(image.convert("L" if image.mode in _GREY_MODES else "RGB"))
    return array[..., np.newaxis] if array.ndim == 2 else array


def _stack_images(images, image_size, root):
    """Stacks images, promoting grey to RGB in mixed folders and resizing to image_size."""
    channels = max(image.shape[-1] for image in images)
    images = [np.repeat(image, channels // image.shape[-1], axis=-1) for image in images]
    if image_size is not None:
        return np.stack([
            image if image.shape[:2] == image_size else _resize(image, image_size).numpy()
            for image in images
        ])
    sizes = collections.Counter(image.shape[:2] for image in images)
    if len(sizes) > 1:
        found = ", ".join(f"{h}x{w} in {n} file(s)" for (h, w), n in sorted(sizes.items()))
        raise ValueError(
            f"The images under {root} have different sizes: {found}. Pass "
            "image_size=(height, width) (CLI: --image-size) to resize them all."
        )
    return np.stack(images)


def _folder_labels(root, files):
    """Labels from the top-level sub-folder of each file; (None, None) if any file is at the top."""
    if any(file.parent == root for file in files):
        return None, None
    classes = [file.relative_to(root).parts[0] for file in files]
    class_names = tuple(sorted(set(classes)))
    index = {name: label for label, name in enumerate(class_names)}
    return class_names, np.array([index[name] for name in classes], np.int32)


def _npz_source(path):
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"npz file not found: {file}")
    archive = np.load(file, allow_pickle=False)
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"{file} is not an .npz archive (write one with np.savez).")
    with archive:
        if "x" not in archive:
            raise ValueError(
                f"{file} has no array 'x' (found: {sorted(archive.files)}); expected x of "
                "shape (N, H, W[, C]) and optional y, x_test, y_test."
            )
        arrays = {key: archive[key] for key in ("x", "y", "x_test", "y_test") if key in archive}
    return _arrays_source(arrays, str(file))


def _idx_source(path):
    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"IDX folder not found: {root}")
    names = {
        "x": ("train", "images", 3),
        "y": ("train", "labels", 1),
        "x_test": ("t10k", "images", 3),
        "y_test": ("t10k", "labels", 1),
    }
    files = {key: _find_idx(root, *name) for key, name in names.items()}
    if files["x"] is None:
        raise FileNotFoundError(
            f"No train-images-idx3-ubyte[.gz] in {root}; expected the MNIST file names "
            "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
            "t10k-labels-idx1-ubyte (plain or .gz)."
        )
    return _arrays_source({k: _read_idx(f) for k, f in files.items() if f is not None}, str(root))


def _find_idx(root, split, kind, ndim):
    for stem in (f"{split}-{kind}-idx{ndim}-ubyte", f"{split}-{kind}.idx{ndim}-ubyte"):
        for suffix in ("", ".gz"):
            if (root / (stem + suffix)).is_file():
                return root / (stem + suffix)
    return None


def _read_idx(file):
    """Parses an IDX file: magic (0, 0, type code, ndim), ndim big-endian uint32 sizes, data."""
    with (gzip.open if file.suffix == ".gz" else open)(file, "rb") as stream:
        data = stream.read()
    if len(data) < 4 or data[:2] != b"\0\0" or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{file} is not an IDX file: bad magic number 0x{data[:4].hex()} (expected "
            "0x0000, a type code 08-0e and the number of dimensions, e.g. 0x00000803)."
        )
    header = 4 + 4 * data[3]
    shape = struct.unpack(f">{data[3]}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    if len(data) - header != math.prod(shape) * dtype.itemsize:
        raise ValueError(
            f"{file}: shape {shape} needs {math.prod(shape) * dtype.itemsize} bytes of "
            f"data, found {len(data) - header}."
        )
    return np.frombuffer(data, dtype, offset=header).reshape(shape)


def _tfds_source(name, data_dir):
    import tensorflow_datasets as tfds

    train, info = tfds.load(name, split="train", data_dir=data_dir, with_info=True)
    features = info.features
    if "image" not in features:
        raise ValueError(f"TFDS dataset {name!r} has no 'image' feature: {list(features)}.")
    label = features["label"] if "label" in features else None
    class_names = tuple(label.names) if isinstance(label, tfds.features.ClassLabel) else None
    crop = _CENTER_CROPS.get(info.name)
    height, width, channels = features["image"].shape
    if crop is not None:
        height, width = crop[1] - crop[0], crop[3] - crop[2]
    # info.splits is empty when the metadata is missing (e.g. under tfds.testing.mock_data).
    split_names = set(info.splits.keys()) or {"train", "test"}
    test_split = next((s for s in ("test", "validation") if s in split_names), None)

    def pool(split, examples):
        size = int(examples.cardinality())
        size = size if size >= 0 else info.splits[split].num_examples
        select = _tfds_example_fn(crop, labelled=class_names is not None)
        return _Pool(examples.map(select, num_parallel_calls=_AUTOTUNE), size)

    test = None
    if test_split is not None:
        test = pool(test_split, tfds.load(name, split=test_split, data_dir=data_dir))
    return _Source(pool("train", train), test, (height, width, channels), class_names)


def _tfds_example_fn(crop, labelled):
    def select(features):
        image = features["image"]
        if crop is not None:
            top, bottom, left, right = crop
            image = image[top:bottom, left:right]
        example = {"image": image}
        if labelled:
            example["label"] = tf.cast(features["label"], tf.int32)
        return example

    return select


def _tfds_names():
    """Registered TFDS builder names (no network)."""
    import tensorflow_datasets as tfds

    return set(tfds.list_builders(with_community_datasets=False))


def _base_name(spec):
    return spec.split(":")[0].split("/")[0]


# --- Arrays ------------------------------------------------------------------


def _arrays_source(arrays, where):
    """A source from arrays named x, y, x_test, y_test (.npz and IDX sources)."""
    if "y_test" in arrays and "x_test" not in arrays:
        raise ValueError(f"{where}: y_test given without x_test.")
    if "x_test" in arrays and ("y" in arrays) != ("y_test" in arrays):
        raise ValueError(f"{where}: give labels for both splits (y and y_test) or for neither.")
    images = _as_images(arrays["x"], f"{where}: x")
    labels = _as_labels(arrays.get("y"), len(images), f"{where}: y")
    test_images = arrays.get("x_test")
    if test_images is not None:
        test_images = _as_images(test_images, f"{where}: x_test")
    test_count = 0 if test_images is None else len(test_images)
    test_labels = _as_labels(arrays.get("y_test"), test_count, f"{where}: y_test")
    return _array_source(images, labels, test_images, test_labels)


def _array_source(images, labels, test_images=None, test_labels=None, class_names=None,
                  skipped_files=0):
    """A source from in-memory arrays; the training examples get the fixed permutation."""
    if test_images is not None and test_images.shape[1:] != images.shape[1:]:
        raise ValueError(
            f"Test images have shape {test_images.shape[1:]}, training images "
            f"{images.shape[1:]}; both splits need the same (H, W, C)."
        )
    if labels is not None and class_names is None:
        top = max(labels.max(), -1 if test_labels is None else test_labels.max())
        class_names = tuple(str(label) for label in range(top + 1))
    images, labels = _permuted(images, labels)
    test = None if test_images is None else _array_pool(test_images, test_labels)
    return _Source(_array_pool(images, labels), test, images.shape[1:], class_names, skipped_files)


def _array_pool(images, labels):
    examples = {"image": images} if labels is None else {"image": images, "label": labels}
    return _Pool(tf.data.Dataset.from_tensor_slices(examples), len(images))


def source_order(length):
    """The fixed order in which an in-memory source of `length` examples (arrays, `npz:`,
    `idx:`, `folder:`) is shuffled once before its split: position i holds example
    `source_order(length)[i]`."""
    return np.random.default_rng(_SPLIT_SEED).permutation(length)


def _permuted(images, labels):
    order = source_order(len(images))
    return images[order], None if labels is None else labels[order]


def _as_images(array, what):
    """Checks shape (N, H, W[, C]) and pixel values; returns uint8 (N, H, W, C)."""
    array = np.asarray(array)
    if array.ndim == 3:
        array = array[..., np.newaxis]
    if array.ndim != 4 or 0 in array.shape:
        raise ValueError(
            f"{what} must have shape (N, H, W) or (N, H, W, C) with N > 0, received "
            f"shape {array.shape}."
        )
    if array.dtype != np.uint8:
        hint = "Pixel values must be 0..255: scale [0, 1] floats by 255 and round."
        _check_integers(array, 0, 255, what, hint)
    return array.astype(np.uint8, copy=False)


def _as_labels(labels, count, what):
    """Checks class indices of shape (count,) or (count, 1); returns int32 (count,) or None."""
    if labels is None:
        return None
    labels = np.asarray(labels)
    if labels.size != count or labels.ndim not in (1, 2):
        raise ValueError(
            f"{what} must have shape ({count},) to match the images, received {labels.shape}."
        )
    _check_integers(labels, 0, np.iinfo(np.int32).max, what, "Labels must be class indices.")
    return labels.reshape(count).astype(np.int32)


def _check_integers(array, low, high, what, hint):
    """Raises unless every value is a finite integer in low..high."""
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{what} has dtype {array.dtype}; expected integers in {low}..{high}.")
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(array) & (array == np.round(array)) & (array >= low) & (array <= high)
    invalid = array.size - int(np.count_nonzero(valid))
    if invalid:
        non_finite = array.size - int(np.count_nonzero(np.isfinite(array)))
        raise ValueError(
            f"{what}: {invalid} of {array.size} values are not integers in {low}..{high} "
            f"({non_finite} NaN/Inf). {hint}"
        )


# --- Pipeline ----------------------------------------------------------------


def _split(source, validation_fraction, test_fraction):
    """Spans of the splits that exist: test and validation are cut off the end of train.

    Training reads the head of the pool (no skip); the small held-out tails are
    cached after their first pass.
    """
    spans = {}
    train_stop = source.train.size
    if source.test is not None:
        spans["test"] = _Span(source.test, 0, source.test.size)
    elif test_fraction > 0:
        train_stop -= _holdout_size(train_stop, test_fraction, "test_fraction")
        spans["test"] = _Span(source.train, train_stop, source.train.size)
    if validation_fraction > 0:
        validation_size = _holdout_size(train_stop, validation_fraction, "validation_fraction")
        train_stop -= validation_size
        spans["validation"] = _Span(source.train, train_stop, train_stop + validation_size)
    spans["train"] = _Span(source.train, 0, train_stop)
    return spans


def _holdout_size(total, fraction, name):
    """round(total * fraction), at least 1, leaving at least one training example."""
    size = max(1, round(total * fraction))
    if size >= total:
        raise ValueError(
            f"{name}={fraction} of {total} examples leaves no training examples; "
            f"lower {name} or add data."
        )
    return size


def _size_plan(source_shape, image_size, levels, fit, name):
    """Returns (resize_to, pad_to, image_shape); resize_to / pad_to are None when not needed."""
    height, width, channels = source_shape
    size = image_size or (height, width)
    if None in size:
        raise ValueError(
            f"The images of {name!r} vary in size. Pass image_size=(height, width) "
            "(CLI: --image-size) to resize them all."
        )
    multiple = 2 ** (levels or 0)
    fitted = tuple(-(-side // multiple) * multiple for side in size)
    if fitted != size and fit == "error":
        raise ValueError(
            f"Images of {size[0]}x{size[1]} do not divide by 2**levels = {multiple} "
            f"(levels={levels}). Use fit='pad' to zero-pad or fit='resize' to resize "
            f"to {fitted[0]}x{fitted[1]}, or pass an image_size divisible by {multiple}."
        )
    resize_to = fitted if fit == "resize" else size
    return (
        None if resize_to == (height, width) else resize_to,
        None if resize_to == fitted else fitted,
        (*fitted, channels),
    )


def _fitted(examples, resize_to, pad_to):
    """uint8 examples resized and zero-padded to the planned size."""
    if resize_to is None and pad_to is None:
        return examples

    def fit_image(example):
        image = example["image"]
        if resize_to is not None:
            image = _resize(image, resize_to)
        if pad_to is not None:
            image = _pad(image, pad_to)
        return {**example, "image": image}

    return examples.map(fit_image, num_parallel_calls=_AUTOTUNE)


def _resize(image, size):
    """Bilinear resize with antialiasing (area-like when shrinking), back to uint8."""
    resized = tf.image.resize(image, size, method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def _pad(image, size):
    """Zero-pads symmetrically (an odd extra row / column goes to the bottom / right)."""
    top = (size[0] - image.shape[0]) // 2
    left = (size[1] - image.shape[1]) // 2
    return tf.image.pad_to_bounding_box(image, top, left, *size)


def _cached(examples, size, image_shape, cache):
    if cache is True or (cache == "auto" and size * math.prod(image_shape) <= _AUTO_CACHE_BYTES):
        return examples.cache()
    return examples


def _shuffled(examples, size, seed):
    return examples.shuffle(min(size, _SHUFFLE_BUFFER), seed=seed, reshuffle_each_iteration=True)


def _train_batches(examples, size, batch_size, n_bits, seed, with_labels, augment="none"):
    """Shuffled batches with fresh uniform noise (and augmentation) every epoch, reproducible
    from `seed`."""
    batches = _shuffled(examples, size, seed).batch(batch_size, drop_remainder=size >= batch_size)
    noise_seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)

    def dequantise(batch, noise_seed):
        images = batch["image"]
        if augment != "none":
            augment_seed = tf.random.experimental.stateless_fold_in(noise_seed, _AUGMENT_STREAM)
            images = augment_images(images, augment, augment_seed)
        images = preprocessing.preprocess(images, n_bits, seed=noise_seed)
        return _element(images, batch, with_labels)

    batches = tf.data.Dataset.zip(batches, noise_seeds)
    return batches.map(dequantise, num_parallel_calls=_AUTOTUNE).prefetch(_AUTOTUNE)


def augment_images(images, augment, seed):
    """`augment` ("none", "flip" or "shift"; module docstring) applied to each image of a uint8
    batch `[batch, height, width, channels]`, drawn from the stateless `seed` (shape `[2]`)."""
    _check_choice("augment", augment, AUGMENTATIONS)
    if augment == "none":
        return images
    batch = tf.shape(images)[0]
    if augment == "flip":
        flip = tf.random.stateless_uniform([batch], seed) < 0.5
        return tf.where(flip[:, None, None, None], tf.reverse(images, axis=[2]), images)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    size = tf.cast(tf.stack([width, height]), tf.float32)
    offsets = tf.random.stateless_uniform([batch, 2], seed, -SHIFT_RANGE, SHIFT_RANGE) * size
    ones, zeros = tf.ones([batch, 1]), tf.zeros([batch, 1])
    # output pixel (x, y) reads input (x + dx, y + dy), as scipy's affine_transform in Keras
    transforms = tf.concat([ones, zeros, offsets[:, :1], zeros, ones, offsets[:, 1:],
                            zeros, zeros], axis=1)
    shifted = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32), transforms=transforms,
        output_shape=tf.stack([height, width]), fill_value=0.0, interpolation="BILINEAR",
        fill_mode="NEAREST")
    return tf.cast(tf.clip_by_value(tf.floor(shifted), 0.0, 255.0), tf.uint8)


def _eval_batches(examples, split, batch_size, n_bits, with_labels):
    """Batches with one fixed noise draw per example, seeded by (split, index)."""
    stream = _EVAL_NOISE_STREAMS[split]

    def dequantise(index, example):
        noise_seed = tf.stack([tf.constant(stream, tf.int64), index])
        images = preprocessing.preprocess(example["image"], n_bits, seed=noise_seed)
        return _element(images, example, with_labels)

    examples = examples.enumerate().map(dequantise, num_parallel_calls=_AUTOTUNE)
    return examples.batch(batch_size).prefetch(_AUTOTUNE)


def _element(images, example, with_labels):
    return {"image": images, "label": example["label"]} if with_labels else images

import gzip
import struct

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from keras_flow import data


def _all_images(dataset):
    return np.concatenate([batch.numpy() for batch in dataset])


def _write_image(path, size=(8, 8), mode="RGB", fmt="PNG", value=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    shape = (size[0], size[1]) if mode == "L" else (size[0], size[1], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, fmt)


def _write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if path.suffix == ".gz":
        payload = gzip.compress(payload)
    path.write_bytes(payload)


@pytest.fixture
def class_folder(tmp_path):
    """Two class sub-folders with 3 PNG and 2 JPEG images, plus one corrupt file."""
    for i in range(3):
        _write_image(tmp_path / "cats" / f"{i}.png", value=i)
    for i in range(2):
        _write_image(tmp_path / "dogs" / f"{i}.jpg", fmt="JPEG", value=10 + i)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"not an image")
    return tmp_path


# --- digits and the pipeline --------------------------------------------------


def test_digits_splits_and_batches():
    loaded = data.load("digits", batch_size=64)
    assert loaded.image_shape == (8, 8, 1)
    assert (loaded.num_train, loaded.num_validation, loaded.num_test) == (1350, 150, 297)
    assert loaded.num_classes == 10
    batch = next(iter(loaded.train))
    assert batch.shape == (64, 8, 8, 1) and batch.dtype == tf.float32
    assert len(loaded.train) == 1350 // 64  # partial batch dropped
    assert len(_all_images(loaded.test)) == 297
    assert len(_all_images(loaded.validation)) == 150


def test_values_are_dequantised_into_the_half_open_range():
    images = _all_images(data.load("digits").train)
    assert images.min() >= -0.5 and images.max() < 0.5
    position_in_bin = (images + 0.5) * 256 % 1
    assert np.mean(position_in_bin > 0) > 0.99


@pytest.mark.parametrize("levels, size", [(3, 8), (4, 16)])
def test_digits_padded_to_a_multiple_of_two_to_the_levels(levels, size):
    loaded = data.load("digits", levels=levels)
    assert loaded.image_shape == (size, size, 1)
    assert next(iter(loaded.train)).shape[1:] == (size, size, 1)
    if size == 16:
        unpadded = data.load("digits").raw_images("test")
        padded = loaded.raw_images("test")
        np.testing.assert_array_equal(padded[:, 4:12, 4:12], unpadded)
        assert padded[:, :4].max() == 0 and padded[:, 12:].max() == 0


def test_fit_error_names_the_size_and_fit_resize_resizes():
    with pytest.raises(ValueError, match=r"8x8 .*levels=4.*fit='pad'.*fit='resize'"):
        data.load("digits", levels=4, fit="error")
    assert data.load("digits", levels=4, fit="resize").image_shape == (16, 16, 1)
    assert data.load("digits", image_size=12, levels=2).image_shape == (12, 12, 1)


def test_labels_come_as_dicts():
    loaded = data.load("digits", with_labels=True, batch_size=32)
    batch = next(iter(loaded.train))
    assert set(batch) == {"image", "label"}
    assert batch["image"].shape == (32, 8, 8, 1)
    assert batch["label"].dtype == tf.int32
    assert 0 <= batch["label"].numpy().min() and batch["label"].numpy().max() <= 9


def test_validation_fraction_zero_and_large_batches():
    loaded = data.load("digits", validation_fraction=0, batch_size=2000)
    assert loaded.validation is None and loaded.num_train == 1500
    assert [batch.shape[0] for batch in loaded.train] == [1500]  # no full batch: kept


@pytest.mark.parametrize("cache", ["auto", False])
def test_eval_noise_is_fixed_and_train_noise_is_fresh_each_epoch(cache):
    loaded = data.load("digits", seed=3, cache=cache)
    np.testing.assert_array_equal(_all_images(loaded.validation), _all_images(loaded.validation))
    np.testing.assert_array_equal(_all_images(loaded.test), _all_images(loaded.test))
    first_epoch = next(iter(loaded.train)).numpy()
    assert not np.array_equal(first_epoch, next(iter(loaded.train)).numpy())
    np.testing.assert_array_equal(first_epoch, next(iter(data.load("digits", seed=3).train)))


def test_init_batch():
    loaded = data.load("digits", levels=4)
    batch = loaded.init_batch(16)
    assert batch.shape == (16, 16, 16, 1) and batch.dtype == np.float32
    assert batch.min() >= -0.5 and batch.max() < 0.5
    with pytest.raises(ValueError, match="num_train=1350"):
        loaded.init_batch(5000)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"n_bits": 9}, "n_bits"),
        ({"fit": "crop"}, "fit must be one of"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"image_size": (8, 0)}, "image_size"),
    ],
)
def test_invalid_options_raise(options, message):
    with pytest.raises(ValueError, match=message):
        data.load("digits", **options)


# --- dataset strings and TensorFlow Datasets -----------------------------------


def test_parse_dataset_spec():
    assert data.parse_dataset_spec("digits") == ("digits", None)
    assert data.parse_dataset_spec("folder:/a/b") == ("folder", "/a/b")
    assert data.parse_dataset_spec("npz:x.npz") == ("npz", "x.npz")
    assert data.parse_dataset_spec("idx:/usr/share") == ("idx", "/usr/share")
    assert data.parse_dataset_spec("mnist") == ("tfds", "mnist")
    assert data.parse_dataset_spec("cifar10:3.0.2") == ("tfds", "cifar10:3.0.2")


@pytest.mark.parametrize("spec", ["mnsit", "zip:images.zip", "folder:"])
def test_unknown_datasets_raise_with_the_accepted_forms(spec):
    with pytest.raises(ValueError, match="folder:PATH|needs a path") as info:
        data.load(spec)
    if spec == "mnsit":
        assert "npz:PATH" in str(info.value) and "Did you mean 'mnist'" in str(info.value)


def test_tfds_mnist_is_padded_to_32():
    with tfds.testing.mock_data(num_examples=20):
        loaded = data.load("mnist", levels=3, batch_size=8, with_labels=True)
        batch = next(iter(loaded.train))
        assert loaded.image_shape == (32, 32, 1) and loaded.num_classes == 10
        assert batch["image"].shape == (8, 32, 32, 1)
        assert (loaded.num_train, loaded.num_validation, loaded.num_test) == (18, 2, 20)
        assert loaded.raw_images("train")[:, :2].max() == 0


def test_tfds_celeb_a_is_cropped_and_has_no_labels():
    with tfds.testing.mock_data(num_examples=4):
        loaded = data.load("celeb_a", validation_fraction=0, batch_size=2)
        assert loaded.image_shape == (148, 148, 3)
        assert next(iter(loaded.train)).shape == (2, 148, 148, 3)
        with pytest.raises(ValueError, match="has no labels"):
            data.load("celeb_a", with_labels=True)


# --- folders -------------------------------------------------------------------


def test_folder_with_classes_skips_and_counts_corrupt_files(class_folder):
    with pytest.warns(UserWarning, match="Skipped 1 unreadable"):
        loaded = data.load(f"folder:{class_folder}", batch_size=2, with_labels=True)
    assert loaded.skipped_files == 1
    assert loaded.class_names == ("cats", "dogs") and loaded.image_shape == (8, 8, 3)
    assert (loaded.num_train, loaded.num_validation, loaded.num_test) == (3, 1, 1)
    assert next(iter(loaded.train))["image"].shape == (2, 8, 8, 3)


def test_folder_bad_file_error_names_the_file(class_folder):
    with pytest.raises(ValueError, match="broken.png"):
        data.load(f"folder:{class_folder}", on_bad_file="error")


def test_folder_mixed_sizes_need_image_size(tmp_path):
    _write_image(tmp_path / "a.png", size=(8, 8), mode="L")
    _write_image(tmp_path / "b.png", size=(12, 10), mode="L")
    with pytest.raises(ValueError, match=r"8x8 in 1 file.*12x10 in 1 file.*image_size"):
        data.load(f"folder:{tmp_path}", test_fraction=0, validation_fraction=0)
    loaded = data.load(f"folder:{tmp_path}", image_size=16, test_fraction=0, validation_fraction=0)
    assert loaded.image_shape == (16, 16, 1) and loaded.num_classes is None
    with pytest.raises(ValueError, match="has no labels"):
        data.load(f"folder:{tmp_path}", image_size=16, with_labels=True)


def test_missing_and_empty_folders_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        data.load(f"folder:{tmp_path / 'nowhere'}")
    (tmp_path / "notes.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No .png/.jpg/.jpeg images"):
        data.load(f"folder:{tmp_path}")


# --- npz and IDX -----------------------------------------------------------------


def _save_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_with_and_without_a_test_split(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 8, 8), dtype=np.uint8)
    y = np.arange(20) % 4
    without_test = _save_npz(tmp_path / "a.npz", x=x, y=y)
    loaded = data.load(without_test, batch_size=4)
    assert loaded.image_shape == (8, 8, 1) and loaded.num_classes == 4
    assert (loaded.num_train, loaded.num_validation, loaded.num_test) == (16, 2, 2)
    spec = _save_npz(tmp_path / "b.npz", x=x.astype(np.float32), x_test=x[:5, ..., None])
    loaded = data.load(spec, validation_fraction=0)
    assert (loaded.num_train, loaded.num_test) == (20, 5)
    np.testing.assert_array_equal(loaded.raw_images("test"), x[:5, ..., None])
    loaded = data.load(without_test, test_fraction=0)
    assert loaded.test is None and loaded.num_test == 0
    with pytest.raises(ValueError, match="has no test split"):
        loaded.raw_images("test")


@pytest.mark.parametrize(
    "x, message",
    [
        (
            np.where(np.eye(8) > 0, np.nan, 1.0)[None].repeat(3, 0),
            r"24 of 192 values are not integers in 0\.\.255 \(24 NaN/Inf\)",
        ),
        (np.full((3, 8, 8), 300), r"192 of 192 values .*0\.\.255"),
        (np.zeros((3, 8)), r"shape \(3, 8\)"),
    ],
)
def test_invalid_npz_raises(tmp_path, x, message):
    with pytest.raises(ValueError, match=message):
        data.load(_save_npz(tmp_path / "bad.npz", x=x))


def test_idx_files_plain_and_gzipped(tmp_path):
    rng = np.random.default_rng(0)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (30, 6, 6)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.arange(30) % 3)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", rng.integers(0, 256, (10, 6, 6)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.arange(10) % 3)
    loaded = data.load(f"idx:{tmp_path}", levels=3, batch_size=5, with_labels=True)
    assert loaded.image_shape == (8, 8, 1) and loaded.num_classes == 3
    assert (loaded.num_train, loaded.num_validation, loaded.num_test) == (27, 3, 10)
    assert next(iter(loaded.test))["label"].shape == (5,)


def test_idx_bad_magic_raises(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x12\x34\x08\x03" + bytes(12))
    with pytest.raises(ValueError, match="bad magic number 0x12340803"):
        data.load(f"idx:{tmp_path}")


# --- augmentation ---------------------------------------------------------------


def _uint8(images, n_bits=8):
    """The uint8 images under the dequantisation noise: floor((x + 0.5) * 2**n_bits)."""
    return np.floor((np.asarray(images, np.float64) + 0.5) * 2**n_bits).astype(np.uint8)


def _first_batches(loaded, count=3):
    return [batch.numpy() for batch in loaded.train.take(count)]


def test_flip_mirrors_some_training_images_and_no_held_out_one():
    plain = data.load("digits", batch_size=32, seed=3)
    flipped = data.load("digits", batch_size=32, seed=3, augment="flip")
    mirrored = unchanged = 0
    for a, b in zip(_first_batches(plain), _first_batches(flipped)):
        source, got = _uint8(a), _uint8(b)  # same shuffle: the same images in the same order
        for x, y in zip(source, got):
            same, mirror = np.array_equal(x, y), np.array_equal(x[:, ::-1], y)
            assert same or mirror
            mirrored += mirror and not same
            unchanged += same and not mirror
    assert mirrored > 10 and unchanged > 10
    for split in ("validation", "test"):
        np.testing.assert_array_equal(_all_images(getattr(plain, split)),
                                      _all_images(getattr(flipped, split)))
    np.testing.assert_array_equal(plain.init_batch(16), flipped.init_batch(16))


def test_shift_is_openai_glows_translation():
    """The pipeline's shifted training images are Keras's `ImageDataGenerator(
    width_shift_range=0.1, height_shift_range=0.1)` as openai/glow used it: scipy's
    `affine_transform(order=1, mode="nearest")` by a uniform offset, floored to uint8."""
    ndimage = pytest.importorskip("scipy.ndimage")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 10, 10, 3), dtype=np.uint8)
    seed = tf.constant([4, 5], tf.int64)
    got = data.augment_images(tf.constant(images), "shift", seed).numpy()
    offsets = tf.random.stateless_uniform([6, 2], seed, -0.1, 0.1).numpy() * 10  # (dx, dy)
    assert np.all(np.abs(offsets) <= 1.0) and np.any(np.abs(offsets) > 0.5)
    for image, shifted, (dx, dy) in zip(images, got, offsets):
        for channel in range(3):
            reference = ndimage.affine_transform(
                image[..., channel].astype(np.float32), np.eye(2), offset=(dy, dx), order=1,
                mode="nearest")
            np.testing.assert_array_equal(
                shifted[..., channel], np.clip(np.floor(reference), 0, 255).astype(np.uint8))
        assert not np.array_equal(shifted, image)


def test_shift_moves_training_images_only():
    plain = data.load("digits", batch_size=32, seed=3)
    shifted = data.load("digits", batch_size=32, seed=3, augment="shift")
    changed = 0
    for a, b in zip(_first_batches(plain), _first_batches(shifted)):
        changed += int(np.sum(np.any(_uint8(a) != _uint8(b), axis=(1, 2, 3))))
    assert changed > 48  # of 96: most offsets round to a visible change at 8x8
    for split in ("validation", "test"):
        np.testing.assert_array_equal(_all_images(getattr(plain, split)),
                                      _all_images(getattr(shifted, split)))


@pytest.mark.parametrize("augment", ["flip", "shift"])
def test_augmentation_is_reproducible_from_the_seed(augment):
    first = _first_batches(data.load("digits", batch_size=32, seed=5, augment=augment), 2)
    again = _first_batches(data.load("digits", batch_size=32, seed=5, augment=augment), 2)
    other = _first_batches(data.load("digits", batch_size=32, seed=6, augment=augment), 2)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], other[0])
    loaded = data.load("digits", batch_size=32, seed=5, augment=augment)
    epochs = [np.concatenate(_first_batches(loaded, 2)) for _ in range(2)]
    assert not np.array_equal(epochs[0], epochs[1])  # fresh draws every epoch


def test_no_augmentation_leaves_the_pipeline_as_it_was():
    np.testing.assert_array_equal(
        np.concatenate(_first_batches(data.load("digits", seed=2), 2)),
        np.concatenate(_first_batches(data.load("digits", seed=2, augment="none"), 2)))
    with pytest.raises(ValueError, match="augment must be one of"):
        data.load("digits", augment="rotate")

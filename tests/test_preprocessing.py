import numpy as np
import pytest
import tensorflow as tf

from keras_flow import preprocessing

ALL_VALUES = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)


def test_reduce_bits_keeps_the_top_bits():
    bins = preprocessing.reduce_bits(ALL_VALUES, 5).numpy()
    np.testing.assert_array_equal(bins, ALL_VALUES // 8)
    assert bins.min() == 0 and bins.max() == 31


def test_center_round_trip_is_exact_at_8_bits():
    x = preprocessing.preprocess(ALL_VALUES, noise="center")
    np.testing.assert_array_equal(preprocessing.postprocess(x).numpy(), ALL_VALUES)


def test_center_round_trip_gives_the_reduced_image_at_5_bits():
    x = preprocessing.preprocess(ALL_VALUES, n_bits=5, noise="center")
    restored = preprocessing.postprocess(x, n_bits=5).numpy()
    np.testing.assert_array_equal(restored, (ALL_VALUES // 8) * 8)


@pytest.mark.parametrize("n_bits", [8, 5, 1])
def test_uniform_noise_stays_inside_its_bin(n_bits):
    images = np.tile(ALL_VALUES, (8, 1, 1, 1))
    n_bins = 2**n_bits
    z = preprocessing.preprocess(images, n_bits=n_bits, seed=1).numpy()
    lower = preprocessing.preprocess(images, n_bits=n_bits, noise="none").numpy()
    assert z.dtype == np.float32
    assert z.min() >= -0.5 and z.max() < 0.5
    assert np.all(z >= lower) and np.all(z < lower + 1.0 / n_bins)
    assert np.mean(z > lower) > 0.99  # dequantised, not on the bin edges


def test_noise_none_gives_the_lower_bin_edge():
    z = preprocessing.preprocess(np.array([0, 128, 255], np.uint8), noise="none").numpy()
    np.testing.assert_array_equal(z, [-0.5, 0.0, 255 / 256 - 0.5])


def test_seeded_noise_is_reproducible():
    def draw(seed):
        return preprocessing.preprocess(ALL_VALUES, seed=seed).numpy()

    np.testing.assert_array_equal(draw(3), draw(3))
    np.testing.assert_array_equal(draw(3), draw(tf.constant([3, 0])))
    assert not np.array_equal(draw(3), draw(4))


def test_postprocess_saturates_and_maps_nan_to_zero():
    x = tf.constant([np.nan, -1.0, 0.6, np.inf, -np.inf, 0.0])
    np.testing.assert_array_equal(preprocessing.postprocess(x).numpy(), [0, 0, 255, 255, 0, 128])


@pytest.mark.parametrize("n_bits", [1, 4, 5, 8])
def test_postprocess_stays_on_the_bit_reduced_grid(n_bits):
    step = 256 // 2 ** n_bits
    x = tf.constant(np.concatenate([np.linspace(-1.0, 1.5, 1001), [0.5, np.inf]]), tf.float32)
    images = preprocessing.postprocess(x, n_bits=n_bits).numpy().astype(int)
    assert np.all(images % step == 0)
    assert images.max() == 256 - step  # x >= 0.5 saturates at the top level (4 bits: 240)
    bins = preprocessing.preprocess(ALL_VALUES, n_bits=n_bits, seed=1)
    np.testing.assert_array_equal(preprocessing.postprocess(bins, n_bits=n_bits).numpy(),
                                  (ALL_VALUES // step) * step)


def test_runs_inside_tf_function_and_dataset_map():
    @tf.function
    def encode(images):
        return preprocessing.preprocess(images, n_bits=5, noise="center")

    dataset = tf.data.Dataset.from_tensor_slices(ALL_VALUES).map(preprocessing.preprocess)
    np.testing.assert_array_equal(
        preprocessing.postprocess(encode(ALL_VALUES), n_bits=5).numpy(), (ALL_VALUES // 8) * 8
    )
    assert next(iter(dataset)).dtype == tf.float32


@pytest.mark.parametrize("n_bits", [0, 9, 2.5, True, "8"])
def test_invalid_n_bits_raises(n_bits):
    with pytest.raises(ValueError, match="n_bits must be an integer in 1..8"):
        preprocessing.preprocess(ALL_VALUES, n_bits=n_bits)


def test_invalid_noise_raises():
    with pytest.raises(ValueError, match="noise must be one of"):
        preprocessing.preprocess(ALL_VALUES, noise="gaussian")

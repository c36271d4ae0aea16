"""keras_flow.export (SavedModel endpoints), `.keras` save/load/resume, and the sample command."""

import json
import os
import subprocess
import sys
import textwrap
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_flow
from keras_flow import preprocessing
from keras_flow import sample as sample_cli
from keras_flow import saved_model
from tests.models.model_checks import count_shards

# one test process for the module (pytest-xdist): its module fixtures are built once
pytestmark = pytest.mark.xdist_group("export")

IMAGE_SHAPE = (8, 8, 1)


def tiny_glow(**overrides):
    config = dict(levels=2, depth=2, hidden_width=16, image_shape=IMAGE_SHAPE, seed=3)
    config.update(overrides)
    return keras_flow.Glow(**config)


def uint8_images(count, shape=IMAGE_SHAPE, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count,) + shape).astype("uint8")


def dequantised(images):
    return preprocessing.preprocess(images, noise="uniform", seed=1).numpy()


def bin_centres(images, n_bits=8):
    return preprocessing.preprocess(images, n_bits, noise="center")


@pytest.fixture(scope="module")
def trained():
    """A tiny Glow trained for 2 steps with Adam (so it has optimizer state), and its data."""
    images = uint8_images(16)
    model = tiny_glow()
    model.initialize(dequantised(images[:8]))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), run_eagerly=True)  # no trace: fast
    model.fit(dequantised(images), batch_size=8, epochs=1, shuffle=False, verbose=0)
    return types.SimpleNamespace(model=model, images=images)


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """The trained model exported, with the in-process reference values taken at export time."""
    path = str(tmp_path_factory.mktemp("export") / "glow")
    assert keras_flow.export(trained.model, path) == path
    probe = trained.images[:6]
    reference = trained.model.bits_per_dim(bin_centres(probe)).numpy()
    weights = [weight.numpy() for weight in trained.model.weights]
    return types.SimpleNamespace(path=path, probe=probe, reference_bits=reference,
                                 weights=weights)


CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf

    export_dir, data_file, out_file = sys.argv[1:]
    loaded = tf.saved_model.load(export_dir)
    images = np.load(data_file)
    n, t = tf.constant(5), tf.constant(0.7)
    latents = loaded.encode(images)
    meta = {k: v.numpy().tolist() for k, v in loaded.metadata().items()}
    by_hand = loaded.decode(
        0.7 * tf.random.stateless_normal([5, meta["latent_dim"]], seed=[11, 0]))
    np.savez(out_file, sample_1=loaded.sample(n, t), sample_2=loaded.sample(n, t),
             seeded_1=loaded.sample_seeded(n, t, 11), seeded_2=loaded.sample_seeded(n, t, 11),
             seeded_other=loaded.sample_seeded(n, t, 12), by_hand=by_hand,
             latents=latents, decoded=loaded.decode(latents),
             bits=loaded.bits_per_dim(images))
    print(json.dumps({"meta": meta, "keras_flow_imported": any(
        name.split(".")[0] == "keras_flow" for name in sys.modules)}))
""")


def test_every_endpoint_in_a_process_without_keras_flow(exported, tmp_path):
    np.save(tmp_path / "images.npy", exported.probe)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    result = subprocess.run(
        [sys.executable, "-c", CHILD, exported.path, "images.npy", "out.npz"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert not report["keras_flow_imported"]
    assert report["meta"] == {"image_shape": list(IMAGE_SHAPE), "latent_dim": 64, "n_bits": 8,
                              "num_classes": 0}
    out = np.load(tmp_path / "out.npz")
    for key in ("sample_1", "seeded_1", "by_hand", "decoded"):
        assert out[key].dtype == np.uint8 and out[key].shape[1:] == IMAGE_SHAPE, key
    assert out["sample_1"].shape[0] == 5
    assert np.any(out["sample_1"] != out["sample_2"])
    np.testing.assert_array_equal(out["seeded_1"], out["seeded_2"])
    np.testing.assert_array_equal(out["seeded_1"], out["by_hand"])
    assert np.any(out["seeded_1"] != out["seeded_other"])
    assert out["latents"].dtype == np.float32 and out["latents"].shape == (6, 64)
    np.testing.assert_array_equal(out["decoded"], exported.probe)
    assert out["bits"].dtype == np.float32 and out["bits"].shape == (6,)
    np.testing.assert_allclose(out["bits"], exported.reference_bits, atol=1e-4, rtol=0)


def test_keras_file_round_trip_and_resumed_training(trained, exported, tmp_path):
    # `exported` first: resuming training below changes `trained.model` after its export.
    model, images = trained.model, trained.images
    model.save(tmp_path / "glow.keras")
    loaded = keras.saving.load_model(tmp_path / "glow.keras")
    x = bin_centres(images)
    np.testing.assert_array_equal(loaded.bits_per_dim(x), model.bits_per_dim(x))
    np.testing.assert_array_equal(loaded.sample(4, 0.7, seed=5), model.sample(4, 0.7, seed=5))
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2

    more = dequantised(uint8_images(16, seed=1))
    for flow in (model, loaded):
        flow.fit(more, batch_size=8, epochs=1, shuffle=False, verbose=0)
    assert int(loaded.optimizer.iterations) == 4
    for original, reloaded in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(reloaded.numpy(), original.numpy(), err_msg=original.path)


@pytest.mark.parametrize("policy, export_dtype", [
    ("mixed_bfloat16", None), ("mixed_float16", None), ("mixed_bfloat16", "float32")])
def test_export_under_mixed_policy_has_float32_signatures(policy, export_dtype, tmp_path):
    keras.config.set_dtype_policy(policy)
    images = uint8_images(4, shape=(4, 4, 1))
    model = tiny_glow(levels=1, depth=1, hidden_width=4, image_shape=(4, 4, 1))
    model.initialize(dequantised(images))
    path = keras_flow.export(model, str(tmp_path / "export"), dtype=export_dtype)
    loaded = tf.saved_model.load(path)
    inputs = {name: [spec.dtype for spec in loaded.signatures[name].structured_input_signature[1]
                     .values()] for name in ("encode", "decode", "bits_per_dim")}
    assert inputs == {"encode": [tf.uint8], "decode": [tf.float32], "bits_per_dim": [tf.uint8]}
    latents = loaded.encode(images)
    assert latents.dtype == tf.float32
    assert loaded.decode(latents).dtype == tf.uint8
    assert loaded.sample(3, 0.5).dtype == tf.uint8
    bits = loaded.bits_per_dim(images)
    assert bits.dtype == tf.float32 and np.all(np.isfinite(bits))
    if export_dtype == "float32":  # a float32 copy of the mixed model: exact round trip
        np.testing.assert_array_equal(loaded.decode(latents), images)
        keras.config.set_dtype_policy("float32")
        copy = saved_model.with_dtype_policy(model, "float32")
        np.testing.assert_allclose(bits, copy.bits_per_dim(bin_centres(images)), atol=1e-4)
        np.testing.assert_allclose(bits, model.bits_per_dim(bin_centres(images)), atol=0.05)


def test_class_conditional_export_takes_labels(tmp_path):
    images, labels = uint8_images(4), np.array([0, 1, 2, 1], "int32")
    model = tiny_glow(levels=1, depth=1, hidden_width=8, num_classes=3)
    model.initialize(dequantised(images), labels)
    embedding = model.top_prior.class_embedding
    for weight in embedding.trainable_weights:  # zero at init: make the labels matter
        weight.assign(np.random.default_rng(0).normal(0, 0.3, weight.shape))
    loaded = tf.saved_model.load(keras_flow.export(model, str(tmp_path / "export")))
    assert "labels" in loaded.signatures["sample"].structured_input_signature[1]
    assert int(loaded.metadata()["num_classes"]) == 3
    assert loaded.sample(4, 0.7, labels).shape == (4,) + IMAGE_SHAPE
    np.testing.assert_array_equal(loaded.decode(loaded.encode(images, labels), labels), images)
    np.testing.assert_allclose(loaded.bits_per_dim(images, labels),
                               model.bits_per_dim(bin_centres(images), labels), atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels must be int32"):
        loaded.bits_per_dim(images, np.array([0, 1, 2, 3], "int32"))
    assert sample_cli.draw_samples(loaded, 5, 0.7, seed=1).shape == (5,) + IMAGE_SHAPE
    with pytest.raises(ValueError, match="num_classes=3"):
        sample_cli.draw_samples(loaded, 5, 0.7, label=3)


def test_export_lists_the_weights_and_a_signature_per_endpoint(exported):
    loaded = tf.saved_model.load(exported.path)
    assert len(loaded.variables) == len(exported.weights)
    for variable, weight in zip(loaded.variables, exported.weights):
        np.testing.assert_array_equal(variable.numpy(), weight)
    assert sorted(loaded.signatures) == sorted(saved_model.ENDPOINTS + ("serving_default",))
    assert (loaded.signatures["serving_default"].structured_input_signature
            == loaded.signatures["sample"].structured_input_signature)


def test_verbose_export_prints_each_endpoint_signature(tmp_path, capsys):
    model = tiny_glow(levels=1, depth=1, hidden_width=4)
    model.initialize(dequantised(uint8_images(4)))
    keras_flow.export(model, str(tmp_path / "export"), verbose=True)
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("(")[0] for line in lines] == list(saved_model.ENDPOINTS)
    assert "name='num_samples'" in lines[0] and "dtype=tf.uint8" in lines[0]


def test_samples_of_a_few_bits_model_are_bit_reduced_images(tmp_path):
    """docs/export.md's bin-centre example: with n_bits < 8 the samples lie on the n_bits grid,
    saturated ones too, so decode(encode(samples)) == samples."""
    images = uint8_images(4)
    model = tiny_glow(levels=1, depth=1, hidden_width=4, num_bins=16)
    model.initialize(preprocessing.preprocess(images, 4, seed=1))
    loaded = tf.saved_model.load(keras_flow.export(model, str(tmp_path / "export")))
    samples = loaded.sample_seeded(8, 1.5, 0).numpy()
    assert samples.max() == 240 and np.all(samples % 16 == 0)  # saturated at the top level
    np.testing.assert_array_equal(loaded.decode(loaded.encode(samples)), samples)


def test_endpoint_errors_name_the_expected_shape(exported):
    loaded = tf.saved_model.load(exported.path)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"shape \[None, 8, 8, 1\]"):
        loaded.encode(np.zeros((2, 8, 8, 3), "uint8"))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"shape \[None, 64\]"):
        loaded.decode(np.zeros((2, 10), "float32"))
    with pytest.raises(tf.errors.InvalidArgumentError, match="temperature must be >= 0"):
        loaded.sample(2, -1.0)


def test_refuses_to_overwrite_unless_asked(trained, exported):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        keras_flow.export(trained.model, exported.path)
    assert os.path.isfile(os.path.join(exported.path, "saved_model.pb"))


class _FailingArchive:
    def write_out(self, path, verbose=False):
        os.makedirs(path)
        open(os.path.join(path, "half_written"), "w").close()
        raise RuntimeError("disk full")


class _Archive:
    def write_out(self, path, verbose=False):
        os.makedirs(path)
        open(os.path.join(path, "new"), "w").close()


def test_writes_are_atomic(tmp_path):
    path = tmp_path / "export"
    path.mkdir()
    (path / "old").touch()
    with pytest.raises(RuntimeError, match="disk full"):
        saved_model.write_atomically(_FailingArchive(), path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert os.listdir(path) == ["old"]
    saved_model.write_atomically(_Archive(), path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["export"]
    assert os.listdir(path) == ["new"]


def test_export_validates_the_model():
    with pytest.raises(ValueError, match="not built"):
        keras_flow.export(keras_flow.Glow(levels=1, depth=1, hidden_width=4), "unused")
    with pytest.raises(TypeError, match="keras_flow flow model"):
        keras_flow.export(keras.Sequential([keras.layers.Dense(1)]), "unused")
    assert saved_model.n_bits_of(32) == 5
    for bad in (100, 512, 1):
        with pytest.raises(ValueError, match="num_bins"):
            saved_model.n_bits_of(bad)


def test_flat_latents_round_trip():
    shapes = [(4, 4, 2), (2, 2, 8)]
    eps = [tf.random.normal((3,) + shape) for shape in shapes]
    flat = saved_model.flatten_latents(eps)
    assert flat.shape == (3, 64)
    for got, want in zip(saved_model.unflatten_latents(flat, shapes), eps):
        np.testing.assert_array_equal(got, want)


def test_sample_command_writes_a_png_grid(exported, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert sample_cli.main([exported.path, "--num", "10", "--temperature", "0.7", "--seed", "1",
                            "--out", str(out)]) == 0
    assert "10 samples" in capsys.readouterr().out
    with Image.open(out) as image:  # 10 samples -> 4 columns x 3 rows of 8x8
        assert image.size == (32, 24) and image.mode == "L"


@pytest.mark.parametrize("args, message", [
    (["/no/such/export"], "does not exist"),
    (["{export}", "--num", "0"], "--num must be > 0"),
    (["{export}", "--temperature", "-0.5"], "--temperature must be >= 0"),
])
def test_sample_command_errors_are_one_line(exported, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        sample_cli.main([arg.format(export=exported.path) for arg in args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_sample_command_refuses_an_out_it_cannot_write_before_sampling(exported, tmp_path,
                                                                        capsys):
    (tmp_path / "a_file").touch()
    for out, message in [(tmp_path, "is a folder; name a file in it"),
                         (tmp_path / "grid.jpg", "--out must name a .png file"),
                         (tmp_path / "a_file" / "grid.png", "a_file is a file, not a folder")]:
        with pytest.raises(SystemExit) as exit_info:
            sample_cli.main([exported.path, "--out", str(out)])
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and err.count("\n") == 1, err
    with pytest.raises(SystemExit):
        sample_cli.main([exported.path, "--seed", str(2 ** 33), "--out", "x.png"])
    assert "--seed must fit in 32 bits" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["a_file"]


def test_export_of_a_sharded_model_shards_any_batch_size(trained, tmp_path):
    """A model with batch shards exports endpoints that shard every batch they get (the
    endpoints take any batch size), and compute the unsharded model's values, also for a
    batch smaller than the number of shards (a stand-in row for the empty shard)."""
    sharded = tiny_glow(batch_shards=3)
    sharded.set_weights(trained.model.get_weights())
    encoded_batches = count_shards(sharded)
    decoded_batches = count_shards(sharded, "decode_batch")
    loaded = tf.saved_model.load(keras_flow.export(sharded, str(tmp_path / "export")))
    # one trace of each direction (shared by its endpoints), in 3 shards of unknown size
    assert encoded_batches == [None] * 3 and decoded_batches == [None] * 3
    for size in (1, 2, 7):
        images = trained.images[:size]
        np.testing.assert_allclose(
            loaded.bits_per_dim(images),
            trained.model.bits_per_dim(bin_centres(images)).numpy(), atol=1e-4)
        np.testing.assert_array_equal(loaded.decode(loaded.encode(images)), images)

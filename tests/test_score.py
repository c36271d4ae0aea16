"""keras_flow.scoring (per-image bits/dim) and its command, python -m keras_flow.score."""

import csv
import io
import types

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import keras_flow
from keras_flow import preprocessing
from keras_flow import score as score_cli
from keras_flow import scoring
from keras_flow import typicality
from tests.likelihood_model import tiny_glow

# one test process for the likelihood tests (pytest-xdist): tiny_glow trains once
pytestmark = pytest.mark.xdist_group("likelihood_model")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run folder as train.py leaves it, for the tiny Glow: model.keras, export/ and
    typicality.json."""
    model, data = tiny_glow()
    folder = tmp_path_factory.mktemp("run")
    model.save(folder / "model.keras")
    keras_flow.export(model, folder / "export")
    typicality.save_reference(model, data, folder)
    return types.SimpleNamespace(folder=folder, model=model, data=data)


def _cli(argv, capsys):
    try:
        code = score_cli.main([str(arg) for arg in argv])
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def _rows(text):
    return list(csv.DictReader(io.StringIO(text)))


def test_cli_library_and_saved_model_agree_per_image(run, tmp_path, capsys):
    images = run.data.raw_images("test")
    library = run.model.bits_per_dim(preprocessing.preprocess(images, noise="center")).numpy()
    scores = {}
    for name, model_path in (("run", run.folder), ("export", run.folder / "export")):
        code, out, _ = _cli([model_path, "--dataset", "digits", "--csv",
                             tmp_path / f"{name}.csv"], capsys)
        assert code == 0 and "297 images of digits (test)" in out
        rows = _rows((tmp_path / f"{name}.csv").read_text())
        assert [int(row["index"]) for row in rows] == list(range(297))
        scores[name] = np.array([float(row["bits_per_dim"]) for row in rows])
        terms = [key for key in rows[0] if key.startswith("level_")] + [
            "log_det", "discretisation"]
        assert terms[:2] == ["level_1", "level_2"]
        sums = np.array([sum(float(row[key]) for key in terms) for row in rows])
        np.testing.assert_allclose(sums, scores[name], atol=1e-4)
    loaded = tf.saved_model.load(str(run.folder / "export"))
    saved_model = loaded.bits_per_dim(images).numpy()
    for name, values in scores.items():
        np.testing.assert_allclose(values, library, atol=1e-4, err_msg=name)
    np.testing.assert_allclose(saved_model, library, atol=1e-4)
    labels = [int(row["label"]) for row in _rows((tmp_path / "run.csv").read_text())]
    assert labels == [int(v) for v in scoring.read_images(
        "digits", run.model.image_shape).labels]


def test_rows_go_to_stdout_and_the_summary_with_the_typicality_test_to_stderr(run, capsys):
    code, out, err = _cli([run.folder, "--reference", run.folder, "--fpr", "0.05",
                           "--test-batch-sizes", "1,10"], capsys)
    assert code == 0
    rows = _rows(out)
    assert len(rows) == 297 and {"typicality", "outside"} <= set(rows[0])
    assert "reference H = " in err and "M = 1:" in err and "M = 10:" in err
    assert "297/297 images" in err  # the progress bar


def test_score_images_per_level_terms_add_up(run):
    scorer = scoring.ModelScorer(run.model, batch_size=100)
    columns = scoring.score_images(scorer, run.data.raw_images("test", 130))
    assert list(columns) == ["bits_per_dim", "level_1", "level_2", "log_det", "discretisation"]
    total = sum(value for key, value in columns.items() if key != "bits_per_dim")
    np.testing.assert_allclose(total, columns["bits_per_dim"], atol=1e-5)


def test_folder_rows_name_their_files(run, tmp_path, capsys):
    folder = tmp_path / "pngs"
    folder.mkdir()
    images = run.data.raw_images("test", 5)
    for index, image in enumerate(images):
        Image.fromarray(image[..., 0]).save(folder / f"img{index}.png")
    code, out, _ = _cli([run.folder / "export", "--dataset", f"folder:{folder}"], capsys)
    assert code == 0
    expected = run.model.bits_per_dim(preprocessing.preprocess(images, noise="center")).numpy()
    by_file = {row["file"]: float(row["bits_per_dim"]) for row in _rows(out)}
    assert sorted(by_file) == [f"img{index}.png" for index in range(5)]
    for index in range(5):
        assert abs(by_file[f"img{index}.png"] - expected[index]) < 1e-4


def _npz(tmp_path, shape):
    path = tmp_path / "images.npz"
    np.savez(path, x=np.zeros(shape, np.uint8))
    return f"npz:{path}"


def _corrupt_folder(tmp_path):
    folder = tmp_path / "corrupt"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"not a png")
    return f"folder:{folder}"


BAD_INPUTS = [  # (name, model argument, dataset, extra flags, message keyword)
    ("wrong image size", None, lambda tmp: _npz(tmp, (4, 16, 16)), [], "after fitting"),
    ("wrong channels", None, lambda tmp: _npz(tmp, (4, 8, 8, 3)), [], "channel"),
    ("unreadable file", None, _corrupt_folder, ["--on-bad-file", "error"],
     "Cannot read image"),
    ("missing source", None, lambda tmp: f"folder:{tmp / 'nowhere'}", [],
     "Image folder not found"),
    ("folder without a model", "empty", lambda tmp: "digits", [], "holds no model"),
    ("missing model", "missing", lambda tmp: "digits", [], "does not exist"),
    ("not a model file", "file", lambda tmp: "digits", [], "not a .keras file"),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[case[0] for case in BAD_INPUTS])
def test_bad_input_ends_with_one_line_and_writes_no_csv(case, run, tmp_path, capsys):
    _, model, source, flags, keyword = case
    model_path = {None: run.folder, "empty": tmp_path / "empty",
                  "missing": tmp_path / "missing", "file": tmp_path / "weights.h5"}[model]
    if model == "empty":
        model_path.mkdir()
    if model == "file":
        model_path.write_bytes(b"")
    out_file = tmp_path / "scores.csv"
    code, _, err = _cli([model_path, "--dataset", source(tmp_path), *flags, "--csv", out_file],
                        capsys)
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1 and keyword in err, err
    assert not out_file.exists() and not list(tmp_path.glob(".scores*"))


def test_library_errors_name_the_expected_shape(run, tmp_path):
    scorer = scoring.ModelScorer(run.model)
    with pytest.raises(ValueError, match="takes images of 8x8x1"):
        scoring.score_images(scorer, np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        scoring.score_images(scorer, np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(FileNotFoundError, match="holds no model"):
        scoring.load_scorer(tmp_path)

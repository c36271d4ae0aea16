"""keras_flow.typicality: the typicality test (Nalisnick et al. 2019) on a small trained Glow."""

import json

import numpy as np
import pytest

from keras_flow import scoring
from keras_flow import typicality
from tests.likelihood_model import tiny_glow

# one test process for the likelihood tests (pytest-xdist): tiny_glow trains once
pytestmark = pytest.mark.xdist_group("likelihood_model")

FPR = 0.05


@pytest.fixture(scope="module")
def scored():
    """The tiny Glow's reference (validation digits) and the bits/dim of in-distribution
    test digits and of obviously shifted images (inverted digits; uniform noise)."""
    model, data = tiny_glow()
    scorer = scoring.ModelScorer(model)
    reference = typicality.reference_from_images(scorer, data.raw_images("validation"))
    test_images = data.raw_images("test")
    noise = np.random.default_rng(0).integers(0, 256, (100,) + test_images.shape[1:])

    def bits(images):
        return scoring.score_images(scorer, images.astype(np.uint8))[scoring.BITS]

    return dict(reference=reference, test=bits(test_images), inverted=bits(255 - test_images),
                noise=bits(noise))


def test_in_distribution_batches_pass_at_the_stated_rate(scored):
    reference, test = scored["reference"], scored["test"]
    for batch_size in (1, 10):
        rate = reference.detection_rate(test, batch_size, FPR, num_batches=400)
        # 150 reference images and 297 test images: allow the sampling error of both.
        assert rate <= 3 * FPR, (batch_size, rate)
    assert reference.test(test, 10, FPR).rate <= 3 * FPR


def test_shifted_batches_are_rejected(scored):
    reference = scored["reference"]
    for name in ("inverted", "noise"):
        for batch_size in (1, 10):
            assert reference.detection_rate(scored[name], batch_size, FPR, num_batches=200) > 0.95
        assert reference.test(scored[name], 10, FPR).outside.all(), name
    per_image = reference.scores(scored["noise"])
    assert per_image.min() > reference.threshold(1, FPR)


def test_threshold_is_the_bootstrap_quantile_and_shrinks_with_the_batch():
    reference = typicality.Reference(np.random.default_rng(1).normal(3.0, 0.2, 500))
    thresholds = [reference.threshold(m, 0.05, num_bootstrap=4000) for m in (1, 10, 100)]
    assert thresholds[0] > thresholds[1] > thresholds[2]
    # A batch mean's spread falls as 1/sqrt(M): the two-sided 95% point of N(0, 0.2^2 / M).
    np.testing.assert_allclose(thresholds, [1.96 * 0.2 / np.sqrt(m) for m in (1, 10, 100)],
                               rtol=0.1)
    assert reference.threshold(10, 0.05, seed=3) == reference.threshold(10, 0.05, seed=3)
    test = reference.test([3.0] * 25 + [9.0] * 5, batch_size=10)
    assert test.means.shape == (3,) and test.outside.tolist() == [False, False, True]


def test_reference_saved_in_a_run_folder_and_loaded(tmp_path):
    model, data = tiny_glow()
    saved = typicality.save_reference(model, data, tmp_path)
    assert saved.split == "validation" and len(saved.bits_per_dim) == data.num_validation
    content = json.loads((tmp_path / typicality.REFERENCE_FILE).read_text())
    assert content["count"] == data.num_validation and content["n_bits"] == 8
    loaded = typicality.load_reference(tmp_path)
    np.testing.assert_array_equal(loaded.bits_per_dim, saved.bits_per_dim)
    assert loaded.mean == pytest.approx(content["mean"])


def test_bad_references_and_arguments_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="train.py writes typicality.json"):
        typicality.load_reference(tmp_path)
    (tmp_path / "other.json").write_text("{}")
    with pytest.raises(ValueError, match="not a typicality reference"):
        typicality.load_reference(tmp_path / "other.json")
    with pytest.raises(ValueError, match="at least 2 finite"):
        typicality.Reference([1.0, float("nan")])
    reference = typicality.Reference([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        reference.threshold(0)
    with pytest.raises(ValueError, match="false_positive_rate must be in"):
        reference.threshold(1, 1.5)

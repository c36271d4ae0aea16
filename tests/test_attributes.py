"""keras_flow.attributes: class / attribute directions in latent space and manipulation."""

import numpy as np
import pytest

from keras_flow import attributes
from keras_flow import preprocessing
from keras_flow import scoring
from tests.likelihood_model import tiny_glow

# one test process for the likelihood tests (pytest-xdist): tiny_glow trains once
pytestmark = pytest.mark.xdist_group("likelihood_model")


@pytest.fixture(scope="module")
def labelled():
    """The tiny Glow and the 297 labelled test digits at their bin centres."""
    model, _ = tiny_glow()
    found = scoring.read_images("digits", model.image_shape)
    x = preprocessing.preprocess(found.images, noise="center").numpy()
    return model, x, found.labels


def test_zero_strength_is_the_identity(labelled):
    model, x, labels = labelled
    means = attributes.class_means(model, x, labels)
    direction = attributes.direction(means, source=3, target=8)
    for levels in attributes.LEVELS:
        moved = np.asarray(attributes.manipulate(model, x[:16], direction, strength=0.0,
                                                 levels=levels))
        np.testing.assert_allclose(moved, x[:16], atol=1e-4)


def test_directions_are_differences_of_class_means(labelled):
    model, x, labels = labelled
    eps = attributes.encode_all(model, x, batch_size=100)
    means = attributes.class_means(model, x, labels)
    assert sorted(means) == list(range(10))
    direction = attributes.direction(means, source=3, target=8)
    for level, step in zip(eps, direction):
        expected = level[labels == 8].mean(axis=0) - level[labels == 3].mean(axis=0)
        np.testing.assert_allclose(step, expected, atol=1e-5)
    has_eight = labels == 8
    np.testing.assert_allclose(
        attributes.attribute_direction(model, x, has_eight)[-1],
        eps[-1][has_eight].mean(axis=0) - eps[-1][~has_eight].mean(axis=0), atol=1e-5)


def test_moving_along_the_direction_moves_the_latent_mean_to_the_target(labelled):
    model, x, labels = labelled
    means = attributes.class_means(model, x, labels)
    direction = attributes.direction(means, source=3, target=8)
    threes = x[labels == 3]
    moved = np.asarray(attributes.manipulate(model, threes, direction, strength=1.0))
    moved_means = attributes.mean_latent(model, moved)
    for moved_mean, target in zip(moved_means, means[8]):
        np.testing.assert_allclose(moved_mean, target, atol=1e-3)


def test_top_only_and_temperature(labelled):
    model, x, labels = labelled
    eps, _ = model.encode(x[:4])
    direction = [np.ones(e.shape[1:], np.float32) for e in eps]
    top = attributes.move_latents(eps, direction, strength=2.0, levels="top")
    np.testing.assert_allclose(top[0], eps[0], atol=0)
    np.testing.assert_allclose(top[-1], np.asarray(eps[-1]) + 2.0, atol=1e-6)
    cooled = attributes.move_latents(eps, direction, strength=0.0, temperature=0.5)
    for level, original in zip(cooled, eps):
        np.testing.assert_allclose(level, 0.5 * np.asarray(original), atol=1e-6)
    grid = attributes.manipulation_grid(model, x[:2], direction, strengths=(-1.0, 0.0, 1.0))
    assert tuple(grid.shape) == (6,) + tuple(x.shape[1:])
    np.testing.assert_allclose(np.asarray(grid)[[1, 4]], x[:2], atol=1e-4)


def test_bad_arguments_are_explained(labelled):
    model, x, labels = labelled
    means = attributes.class_means(model, x[:50], labels[:50])
    with pytest.raises(ValueError, match="No images of class 11"):
        attributes.direction(means, 0, 11)
    with pytest.raises(ValueError, match="both True and False"):
        attributes.attribute_direction(model, x[:10], np.ones(10, bool))
    eps, _ = model.encode(x[:2])
    with pytest.raises(ValueError, match="levels must be one of"):
        attributes.move_latents(eps, attributes.direction(means, 0, 1), levels="bottom")
    with pytest.raises(ValueError, match="same model"):
        attributes.move_latents(eps, [np.zeros(3)])
    with pytest.raises(ValueError, match="one class per image"):
        attributes.class_means(model, x[:10], labels[:9])

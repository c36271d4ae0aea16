import numpy as np
import pytest
from PIL import Image

from keras_flow.image_grid import make_grid
from keras_flow.image_grid import save_png


def numbered_images(count, height=2, width=3, channels=1):
    values = np.arange(count, dtype=np.uint8).reshape(count, 1, 1, 1)
    return np.broadcast_to(values, (count, height, width, channels)).copy()


def test_grid_is_near_square_row_major_with_black_padding():
    grid = make_grid(numbered_images(5))
    assert grid.shape == (2 * 2, 3 * 3, 1) and grid.dtype == np.uint8
    cells = grid[::2, ::3, 0]  # one value per tile
    np.testing.assert_array_equal(cells, [[0, 1, 2], [3, 4, 0]])


def test_columns_and_channelless_input():
    grid = make_grid(numbered_images(4, channels=3), columns=4)
    assert grid.shape == (2, 12, 3)
    assert make_grid(numbered_images(4)[..., 0], columns=1).shape == (8, 3)
    assert make_grid(numbered_images(2), columns=9).shape == (2, 6, 1)


@pytest.mark.parametrize("images, columns", [
    (np.zeros((2, 4, 4, 1), np.float32), None),
    (np.zeros((0, 4, 4, 1), np.uint8), None),
    (np.zeros((4, 4), np.uint8), None),
    (np.zeros((2, 4, 4, 1), np.uint8), 0),
])
def test_invalid_input_is_rejected(images, columns):
    with pytest.raises(ValueError):
        make_grid(images, columns)


@pytest.mark.parametrize("channels, mode", [(1, "L"), (3, "RGB")])
def test_save_png(tmp_path, channels, mode):
    grid = make_grid(numbered_images(6, channels=channels))
    save_png(grid, tmp_path / "grid.png")
    with Image.open(tmp_path / "grid.png") as image:
        assert image.mode == mode and image.size == (grid.shape[1], grid.shape[0])
        np.testing.assert_array_equal(np.asarray(image).reshape(grid.shape), grid)
    with pytest.raises(ValueError, match="uint8"):
        save_png(grid.astype(np.float32), tmp_path / "bad.png")


def test_save_png_is_atomic(tmp_path, monkeypatch):
    """A write that fails halfway leaves the previous image whole and no temporary file."""
    path = tmp_path / "grid.png"
    save_png(np.zeros((4, 4), np.uint8), path)
    before = path.read_bytes()

    def fail_halfway(self, target, format=None):
        with open(target, "wb") as stream:
            stream.write(b"\x89PNG partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", fail_halfway)
    with pytest.raises(OSError, match="disk full"):
        save_png(np.full((4, 4), 255, np.uint8), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]

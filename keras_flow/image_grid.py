"""Tiling uint8 images into one near-square grid image, and writing it as a PNG (NumPy only;
Pillow is imported by `save_png` alone). Used by the sample command, training callbacks and
the notebooks."""

import math

import numpy as np

from keras_flow import files


def make_grid(images, columns=None):
    """Tiles `N` images row by row into a `rows x columns` grid.

    `columns` defaults to `ceil(sqrt(N))` and `rows = ceil(N / columns)`; unused cells of the
    last row are black.

    Args:
        images: uint8 `(N, height, width, channels)` or `(N, height, width)`.
        columns: images per row (at most N are used).

    Returns:
        uint8 `(rows * height, columns * width, channels)` (no channel axis for 3-D input).

    Raises:
        ValueError: for a non-uint8 array, a wrong rank, no images, or columns < 1.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or not len(images):
        raise ValueError(
            f"make_grid expects uint8 images (N, height, width[, channels]) with N >= 1; "
            f"received dtype {images.dtype}, shape {images.shape}. Convert floats with "
            "keras_flow.preprocessing.postprocess.")
    count = len(images)
    columns = math.ceil(math.sqrt(count)) if columns is None else int(columns)
    if columns < 1:
        raise ValueError(f"columns must be >= 1; received {columns}.")
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    cells = np.zeros((rows * columns,) + images.shape[1:], np.uint8)
    cells[:count] = images
    height, width = images.shape[1:3]
    grid = cells.reshape((rows, columns) + images.shape[1:]).swapaxes(1, 2)
    return grid.reshape((rows * height, columns * width) + images.shape[3:])


def save_png(array, path):
    """Writes a uint8 `(height, width)` or `(height, width, 1 | 3 | 4)` array as a PNG.

    Atomically: an existing file at `path` is replaced only by a complete image.
    """
    from PIL import Image

    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype != np.uint8 or not (array.ndim == 2 or
                                      (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(
            f"save_png expects a uint8 (height, width) or (height, width, 1|3|4) array; "
            f"received dtype {array.dtype}, shape {array.shape}.")
    with files.atomic_path(path) as temporary:
        Image.fromarray(array).save(temporary, format="PNG")

"""A 32x32 grey image set from the two photographs that ship with scikit-learn.

    python benchmarks/natural_patches.py                 # writes runs/natural32/
    python3 train.py --dataset npz:runs/natural32/natural32.npz --levels 3 --depth 8 \\
        --hidden-width 128 --batch-size 64 --max-seconds 600
    KF_QUALITY_CACHE=runs/natural32/peer bash ../shared/peers/quality.sh   # normflows

The time-budget benchmark's third data set (BENCHMARKS.md, "Quality against a time budget"):
natural-image texture that neither the digits nor Fashion-MNIST have, with no download.
`sklearn.datasets.load_sample_images()` gives two 427x640 RGB photographs (a temple, a
flower). Each is turned grey (ITU-R 601 luma, rounded to uint8); random 32x32 crops of the
left three quarters of each are the training images (4,500 per photograph), crops of the right
quarter the test images (500 per photograph), so no test pixel was ever seen in training.

Writes `natural32.npz` (`x`, `x_test`: keras_flow's `npz:` source) and, for the peers'
quality runner, `peer/train.npz` and `peer/test.npz` (`x`, and the test set's fixed
dequantisation noise `u`, as ../shared/peers/quality.sh prepares Fashion-MNIST).
"""

import argparse
from pathlib import Path

import numpy as np

SIZE = 32


def grey(image):
    """ITU-R 601 luma of an (H, W, 3) uint8 image, rounded to uint8."""
    luma = image.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)


def crops(image, count, columns, rng):
    """`count` random SIZE x SIZE crops whose columns lie in `columns` (start, stop)."""
    rows = rng.integers(0, image.shape[0] - SIZE + 1, count)
    cols = rng.integers(columns[0], columns[1] - SIZE + 1, count)
    return np.stack([image[r:r + SIZE, c:c + SIZE] for r, c in zip(rows, cols)])[..., None]


def make(train_per_image=4500, test_per_image=500, seed=20261206):
    """(train, test) uint8 arrays of shape (N, 32, 32, 1)."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    train, test = [], []
    for photo in load_sample_images().images:
        image = grey(photo)
        cut = image.shape[1] * 3 // 4
        train.append(crops(image, train_per_image, (0, cut), rng))
        test.append(crops(image, test_per_image, (cut, image.shape[1]), rng))
    train, test = np.concatenate(train), np.concatenate(test)
    return train[rng.permutation(len(train))], test


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/natural32", help="folder (default: runs/natural32)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    (out / "peer").mkdir(parents=True, exist_ok=True)
    train, test = make()
    np.savez(out / "natural32.npz", x=train, x_test=test)
    noise = np.random.default_rng(20261128).uniform(0, 1, size=test.shape).astype(np.float32)
    np.savez(out / "peer" / "train.npz", x=train)
    np.savez(out / "peer" / "test.npz", x=test, u=noise)
    print(f"wrote {out}: {len(train)} training and {len(test)} test images of 32x32x1")


if __name__ == "__main__":
    main()

"""The typicality test for out-of-distribution inputs (Nalisnick et al. 2019).

A flow trained on one data set can give *higher* likelihood to another (Glow on CIFAR-10
scores SVHN higher, on Fashion-MNIST scores MNIST higher), so "low likelihood = unusual"
fails. The typicality test asks instead whether a batch's mean bits/dim lies in the model's
*typical set*: close to the bits/dim of in-distribution data, from either side.

Mathematical details:

With in-distribution held-out bits/dim `b_1 .. b_N` (the reference) and `H = mean(b)`, a batch
of M images with bits/dim `x_1 .. x_M` has the statistic

    s = | mean(x) - H |

and is flagged out-of-distribution when `s > eps_M`. The threshold `eps_M` is chosen by
bootstrap on the reference: K batches of M reference values drawn with replacement give K
statistics, and `eps_M` is their `1 - alpha` quantile, so that in-distribution batches are
flagged at the false-positive rate `alpha`. For M = 1 the statistic `|x - H|` is the
per-image score. The paper takes `H` from the training set; here `H` and the bootstrap both
use held-out images (the validation split), so that a model that overfits does not flag its
own test data.

`train.py` stores the reference in the run folder (`typicality.json`, `save_reference`): the
bits/dim of its validation images (the test images when it has no validation split) at the
bin centres, as `keras_flow.scoring` scores images.

Example:
    >>> reference = typicality.load_reference("runs/fashion-glow")
    >>> bits = scoring.score_images(scorer, images)["bits_per_dim"]
    >>> reference.test(bits, batch_size=10).outside          # one flag per batch of 10

Reference:
    Nalisnick, Matsukawa, Teh, Lakshminarayanan, "Detecting Out-of-Distribution Inputs to Deep
    Generative Models Using Typicality", arXiv:1906.02994 (2019); Nalisnick et al., "Do Deep
    Generative Models Know What They Don't Know?", ICLR 2019, arXiv:1810.09136.
"""

import dataclasses
from pathlib import Path

import numpy as np

from keras_flow import files

REFERENCE_FILE = "typicality.json"
FORMAT = 1


@dataclasses.dataclass(frozen=True)
class BatchTest:
    """The typicality test of consecutive batches of M images.

    Attributes:
        batch_size: M.
        threshold: `eps_M`.
        means: each batch's mean bits/dim, `[num_batches]`.
        statistics: `|mean - H|` of each batch.
        outside: bool, True where a batch is flagged out-of-distribution.
    """

    batch_size: int
    threshold: float
    means: np.ndarray
    statistics: np.ndarray
    outside: np.ndarray

    @property
    def rate(self):
        """The fraction of batches flagged."""
        return float(np.mean(self.outside)) if len(self.outside) else float("nan")


@dataclasses.dataclass(frozen=True)
class Reference:
    """In-distribution bits/dim that define the typical set.

    Attributes:
        bits_per_dim: float64 `[N]`, held-out in-distribution images' bits/dim (bin centres).
        split: where they came from, e.g. `"validation"`.
        n_bits: bits per channel of the scored images.
    """

    bits_per_dim: np.ndarray
    split: str = "validation"
    n_bits: int = 8

    def __post_init__(self):
        values = np.asarray(self.bits_per_dim, np.float64).reshape(-1)
        if len(values) < 2 or not np.all(np.isfinite(values)):
            raise ValueError(
                f"A typicality reference needs at least 2 finite bits/dim values; received "
                f"{len(values)} ({int(np.sum(~np.isfinite(values)))} non-finite).")
        object.__setattr__(self, "bits_per_dim", values)

    @property
    def mean(self):
        """`H`, the typical bits/dim."""
        return float(np.mean(self.bits_per_dim))

    @property
    def std(self):
        return float(np.std(self.bits_per_dim))

    def scores(self, bits_per_dim):
        """Per-image scores `|x - H|` (the statistic at M = 1); larger = less typical."""
        return np.abs(np.asarray(bits_per_dim, np.float64) - self.mean)

    def threshold(self, batch_size, false_positive_rate=0.01, num_bootstrap=10_000, seed=0):
        """`eps_M`: the `1 - false_positive_rate` quantile of `|mean - H|` over
        `num_bootstrap` batches of `batch_size` reference values drawn with replacement."""
        _check_batch_size(batch_size)
        if not 0 < false_positive_rate < 1:
            raise ValueError(f"false_positive_rate must be in (0, 1); received "
                             f"{false_positive_rate!r}.")
        rng = np.random.default_rng(seed)
        draws = rng.choice(self.bits_per_dim, size=(int(num_bootstrap), batch_size))
        statistics = np.abs(draws.mean(axis=1) - self.mean)
        return float(np.quantile(statistics, 1.0 - false_positive_rate))

    def test(self, bits_per_dim, batch_size, false_positive_rate=0.01, **bootstrap):
        """The test of the consecutive batches of `batch_size` images in `bits_per_dim` (a
        last incomplete batch is left out). `bootstrap`: `num_bootstrap`, `seed` of
        `threshold`."""
        bits = np.asarray(bits_per_dim, np.float64).reshape(-1)
        _check_batch_size(batch_size)
        count = len(bits) // batch_size
        means = bits[:count * batch_size].reshape(count, batch_size).mean(axis=1)
        return self._batch_test(means, batch_size, false_positive_rate, bootstrap)

    def detection_rate(self, bits_per_dim, batch_size, false_positive_rate=0.01,
                       num_batches=1000, seed=0, **bootstrap):
        """The fraction of `num_batches` random batches of `batch_size` images (each drawn
        without replacement from `bits_per_dim`) that the test flags: the true-positive rate
        for out-of-distribution images, the false-positive rate for in-distribution ones."""
        bits = np.asarray(bits_per_dim, np.float64).reshape(-1)
        _check_batch_size(batch_size)
        if batch_size > len(bits):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(bits)} images given.")
        rng = np.random.default_rng(seed)
        means = np.array([rng.choice(bits, batch_size, replace=False).mean()
                          for _ in range(num_batches)])
        return self._batch_test(means, batch_size, false_positive_rate, bootstrap).rate

    def _batch_test(self, means, batch_size, false_positive_rate, bootstrap):
        threshold = self.threshold(batch_size, false_positive_rate, **bootstrap)
        statistics = np.abs(means - self.mean)
        return BatchTest(batch_size, threshold, means, statistics, statistics > threshold)

    def save(self, path):
        """Writes the reference as JSON to `path` (atomically)."""
        files.write_json(path, dict(format=FORMAT, split=self.split, n_bits=self.n_bits,
                                    count=len(self.bits_per_dim), mean=self.mean,
                                    std=self.std, bits_per_dim=self.bits_per_dim.tolist()))
        return Path(path)


def detection_table(reference, in_distribution, out_of_distribution, batch_sizes=(1, 10, 100),
                    false_positive_rate=0.01, num_batches=1000, seed=0):
    """The test's true- and false-positive rates at each batch size M (`detection_rate` on
    `num_batches` random batches of M): rows `{"batch_size", "threshold",
    "true_positive_rate", "false_positive_rate"}`, the first from the out-of-distribution
    bits/dim, the second from held-out in-distribution bits/dim (not the reference's)."""
    rows = []
    for size in batch_sizes:
        rates = [reference.detection_rate(bits, size, false_positive_rate, num_batches, seed)
                 for bits in (out_of_distribution, in_distribution)]
        rows.append(dict(batch_size=size,
                         threshold=reference.threshold(size, false_positive_rate),
                         true_positive_rate=rates[0], false_positive_rate=rates[1]))
    return rows


def load_reference(path):
    """The `Reference` in a run folder (its `typicality.json`) or in a JSON file.

    Raises:
        FileNotFoundError: when there is none, with what to do.
        ValueError: for a file that is not a reference.
    """
    path = Path(path)
    file = path / REFERENCE_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(
            f"No typicality reference at {file}: train.py writes {REFERENCE_FILE} in the run "
            "folder when it finishes; for an older run, write one with "
            "keras_flow.typicality.save_reference(model, data, folder).")
    try:
        saved = files.read_json(file)
        return Reference(saved["bits_per_dim"], saved.get("split", "validation"),
                         int(saved.get("n_bits", 8)))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{file} is not a typicality reference ({error}).") from None


def reference_from_images(scorer, images, split="validation"):
    """The `Reference` of uint8 in-distribution images scored by `scorer`
    (`keras_flow.scoring`)."""
    from keras_flow import scoring

    bits = scoring.score_images(scorer, images)[scoring.BITS]
    return Reference(bits, split, scorer.n_bits)


def save_reference(model, data, out):
    """Scores the held-out split of `data` (a `keras_flow.data.FlowData`: validation, else
    test) with `model` and writes `out/typicality.json`; returns the `Reference`, or None when
    `data` has no held-out images or the model is class-conditional (its bits/dim depend
    on the label, so a label-free reference would not describe it)."""
    from keras_flow import scoring

    split = next((name for name, count in (("validation", data.num_validation),
                                           ("test", data.num_test)) if count >= 2), None)
    if split is None or model.num_classes:
        return None
    reference = reference_from_images(scoring.ModelScorer(model), data.raw_images(split), split)
    reference.save(Path(out) / REFERENCE_FILE)
    return reference


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or (
            batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer; received {batch_size!r}.")

"""Out-of-distribution detection: a Glow trained on Fashion-MNIST against digits.

    python benchmarks/ood_detection.py RUN
    python benchmarks/ood_detection.py RUN --fpr 0.01 --batch-sizes 1,10,100

RUN is a `train.py` run folder (its `model.keras` or `export/`, and the `typicality.json`
that train.py writes), trained e.g. with W2 of benchmarks/fashion_mnist.py:

    python3 train.py --dataset idx:/usr/share/datasets/fashion-mnist --fit pad --preset none \\
        --levels 3 --depth 8 --hidden-width 128 --batch-size 64 --max-seconds 600 --out RUN

In-distribution: the Fashion-MNIST test set (Debian's dataset-fashion-mnist, IDX files in
/usr/share/datasets/fashion-mnist; without it the script prints a SKIP line and exits 0).
Out-of-distribution: `--ood digits` (default), scikit-learn's 1,797 embedded 8x8 digits
upsampled to 28x28 (`--ood-image-size`) and zero-padded to 32x32 like Fashion-MNIST, or any
other `--dataset` source (e.g. `idx:DIR` of MNIST). Images are scored at bin centres
(`keras_flow.scoring`). Printed, as JSON lines: the mean bits/dim of both sets and the fraction
of out-of-distribution images that score *lower* bits/dim (higher likelihood) than the
median in-distribution image (the surprise of Nalisnick et al. 2019); then, per batch size M,
the typicality test's threshold and its true- and false-positive rates over `--num-batches`
random batches (`keras_flow.typicality.detection_table`).
"""

import argparse
import os
import sys
import time
from pathlib import Path

DATA_DIR = "/usr/share/datasets/fashion-mnist"


def _sizes(text):
    return [int(size) for size in text.split(",") if size.strip()]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", help="train.py run folder of a Glow trained on Fashion-MNIST")
    parser.add_argument("--dataset", default=f"idx:{DATA_DIR}",
                        help=f"in-distribution source (default: idx:{DATA_DIR})")
    parser.add_argument("--ood", default="digits", help="out-of-distribution source "
                        "(default: digits)")
    parser.add_argument("--ood-image-size", type=int, default=28,
                        help="resize the out-of-distribution images to this size before "
                        "padding (default: 28, MNIST's; 0: keep)")
    parser.add_argument("--fpr", type=float, default=0.01,
                        help="false-positive rate of the test (default: 0.01)")
    parser.add_argument("--batch-sizes", type=_sizes, default=[1, 10, 100],
                        help="batch sizes M (default: 1,10,100)")
    parser.add_argument("--num-batches", type=int, default=1000,
                        help="random batches per rate (default: 1000)")
    parser.add_argument("--out", default=None, help="also append the JSON lines to this file")
    return parser.parse_args(argv)


def has_data(dataset):
    if not dataset.startswith("idx:"):
        return True
    folder = Path(dataset.partition(":")[2])
    return any((folder / f"train-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz"))


def main(argv=None):
    args = parse_args(argv)
    if not has_data(args.dataset):
        print(f"SKIP: {args.dataset} not found; install Debian's dataset-fashion-mnist "
              "(apt-get install dataset-fashion-mnist) or pass --dataset.")
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    from keras_flow import scoring
    from keras_flow import typicality

    import jsonl  # benchmarks/, the script's own folder

    report = jsonl.reporter(args.out)

    started = time.monotonic()
    reference = typicality.load_reference(args.run)
    scorer = scoring.load_scorer(args.run)
    bits = {}
    for name, source, size in (("in", args.dataset, None),
                               ("ood", args.ood, args.ood_image_size or None)):
        found = scoring.read_images(source, scorer.image_shape, "test" if name == "in" else "all",
                                    image_size=size)
        bits[name] = scoring.score_images(scorer, found.images)[scoring.BITS]
    report({"benchmark": "ood_detection", "run": str(args.run), "in": args.dataset,
            "ood": args.ood, "ood_image_size": args.ood_image_size, "fpr": args.fpr,
            "reference": {"split": reference.split, "count": len(reference.bits_per_dim),
                          "mean": round(reference.mean, 4), "std": round(reference.std, 4)},
            "in_mean_bits_per_dim": round(float(np.mean(bits["in"])), 4),
            "ood_mean_bits_per_dim": round(float(np.mean(bits["ood"])), 4),
            "ood_below_in_median": round(float(np.mean(bits["ood"] < np.median(bits["in"]))), 4),
            "images": {"in": len(bits["in"]), "ood": len(bits["ood"])},
            "date": time.strftime("%Y-%m-%d")})
    rows = typicality.detection_table(reference, bits["in"], bits["ood"], args.batch_sizes,
                                      args.fpr, args.num_batches)
    for row in rows:
        report({key: round(value, 4) if isinstance(value, float) else value
                for key, value in row.items()})
    report({"summary": {f"M={row['batch_size']}": {"tpr": round(row["true_positive_rate"], 3),
                                                    "fpr": round(row["false_positive_rate"], 3)}
                        for row in rows}, "seconds": round(time.monotonic() - started, 1)})
    return 0


if __name__ == "__main__":
    sys.exit(main())

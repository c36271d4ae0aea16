"""Scores images with a trained flow: bits/dim per image, and the typicality test.

    python -m keras_flow.score MODEL --dataset SOURCE [--csv FILE] [--reference RUN]
    python -m keras_flow.score runs/fmnist --dataset idx:/usr/share/datasets/fashion-mnist \\
        --csv scores.csv --reference runs/fmnist

MODEL is a `train.py` run folder, a `.keras` file, or a SavedModel written by
`keras_flow.export` (scored with TensorFlow alone). SOURCE is any `--dataset` of `train.py`
(`digits`, `folder:PATH`, `npz:PATH`, `idx:DIR`, a TFDS name); its images are fitted to the
model's size (`--fit pad` zero-pads 28x28 to 32x32, as training did). One CSV row per image
(`split`, `index`, `file` for folders, `label`, `bits_per_dim`, the per-level terms, and with
`--reference` the typicality score `|bits/dim - H|` and whether it lies outside the typical
set) goes to FILE, written whole or not at all, or to stdout; a summary follows (on stderr
when the rows go to stdout). With `--reference RUN` (a run folder's `typicality.json`) the
summary gives the typicality test (`keras_flow.typicality`) at each `--test-batch-sizes`.
Invalid arguments or data end with one line `error: <message>` and exit status 2.
"""

import argparse
import csv
import io
import os
import sys

from keras_flow import files
from keras_flow.cli import OneLineErrorParser
from keras_flow.cli import one_line

PROG = "python -m keras_flow.score"


def _sizes(text):
    try:
        sizes = [int(size) for size in text.split(",") if size.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 1,10,100; got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be >= 1; got {text!r}")
    return sizes


def build_parser():
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("model", help="a train.py run folder, a .keras file, or a SavedModel "
                        "folder written by keras_flow.export")
    parser.add_argument("--dataset", default="digits",
                        help="image source: digits, folder:PATH, npz:PATH, idx:DIR or a TFDS "
                        "name (default: digits)")
    parser.add_argument("--split", default="test", choices=("test", "train", "all"),
                        help="the source's test images (all images of a source without a "
                        "test split), its training images, or both (default: test)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="resize images to SIZE x SIZE first (default: keep)")
    parser.add_argument("--fit", default="pad", choices=("pad", "resize", "error"),
                        help="images smaller than the model's: zero-pad, resize up to it, or "
                        "stop with an error (default: pad)")
    parser.add_argument("--on-bad-file", default="skip", choices=("skip", "error"),
                        help="folder:PATH images that cannot be read (default: skip)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per forward pass (default: 256)")
    parser.add_argument("--csv", default=None,
                        help="write the rows to this CSV file (default: stdout)")
    parser.add_argument("--reference", default=None, metavar="RUN",
                        help="run folder (or typicality.json) with the in-distribution "
                        "reference: adds the typicality test (default: none)")
    parser.add_argument("--fpr", type=float, default=0.01,
                        help="false-positive rate of the typicality test (default: 0.01)")
    parser.add_argument("--test-batch-sizes", type=_sizes, default=[1, 10, 100],
                        metavar="M1,M2,...",
                        help="batch sizes of the typicality test's summary (default: 1,10,100)")
    return parser


def _argument_problem(args):
    from keras_flow import scoring

    problem = scoring.model_problem(args.model)
    if problem:
        return problem
    if args.batch_size < 1:
        return f"--batch-size must be >= 1; received {args.batch_size}"
    if args.image_size is not None and args.image_size < 1:
        return f"--image-size must be >= 1; received {args.image_size}"
    if not 0 < args.fpr < 1:
        return f"--fpr must be in (0, 1); received {args.fpr}"
    if args.csv is not None:
        if os.path.isdir(args.csv):
            return f"--csv {args.csv!r} is a folder; name a file in it"
        try:
            files.check_folder_path(os.path.dirname(os.path.abspath(args.csv)), "--csv folder")
        except ValueError as error:
            return str(error)
    return None


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = _argument_problem(args)
    if problem:
        parser.error(problem)
    import tensorflow as tf

    try:
        return run(args)
    except (ValueError, OSError, TypeError, tf.errors.OpError) as error:
        parser.error(_one_line(error))


def run(args):
    from keras_flow import scoring
    from keras_flow import typicality

    reference = None if args.reference is None else typicality.load_reference(args.reference)
    scorer = scoring.load_scorer(args.model, args.batch_size)
    if reference is not None and reference.n_bits != scorer.n_bits:
        raise ValueError(f"The reference holds {reference.n_bits}-bit bits/dim, the model "
                         f"scores {scorer.n_bits}-bit images; use the model's own run folder.")
    found = scoring.read_images(args.dataset, scorer.image_shape, args.split, args.image_size,
                                args.fit, args.on_bad_file)
    if scorer.num_classes and found.labels is None:
        raise ValueError(
            f"The model is class-conditional ({scorer.num_classes} classes) and {args.dataset!r} "
            "has no labels; score a labelled source (folder: one sub-folder per class; npz: y).")
    columns = scoring.score_images(
        scorer, found.images, found.labels if scorer.num_classes else None, _progress)
    if reference is not None:
        columns["typicality"] = reference.scores(columns[scoring.BITS])
        columns["outside"] = columns["typicality"] > reference.threshold(1, args.fpr)
    text = _csv_text({**found.ids, **columns})
    if args.csv is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        files.write_text(args.csv, text)
    summary = _summary(args, found, columns, reference)
    print(summary, file=sys.stdout if args.csv else sys.stderr, flush=True)
    return 0


def _csv_text(columns):
    stream = io.StringIO()
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(list(columns))
    for row in zip(*columns.values()):
        writer.writerow([_cell(value) for value in row])
    return stream.getvalue()


def _cell(value):
    if isinstance(value, (bool, str)) or type(value).__name__ == "bool_":
        return str(bool(value)).lower() if not isinstance(value, str) else value
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        return f"{float(value):.6f}"
    return str(value)


def _summary(args, found, columns, reference):
    from keras_flow import scoring

    bits = columns[scoring.BITS]
    lines = [f"{len(bits)} images of {args.dataset} ({args.split}) scored by {args.model}"
             + (f"; rows in {args.csv}" if args.csv else "")]
    lines.append(f"{'column':16s}{'mean':>10s}{'std':>10s}{'min':>10s}{'median':>10s}"
                 f"{'max':>10s}")
    for name, stats in scoring.summary(
            {k: v for k, v in columns.items() if k not in ("typicality", "outside")}).items():
        lines.append(f"{name:16s}" + "".join(f"{value:10.4f}" for value in stats))
    if reference is not None:
        lines.append(f"typicality: reference H = {reference.mean:.4f} bits/dim "
                     f"(std {reference.std:.4f}, {len(reference.bits_per_dim)} "
                     f"{reference.split} images), false-positive rate {args.fpr:g}")
        for size in args.test_batch_sizes:
            if size > len(bits):
                lines.append(f"  M = {size}: fewer images than that")
                continue
            test = reference.test(bits, size, args.fpr)
            lines.append(f"  M = {size}: threshold {test.threshold:.4f}; "
                         f"{int(test.outside.sum())} of {len(test.outside)} batches outside "
                         f"the typical set ({test.rate:.1%})")
    return "\n".join(lines)


def _progress(done, total):
    width = 30
    filled = width * done // total
    sys.stderr.write(f"\r[{'=' * filled}{'.' * (width - filled)}] {done}/{total} images")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def _one_line(error):
    """The informative line of an error (`keras_flow.cli.one_line`), whitespace collapsed."""
    return " ".join(one_line(error).split())


if __name__ == "__main__":
    sys.exit(main())

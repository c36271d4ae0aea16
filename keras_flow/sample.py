"""Writes a PNG grid of samples from an export (`keras_flow.export`), without the model code.

    python -m keras_flow.sample EXPORT_DIR --num 64 --temperature 0.7 --out grid.png [--seed N]

Uses only TensorFlow, NumPy and Pillow: the export is loaded with `tf.saved_model.load` and its
`sample` endpoint (`sample_seeded` with `--seed`, reproducible) is called; a class-conditional
export gets `--label K` for every sample, or labels 0, 1, 2, ... in turn. Invalid arguments end
with a one-line error and exit status 2.
"""

import os
import sys

from keras_flow import files
from keras_flow.cli import OneLineErrorParser
from keras_flow.cli import one_line
from keras_flow.image_grid import make_grid
from keras_flow.image_grid import save_png

PROG = "python -m keras_flow.sample"


def parse_args(argv=None):
    parser = OneLineErrorParser(prog=PROG, description=__doc__.split("\n")[0])
    parser.add_argument("export_dir", help="directory written by keras_flow.export")
    parser.add_argument("--num", type=int, default=64, help="number of samples (64)")
    parser.add_argument("--temperature", type=float, default=0.7,
                        help="std of the latent noise, >= 0 (0.7)")
    parser.add_argument("--out", default="samples.png", help="PNG file to write (samples.png)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for reproducible samples (default: fresh randomness)")
    parser.add_argument("--columns", type=int, default=None,
                        help="images per row (default: a near-square grid)")
    parser.add_argument("--label", type=int, default=None,
                        help="class of every sample, for a class-conditional export")
    args = parser.parse_args(argv)
    problem = _argument_problem(args)
    if problem:
        parser.error(problem)
    return args, parser


def _argument_problem(args):
    if not os.path.isdir(args.export_dir):
        return f"export directory {args.export_dir!r} does not exist"
    if not os.path.isfile(os.path.join(args.export_dir, "saved_model.pb")):
        return (f"{args.export_dir!r} is not a SavedModel (no saved_model.pb); pass a "
                "directory written by keras_flow.export")
    if args.num <= 0:
        return f"--num must be > 0; received {args.num}"
    if not args.temperature >= 0:
        return f"--temperature must be >= 0; received {args.temperature}"
    if args.columns is not None and args.columns < 1:
        return f"--columns must be >= 1; received {args.columns}"
    if args.seed is not None and not -2 ** 31 <= args.seed < 2 ** 31:
        return f"--seed must fit in 32 bits (-2147483648..2147483647); received {args.seed}"
    return _out_problem(args.out)


def _out_problem(out):
    """Why the grid cannot be written to `out`, or None."""
    if os.path.isdir(out):
        return (f"--out {out!r} is a folder; name a file in it, such as "
                f"{os.path.join(out, 'grid.png')!r}")
    if not out.lower().endswith(".png"):
        return f"--out must name a .png file (the grid is written as PNG); received {out!r}"
    try:
        files.check_folder_path(os.path.dirname(os.path.abspath(out)), "--out folder")
    except ValueError as error:
        return str(error)
    return None


def draw_samples(loaded, num, temperature, seed=None, label=None):
    """Calls the export's `sample` (or `sample_seeded`) endpoint; returns uint8 numpy images."""
    import numpy as np
    import tensorflow as tf

    inputs = [tf.constant(num, tf.int32), tf.constant(temperature, tf.float32)]
    if seed is not None:
        inputs.append(tf.constant(seed, tf.int32))
    num_classes = int(loaded.metadata()["num_classes"])
    if label is not None and not (num_classes and 0 <= label < num_classes):
        raise ValueError(f"--label {label} does not fit this export (num_classes={num_classes})")
    if num_classes:
        labels = np.full(num, label) if label is not None else np.arange(num) % num_classes
        inputs.append(tf.constant(labels, tf.int32))
    endpoint = loaded.sample if seed is None else loaded.sample_seeded
    return endpoint(*inputs).numpy()


def main(argv=None):
    args, parser = parse_args(argv)
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(args.export_dir)
        images = draw_samples(loaded, args.num, args.temperature, args.seed, args.label)
    except (ValueError, OSError, AttributeError, tf.errors.OpError) as error:
        parser.error(one_line(error))
    grid = make_grid(images, args.columns)
    parent = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(parent, exist_ok=True)
    save_png(grid, args.out)
    print(f"wrote {args.out}: {len(images)} samples, grid {grid.shape[1]}x{grid.shape[0]} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())

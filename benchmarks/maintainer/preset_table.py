"""The preset table of docs/models.md: every Glow and RealNVP preset built, with its parameters.

    python benchmarks/maintainer/preset_table.py                # Markdown table (~1-2 minutes)
    python benchmarks/maintainer/preset_table.py --check-sizes  # also asserts the counts do not
                                                                # depend on the image size

Each preset is built at its own image shape (weights only, no forward pass), one at a time and
deleted before the next; `parameters` is `model.count_params()` (trainable and non-trainable
weights: Glow's fixed LU permutations and signs, actnorm flags; RealNVP's batch-norm moving
statistics), `trainable` the trainable part. No convolution kernel depends on the image's
height or width, so the counts are those of any image size the preset's levels allow;
`--check-sizes` verifies it against a build at the smallest such size.
"""

import argparse
import gc
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_flow import Glow  # noqa: E402
from keras_flow import RealNVP  # noqa: E402
from keras_flow.models import GLOW_PRESETS  # noqa: E402
from keras_flow.models import REALNVP_PRESETS  # noqa: E402

HEADER = ("| model | preset | image shape | L | K / res. blocks | width | coupling | n_bits "
          "| batch | parameters | trainable |")


def trainable_count(model):
    return sum(int(keras.ops.size(w)) for w in model.trainable_weights)


def smallest_shape(model_class, preset):
    """The smallest image the preset's levels allow (Glow: 2**L, RealNVP: 2**(L-1))."""
    levels = preset["levels"] - (1 if model_class is RealNVP else 0)
    side = 2 ** levels
    return (side, side, preset["image_shape"][-1])


def preset_row(model_class, name, preset, check_sizes):
    """One Markdown row; builds the preset (and, with `check_sizes`, a small copy)."""
    model = model_class.from_preset(name)
    count, trainable = model.count_params(), trainable_count(model)
    del model
    gc.collect()
    if check_sizes:
        small = model_class.from_preset(name, image_shape=smallest_shape(model_class, preset))
        assert small.count_params() == count, (name, small.count_params(), count)
        del small
        gc.collect()
    is_glow = model_class is Glow
    shape = "x".join(str(d) for d in preset["image_shape"])
    cells = [model_class.__name__, f"`{name}`", shape, preset["levels"],
             preset["depth"] if is_glow else preset["residual_blocks"], preset["hidden_width"],
             preset["coupling"] if is_glow else "affine (tanh)", preset["n_bits"],
             preset["batch_size"], f"{count:,}", f"{trainable:,}"]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check-sizes", action="store_true",
                        help="assert each count equals that of a build at the smallest size")
    args = parser.parse_args()
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for model_class, presets in ((Glow, GLOW_PRESETS), (RealNVP, REALNVP_PRESETS)):
        for name, preset in presets.items():
            print(preset_row(model_class, name, preset, args.check_sizes), flush=True)


if __name__ == "__main__":
    main()

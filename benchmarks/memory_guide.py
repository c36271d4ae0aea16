"""What fits on one device: parameters, training memory per image and the largest batch, per preset.

    python benchmarks/memory_guide.py              # Markdown table (about a minute on 2 CPUs)
    python benchmarks/memory_guide.py --json FILE  # also the figures as JSON

For every preset of `keras_flow.models.presets` (GLOW_PRESETS, REALNVP_PRESETS):

- parameters: exact. RealNVP is built; Glow is built with depth 1 and 2 (its count is linear
  in the depth K, so `count(K) = count(1) + (K - 1) (count(2) - count(1))`), which avoids
  building celeba_hq_256's 192 steps (tests/test_distribute.py checks both against
  `model.count_params()`).
- activation memory per image for training: an analytic estimate, the tensors that
  TensorFlow's autodiff keeps from the forward pass for the backward pass (`RULES`), plus
  the backward pass's transient of one step (its activations' gradients). float32; mixed
  bf16 (compute-dtype tensors in 2 bytes, the float32 log-scale and prior terms in 4); and
  Glow with `remat=True` (float32), which keeps each step's input and recomputes one step at
  a time (so two steps' worth at the peak).
- the largest batch per device (per replica: under `tf.distribute` the global batch is this
  times the number of replicas) that fits in 16, 40 and 80 GiB: `USABLE` of the memory, less
  the fixed part (float32 weights + their gradients + the two Adam/Adamax slots, i.e. 16 bytes
  per trainable parameter and 4 per non-trainable one; mixed precision keeps float32 weights),
  divided by the activation memory per image. With remat the fixed part has 4 more bytes per
  trainable parameter: benchmarks/memory.py measured that the recomputing step holds about one
  more weights-sized set of tensors (+204 MiB at cifar10, whose weights take 171 MiB). An EMA of
  the weights (`--ema`) adds 4 bytes per trainable parameter. Not counted: cuDNN workspaces,
  the framework's own buffers and fragmentation (part of the `USABLE` margin).

Checked on the CPU (benchmarks/memory.py, cifar10, traced gradient step): 45.3 MiB per image
measured against 46.0 MiB here without remat, 1.5 MiB against 2.8 MiB with it.

No GPU was at hand when this was written: the batch limits are computed, not measured.
"""

import argparse
import dataclasses
import gc
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import keras  # noqa: E402

from keras_flow import Glow  # noqa: E402
from keras_flow import RealNVP  # noqa: E402
from keras_flow.models import GLOW_PRESETS  # noqa: E402
from keras_flow.models import REALNVP_PRESETS  # noqa: E402
from keras_flow.models.presets import preset_config  # noqa: E402
from memory_rules import GIB  # noqa: E402
from memory_rules import USABLE  # noqa: E402
from memory_rules import fitting_batch  # noqa: E402
from memory_rules import fixed_bytes  # noqa: E402

DEVICE_GIB = (16, 40, 80)

RULES = """\
Kept for the backward pass, per image, per step of flow at h x w x c (hidden width m):
- a convolution (the 1x1 invertible one, each conv of a coupling network) keeps its input;
  an actnorm (x * scale + shift) its input; a ReLU its output (which is also the next
  convolution's input: counted once); an actnorm folded into the convolution before it (the
  coupling networks') nothing of its own; additions, concatenations, splits, reshapes and
  squeezes nothing.
- Glow step: actnorm input c, 1x1-conv input c (conv1x1 only), network input c/2, two hidden
  ReLU outputs 2m; affine coupling also x_b + shift (c/2) and, in float32, the log-scale
  terms (sigmoid input, clip input, exp output: 3 x c/2).
- Glow split: the prior's conv input c/2 and, in float32, the standardisation (c); top prior c.
- RealNVP coupling (the RealNVP code's ResNet with B blocks; batch norm in training mode
  keeps its input): the input batch norm's input (g given channels) and the ReLU of
  [r, -r] (2 g, plus the mask channel in checkerboard couplings: the first conv's input),
  first hidden map m, 4 m per block (batch-norm input, ReLU output, twice), the skip sum m
  and the output batch norm's ReLU output m (the 1x1 skip convs read maps already kept);
  float32 tanh output, clip input, exp output and x_b + shift (4 x changed channels); the
  batch-norm flow layer after it 2 c in float32 (input, centred input); the logit transform
  3 c.
- Backward transient: the gradients of one step's (coupling's) activations."""


@dataclasses.dataclass
class Activations:
    """Elements per image kept for the backward pass: in the compute dtype, and in float32."""

    compute: float = 0.0
    float32: float = 0.0

    def __add__(self, other):
        return Activations(self.compute + other.compute, self.float32 + other.float32)

    def __mul__(self, factor):
        return Activations(self.compute * factor, self.float32 * factor)

    def bytes(self, compute_bytes=4):
        return self.compute * compute_bytes + self.float32 * 4

    def max(self, other):
        return self if self.bytes() >= other.bytes() else other


# --- parameters ----------------------------------------------------------------------------

def trainable_count(model):
    return sum(int(keras.ops.size(w)) for w in model.trainable_weights)


def _counts(model_class, config):
    model = model_class(**config)
    counts = model.count_params(), trainable_count(model)
    del model
    gc.collect()
    return counts


def parameter_counts(model_class, config):
    """`(all weights, trainable weights)` of `model_class(**config)` (Glow: from depths 1, 2)."""
    if model_class is not Glow:
        return _counts(model_class, config)
    one = _counts(model_class, dict(config, depth=1))
    two = _counts(model_class, dict(config, depth=2))
    depth = config.get("depth", 32)
    return tuple(a + (depth - 1) * (b - a) for a, b in zip(one, two))


# --- activations ---------------------------------------------------------------------------

def glow_step(pixels, channels, width, coupling, permutation):
    conv1x1 = channels if permutation == "conv1x1" else 0
    affine = coupling == "affine"
    return Activations(
        compute=pixels * (channels + conv1x1 + channels / 2 + 2 * width
                          + (channels / 2 if affine else 0)),
        float32=pixels * (1.5 * channels if affine else 0))


def glow_activations(config, remat=False):
    """`Activations` per image at the training peak of the Glow of `config`."""
    height, width, channels = config["image_shape"]
    levels, depth = config["levels"], config.get("depth", 32)
    hidden = config.get("hidden_width", 512)
    kept, largest_step = Activations(), Activations()
    for level in range(levels):
        height, width, channels = height // 2, width // 2, channels * 4
        pixels = height * width
        step = glow_step(pixels, channels, hidden, config.get("coupling", "affine"),
                         config.get("permutation", "conv1x1"))
        largest_step = largest_step.max(step)
        kept = kept + (Activations(compute=pixels * channels) if remat else step) * depth
        if level < levels - 1:
            kept = kept + Activations(compute=pixels * channels / 2, float32=pixels * channels)
            channels -= channels // 2
    kept = kept + Activations(float32=height * width * channels)
    return kept + largest_step * (2 if remat else 1)


def realnvp_coupling(pixels, given, changed, width, blocks, mask):
    network_input = 3 * given + (1 if mask else 0)  # BN input g; ReLU([r, -r(, mask)]) 2 g (+1)
    return Activations(compute=pixels * (network_input + width * (3 + 4 * blocks)),
                       float32=pixels * 4 * changed)


def realnvp_activations(config):
    """`Activations` per image at the training peak of the RealNVP of `config`."""
    height, width, channels = config["image_shape"]
    levels, blocks = config["levels"], config["residual_blocks"]
    kept = Activations(float32=3 * height * width * channels)
    largest = Activations()
    for scale in range(levels):
        hidden = config["hidden_width"] * 2 ** scale
        pixels = height * width
        checker = realnvp_coupling(pixels, channels, channels, hidden, blocks, mask=True)
        batch_norm = Activations(float32=2 * pixels * channels)
        count = 4 if scale == levels - 1 else 3
        kept = kept + (checker + batch_norm) * count
        largest = largest.max(checker)
        if scale == levels - 1:
            break
        height, width, channels = height // 2, width // 2, channels * 4
        pixels = height * width
        half = channels // 2
        channel = realnvp_coupling(pixels, half, channels - half, 2 * hidden, blocks,
                                   mask=False)
        kept = kept + (channel + Activations(float32=2 * pixels * channels)) * 3
        largest = largest.max(channel)
        channels -= channels // 2
    return kept + largest


# --- what fits -----------------------------------------------------------------------------

def preset_figures(model_class, name, preset, ema=False):
    config = preset_config(GLOW_PRESETS if model_class is Glow else REALNVP_PRESETS, name, {})
    total, trainable = parameter_counts(model_class, config)
    if model_class is Glow:
        float32, remat = glow_activations(config), glow_activations(config, remat=True)
    else:
        float32, remat = realnvp_activations(config), None
    per_image = dict(float32=float32.bytes(4), bf16=float32.bytes(2),
                     remat=None if remat is None else remat.bytes(4))
    fixed = fixed_bytes(total, trainable, ema)
    batches = {mode: None if size is None else [
        fitting_batch(g * GIB, fixed_bytes(total, trainable, ema, mode == "remat"), size)
        for g in DEVICE_GIB] for mode, size in per_image.items()}
    return dict(model=model_class.__name__, preset=name, image_shape=preset["image_shape"],
                parameters=total, trainable=trainable, fixed_bytes=fixed,
                activation_bytes_per_image=per_image, largest_batch=batches,
                original_batch=preset["batch_size"])


HEADER = ("| model | preset | image | parameters | fixed | act./image fp32 · bf16 · remat "
          "| largest batch 16/40/80 GiB: fp32 · bf16 · fp32+remat | original global batch |")


def _mib(value):
    return "—" if value is None else f"{value / 2 ** 20:,.1f} MiB"


def _batches(values):
    return "—" if values is None else "/".join(str(v) for v in values)


def markdown_row(figures):
    shape = "x".join(str(d) for d in figures["image_shape"])
    per_image, batches = figures["activation_bytes_per_image"], figures["largest_batch"]
    cells = [figures["model"], f"`{figures['preset']}`", shape,
             f"{figures['parameters'] / 1e6:.1f} M", _mib(figures["fixed_bytes"]),
             " · ".join(_mib(per_image[m]) for m in ("float32", "bf16", "remat")),
             " · ".join(_batches(batches[m]) for m in ("float32", "bf16", "remat")),
             figures["original_batch"]]
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--ema", action="store_true", help="count an EMA copy of the weights")
    args = parser.parse_args()
    rows = []
    print(HEADER)
    print("|" + "---|" * (HEADER.count("|") - 1))
    for model_class, presets in ((Glow, GLOW_PRESETS), (RealNVP, REALNVP_PRESETS)):
        for name, preset in presets.items():
            rows.append(preset_figures(model_class, name, preset, args.ema))
            print(markdown_row(rows[-1]), flush=True)
    print(f"\nUsable memory: {USABLE:.0%} of the device. Activations:\n{RULES}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(rows=rows, usable=USABLE, rules=RULES), handle, indent=2)


if __name__ == "__main__":
    main()

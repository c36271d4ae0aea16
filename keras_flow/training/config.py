"""The configuration of a training run: `TrainConfig` (the flags of train.py), presets -> config,
and the checks of the options' values.

`resolve_config(TrainConfig(...))` fills every `None` from the recipe and the preset
(`preset="auto"`: the one named like the dataset), then from `DEFAULTS`, and raises
`ValueError` naming the first invalid option (`resolve_config` says in which order). The
choices of an option are imported from the module that defines them.
"""

import dataclasses
import re

from keras_flow.data import AUGMENTATIONS
from keras_flow.data import BAD_FILE_MODES
from keras_flow.data import FIT_MODES
from keras_flow.distribute import STRATEGIES
from keras_flow.layers.flow_step import COUPLINGS
from keras_flow.layers.flow_step import PERMUTATIONS
from keras_flow.models import GLOW_PRESETS
from keras_flow.models import REALNVP_PRESETS
from keras_flow.models import Glow
from keras_flow.models import RealNVP
from keras_flow.models.glow import SPLIT_PRIORS
from keras_flow.optimizers import OPTIMIZERS
from keras_flow.training.runtime import JIT
from keras_flow.training.runtime import POLICIES

MODELS = {"glow": (Glow, GLOW_PRESETS), "realnvp": (RealNVP, REALNVP_PRESETS)}
DEFAULTS = dict(n_bits=8, batch_size=64, lr=1e-3, epochs=10, warmup="1epoch", ema=0.0,
                optimizer="adamax", augment="none", budget_decay=False, mixed_precision="off",
                test_every_epoch=True)
# `--recipe`: `time-budget` trains with TIME_BUDGET_RECIPE, `openai` with openai/glow's
# settings (the presets' and DEFAULTS), `auto` picks time-budget when --max-seconds is given.
RECIPES = ("auto", "time-budget", "openai")
# The settings that measured best against a time budget: BENCHMARKS.md, "Quality against a
# time budget" (Fashion-MNIST, Glow W2, `--max-seconds 600` alone: 2.624-2.642 test bits/dim
# over three seeds; the peak rate from "The next tenth"). `mixed_precision` only
# where bf16 is native (`runtime.native_bfloat16`); `zero_log_scale_factor` for Glow only;
# the test set evaluated once, at the end, to leave the budget to training.
TIME_BUDGET_RECIPE = dict(optimizer="adam", lr=2.2e-3, warmup="200", beta_2=0.99,
                          clip_norm=100.0, budget_decay=True, mixed_precision="bf16",
                          zero_log_scale_factor=1.0, test_every_epoch=False)
# A preset's own optimisation (the RealNVP presets: the RealNVP code's Adam), kept under the
# time-budget recipe when the preset names its optimizer.
PRESET_OPTIMISATION = ("optimizer", "lr", "warmup", "beta_2", "clip_norm")
GLOW_ONLY = ("depth", "permutation", "coupling", "lu", "learn_top", "remat",
             "zero_log_scale_factor", "split_prior")


def _summary(values):
    """`values` as flags, e.g. `--lr 0.0015, --budget-decay` (the recipe's help)."""
    flags = []
    for key, value in values.items():
        flag = "--" + ("no-" if value is False else "") + key.replace("_", "-")
        if not isinstance(value, bool):
            flag += f" {value:g}" if isinstance(value, float) else f" {value}"
        flags.append(flag)
    return ", ".join(flags)


def _option(default, help, **metadata):
    return dataclasses.field(default=default, metadata=dict(help=help, **metadata))


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training run (the flags of `train.py`, same names with dashes).

    `None` means "from the preset, else the model's or training's default". Presets:
    `keras_flow.models.presets` (`preset="auto"` picks the one named like the dataset).
    """

    dataset: str = _option("digits", "image source: digits (embedded 8x8 digits), a TFDS "
                           "name (mnist, fashion_mnist, cifar10, celeb_a, ...), folder:PATH, "
                           "npz:PATH or idx:DIR")
    image_size: int = _option(None, "resize images to SIZE x SIZE first (default: keep)")
    fit: str = _option("pad", "when the size does not divide by 2**levels: zero-pad, resize "
                       "or stop with an error (never crop)", choices=FIT_MODES)
    on_bad_file: str = _option("skip", "folder:PATH images that cannot be read: skip them "
                               "(counted in a warning) or stop with an error naming the file",
                               choices=BAD_FILE_MODES)
    model: str = _option("glow", "flow architecture", choices=tuple(MODELS))
    preset: str = _option("auto", "named configuration (models/presets.py), 'auto' for the "
                          "one named like the dataset if any, or 'none'")
    recipe: str = _option("auto", "optimisation settings: time-budget (" + _summary(
        TIME_BUDGET_RECIPE) + "; bf16 only where native; docs/time-budget.md), openai "
        "(openai/glow's, and the preset's), auto: time-budget with --max-seconds, else openai; "
        "explicit flags always win", choices=RECIPES)
    levels: int = _option(None, "number of scales L (default: preset, else 3 / RealNVP 4)")
    depth: int = _option(None, "Glow: steps of flow per level K (default: preset, else 32)")
    hidden_width: int = _option(None, "coupling network width (default: preset, else 512 / "
                                "RealNVP 32)")
    residual_blocks: int = _option(None, "RealNVP: residual blocks per coupling network "
                                   "(default: preset, else 4)")
    permutation: str = _option(None, "Glow: channel permutation (default: conv1x1)",
                               choices=PERMUTATIONS)
    coupling: str = _option(None, "Glow: coupling (default: preset, else affine)",
                            choices=COUPLINGS)
    lu: bool = _option(None, "Glow: LU-decomposed 1x1 convolution (default: on)")
    learn_top: bool = _option(None, "Glow: learned top prior (default: on)")
    remat: bool = _option(None, "Glow: gradient checkpointing: each step of flow recomputes its "
                          "activations in the backward pass (about 1.3x the step time, a "
                          "fraction of the activation memory; default: off)")
    zero_log_scale_factor: float = _option(
        None, "Glow: log-scale multiplier of the zero-initialised convolutions (the couplings' "
        "last layer, the learned priors); 1 is steadier under Adam (default: 3, openai/glow's)")
    split_prior: str = _option(
        None, "Glow: prior of the half each level factors out: conditional on the kept half "
        "(openai/glow), unconditional (learned per channel, as normflows), or "
        "standard N(0, I) (default: conditional)", choices=SPLIT_PRIORS)
    conditional: bool = _option(False, "Glow: class-conditional prior (needs labels)")
    classifier_weight: float = _option(0.0, "Glow: weight of the class-prediction loss "
                                       "(openai/glow weight_y; needs --conditional)")
    n_bits: int = _option(None, "bits per colour channel kept, 1..8 (default: preset, else 8)")
    augment: str = _option(None, "training-batch augmentation: none, flip (left-right, as "
                           "RealNVP) or shift (openai/glow's random translation by up to a "
                           "tenth of the size; default: preset, else none)", choices=AUGMENTATIONS)
    optimizer: str = _option(None, "adamax: openai/glow's (beta2 = 1 - 1/steps_per_epoch)"
                             "; adam: Adam (with TensorFlow's fused update) (default: preset, "
                             "else adamax)", choices=OPTIMIZERS)
    lr: float = _option(None, "peak learning rate (default: preset, else 1e-3)")
    warmup: str = _option(None, "linear learning-rate warm-up: N steps, or 'Xepochs' / 'Xep' "
                          "(default: preset, else 1epoch; 0: none)")
    lr_decay_steps: int = _option(None, "cosine decay of the learning rate to 0 over this many "
                                  "steps after the warm-up (default: off, constant)")
    budget_decay: bool = _option(None, "cosine decay of the learning rate to 0 at "
                                 "--max-seconds of training (the time budget), or at the last "
                                 "epoch if that comes first, instead of over steps; needs "
                                 "--max-seconds (default: on with the time-budget recipe, "
                                 "else off)")
    clip_norm: float = _option(None, "clip gradients to this global norm (default: preset, "
                               "else off)")
    beta_2: float = _option(None, "the optimizer's second-moment decay (default: adam 0.999, "
                            "adamax 1 - 1/steps_per_epoch)")
    ema: float = _option(None, "momentum of an exponential moving average of the weights, "
                         "used for evaluation, samples and the saved model (default: preset, "
                         "else 0: off)")
    batch_size: int = _option(None, "global batch size (default: preset, else 64)")
    epochs: int = _option(None, "training epochs (default: with --max-seconds none, training "
                          "runs until the time is up; else preset, else 10)")
    steps_per_epoch: int = _option(None, "steps per epoch (default: preset, else one pass "
                                   "over the training split)")
    steps_per_execution: int = _option(
        1, "training steps per call of the compiled step (Keras's steps_per_execution), which "
        "saves each call's fixed cost; the per-step callbacks (progress, time limit, Ctrl-C, "
        "checkpoints, the non-finite check) then act every N steps. Must divide the steps per "
        "epoch; not with --strategy mirrored or multi-worker")
    seed: int = _option(0, "seed of the weights, data order and noise")
    max_seconds: float = _option(None, "stop training after this many seconds of wall-clock "
                                 "time, then evaluate, save and export as usual (default: no "
                                 "limit)")
    init_batch_size: int = _option(256, "training images for actnorm's data-dependent "
                                   "initialisation")
    out: str = _option(None, "output folder (default runs/<dataset>-<model>-<time>, or the "
                       "unfinished run of the same configuration, which is resumed)")
    overwrite: bool = _option(False, "start over in --out even if it holds another or a "
                              "finished run (deletes that run's files; other files stay)")
    checkpoint_every: int = _option(500, "steps between checkpoints (also at every epoch "
                                    "end; 0: epoch ends only)")
    mixed_precision: str = _option(None, "off: float32; bf16 / fp16: mixed precision "
                                   "(fp16 with loss scaling) (default: bf16 under the "
                                   "time-budget recipe on a GPU or a CPU with AMX or "
                                   "AVX512-BF16, else off)",
                                   choices=tuple(POLICIES))
    jit: str = _option("auto", "XLA compilation of the training step (auto: Keras decides; "
                       "off on CPU)", choices=tuple(JIT))
    strategy: str = _option("default", "tf.distribute strategy: default (one device), "
                            "mirrored (all local GPUs), multi-worker (TF_CONFIG; needs --out "
                            "on a shared file system), tpu", choices=STRATEGIES)
    cpu_devices: int = _option(None, "with --strategy mirrored on a machine without GPUs: "
                               "split the CPU into this many logical devices (replicas), for "
                               "testing")
    batch_shards: int = _option(0, "encode each batch as this many slices side by side, one "
                                "per CPU core, with TensorFlow running each op on one thread; "
                                "0: auto, without a GPU and with the default strategy one per "
                                "core while each keeps >= 16384 pixels (batch * H * W), else 1;"
                                " 1: off")
    validation_fraction: float = _option(0.1, "fraction of the training data held out to "
                                         "pick the best weights (0: keep the last weights)")
    test_every_epoch: bool = _option(None, "evaluate the test set at every epoch end (history, "
                                     "TensorBoard) as well as at the end (default: on; off "
                                     "under the time-budget recipe)")
    temperatures: tuple = _option((0.0, 0.5, 0.7, 0.8, 1.0), "sampling temperatures of the "
                                  "sample grids, comma-separated")
    num_samples: int = _option(64, "images per sample grid")
    verbose: int = _option(1, "0: quiet; 1: progress bar and messages; 2: one line per epoch")


def resolve_config(config, saved=None):
    """`config` with every `None` filled, then checked. An option given (not None) always
    stays; the others come from, first to last:

    1. the recipe's values (`recipe_values`: `TIME_BUDGET_RECIPE` under the time-budget
       recipe, none under openai's), except the `PRESET_OPTIMISATION` of a preset that names
       its optimizer (the RealNVP presets keep the RealNVP code's Adam, rate and clip);
    2. the preset's values;
    3. `DEFAULTS`.

    The clock is the budget: with `max_seconds` and no `epochs`, neither the preset's epochs
    nor the default 10 apply, and `epochs` stays None (training runs until the time is up).

    `saved`: the config.json of the run folder `config.out` names, if any; under
    `recipe="auto"` a run resumes with the recipe it was started with (`resolve_recipe`).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() needs a TrainConfig; got {type(config).__name__}.")
    _check_choices(config)
    values = dataclasses.asdict(config)
    values["preset"], preset = preset_values(config)
    values["recipe"] = resolve_recipe(config, saved)
    recipe = recipe_values(values["recipe"], config, preset)
    defaults = dict(DEFAULTS)
    if config.max_seconds is not None:  # the clock is the budget
        preset.pop("epochs", None)
        defaults.pop("epochs")
    for key, value in {**defaults, **preset, **recipe}.items():
        if values.get(key) is None:
            values[key] = value
    values["temperatures"] = tuple(float(t) for t in values["temperatures"])
    values["warmup"] = str(values["warmup"])
    resolved = TrainConfig(**values)
    _check_values(resolved)
    return resolved


def resolve_recipe(config, saved=None):
    """The recipe `config` trains with: `"time-budget"` or `"openai"`. `"auto"` is the recipe
    of the run in `saved` (its config.json, unless `config.overwrite`; a config.json from
    before recipes means openai), else time-budget with `max_seconds`, else openai."""
    if config.recipe != "auto":
        if config.recipe == "time-budget" and config.max_seconds is None:
            raise ValueError("The time-budget recipe needs the budget: give --max-seconds "
                             "(or --recipe openai).")
        return config.recipe
    if saved is not None and not config.overwrite:
        return saved.get("recipe", "openai")
    return "time-budget" if config.max_seconds is not None else "openai"


def recipe_values(recipe, config, preset=None):
    """The values `recipe` fills in (under the flags and before the preset's): the
    `TIME_BUDGET_RECIPE` for `"time-budget"`, without what a preset with its own optimizer
    keeps (`PRESET_OPTIMISATION`) or what the model lacks, and with bf16 only where it is
    native (`runtime.native_bfloat16`); `{}` for `"openai"`."""
    if recipe != "time-budget":
        return {}
    values = dict(TIME_BUDGET_RECIPE)
    if preset and "optimizer" in preset:
        for key in PRESET_OPTIMISATION:
            values.pop(key, None)
    if config.model != "glow":
        values = {key: value for key, value in values.items() if key not in GLOW_ONLY}
    if config.lr_decay_steps is not None or config.strategy == "multi-worker":
        values.pop("budget_decay")  # a decay over steps given, or clocks that differ
    if config.mixed_precision is None and values.get("mixed_precision") == "bf16":
        from keras_flow.training.runtime import native_bfloat16

        if not native_bfloat16(config.strategy)[0]:
            values["mixed_precision"] = "off"
    return values


def recipe_line(config):
    """One line for the start message: the recipe, the precision and why."""
    from keras_flow.training.runtime import native_bfloat16

    if config.recipe == "time-budget":
        recipe = "time-budget (docs/time-budget.md; --recipe openai for openai/glow's settings)"
    else:
        recipe = "openai (openai/glow's settings and the preset's)"
    precision = {"off": "float32", "bf16": "mixed bfloat16", "fp16": "mixed float16"}[
        config.mixed_precision]
    if config.recipe == "time-budget":
        native, where = native_bfloat16(config.strategy)
        precision += f" ({where} {'runs' if native else 'does not run'} bf16 natively)"
    return (f"Recipe: {recipe}; {config.optimizer} at lr {config.lr:g}, warm-up "
            f"{config.warmup}; precision: {precision}.")


_CONFIG_NAMES = {"learning_rate": "lr", "lu_decomposed": "lu"}


def preset_values(config):
    """`(name, values)`: the preset `config.preset` names ('auto': the one named like the
    dataset, if any) and its values under `TrainConfig` names; `("none", {})` for none."""
    _, presets = MODELS[config.model]
    name = config.preset
    if name == "auto":
        name = config.dataset if config.dataset in presets else "none"
    if name == "none":
        return name, {}
    if name not in presets:
        raise ValueError(f"Unknown {config.model} preset {name!r}; choose one of "
                         f"{sorted(presets)}, 'auto' or 'none'.")
    fields = {field.name for field in dataclasses.fields(TrainConfig)}
    values = {_CONFIG_NAMES.get(key, key): value for key, value in presets[name].items()}
    return name, {key: value for key, value in values.items() if key in fields}


def _check_choices(config):
    choices = {field.name: field.metadata["choices"] for field in dataclasses.fields(config)
               if "choices" in field.metadata}
    for name, allowed in choices.items():
        value = getattr(config, name)
        if value is not None and value not in allowed:
            raise ValueError(f"Unknown {name} {value!r}; choose one of {allowed}.")


def _check_values(config):
    """Raises ValueError naming the first out-of-range option."""
    positive = ("levels", "depth", "hidden_width", "residual_blocks", "batch_size", "epochs",
                "steps_per_epoch", "steps_per_execution", "init_batch_size", "num_samples",
                "image_size", "cpu_devices")
    for name in positive:
        value = getattr(config, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive integer; got {value!r}.")
    problems = [
        (config.lr <= 0, f"lr must be > 0; got {config.lr}."),
        (config.lr_decay_steps is not None and config.lr_decay_steps < 0,
         f"lr_decay_steps must be >= 0 (0: no decay); got {config.lr_decay_steps}."),
        (config.beta_2 is not None and not 0 < config.beta_2 < 1,
         f"beta_2 must be in (0, 1), e.g. 0.99; got {config.beta_2}."),
        (config.budget_decay and (config.max_seconds is None or config.lr_decay_steps),
         "budget_decay anneals the learning rate over --max-seconds: give --max-seconds, and "
         "drop --lr-decay-steps (one decay at a time)."),
        (config.budget_decay and config.strategy == "multi-worker",
         "budget_decay follows each process's own clock, which would give the workers "
         "different learning rates; use --lr-decay-steps with --strategy multi-worker."),
        (config.max_seconds is not None and not config.max_seconds > 0,
         f"max_seconds must be > 0; got {config.max_seconds}."),
        (config.checkpoint_every < 0,
         f"checkpoint_every must be >= 0 (0: epoch ends only); got {config.checkpoint_every}."),
        (config.batch_shards < 0,
         f"batch_shards must be >= 0 (0: auto, 1: off); got {config.batch_shards}."),
        (any(not t >= 0 for t in config.temperatures),
         f"temperatures must be >= 0; got {config.temperatures}."),
        (config.model == "realnvp" and (config.conditional or any(
            getattr(config, name) is not None for name in GLOW_ONLY)),
         f"{', '.join(GLOW_ONLY)} and conditional are Glow options; drop them for RealNVP."),
        (config.classifier_weight and not config.conditional,
         "classifier_weight > 0 needs a class-conditional model (conditional=True)."),
        (config.steps_per_execution > 1 and config.strategy in ("mirrored", "multi-worker"),
         f"steps_per_execution > 1 does not work with --strategy {config.strategy}: under "
         "MirroredStrategy Keras's loop of steps fails in TensorFlow ('You must feed a value "
         "for placeholder tensor', keras-team/keras#19246), and multi-worker's "
         "BackupAndRestore counts calls of the compiled step, not steps. Use "
         "--steps-per-execution 1."),
        (config.cpu_devices is not None and config.strategy != "mirrored",
         f"cpu_devices splits the CPU into replicas for --strategy mirrored; got strategy "
         f"{config.strategy!r} (add --strategy mirrored, or drop --cpu-devices)."),
        (config.strategy == "multi-worker" and config.out is None,
         "--strategy multi-worker needs --out: every worker must name the same output folder, "
         "on a file system all workers share (the chief writes the run there, worker i to "
         "<out>.worker-i, and all resume from the chief's checkpoints)."),
    ]
    for failed, message in problems:
        if failed:
            raise ValueError(message)
    parse_warmup(config.warmup, 1)


def parse_warmup(warmup, steps_per_epoch):
    """Warm-up steps from `"N"` (steps) or `"Xepochs"` / `"Xepoch"` / `"Xep"` (epochs)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*(ep|epoch|epochs)?\s*", str(warmup))
    if match is None:
        raise ValueError(f"warmup must be a number of steps (e.g. 500) or of epochs (e.g. "
                         f"'2epochs'); got {warmup!r}.")
    value, unit = float(match.group(1)), match.group(2)
    if unit is None and value != int(value):
        raise ValueError(f"warmup in steps must be a whole number; got {warmup!r} (write "
                         f"'{value}epochs' for epochs).")
    return int(round(value * steps_per_epoch)) if unit else int(value)


def say(config, message):
    """Prints `message` unless `config.verbose` is 0."""
    if config.verbose:
        print(message, flush=True)

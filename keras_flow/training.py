"""Training a flow from a configuration: data, model, optimiser, callbacks, outputs.

`train(TrainConfig(...))` is what `python train.py` runs:

1. Resolves the configuration (the preset's defaults under the explicit options), sets
   TensorFlow's threads for the batch shards (`keras_flow.cpu_threads`: one per CPU core by
   default), creates the `tf.distribute` strategy and picks the output folder; an unfinished
   run of the same configuration is resumed (under several workers: from the chief's
   checkpoints).
2. Loads the data (`keras_flow.data.load`), sets the dtype policy, and under the
   `tf.distribute` strategy builds the model, compiles it with openai/glow's Adamax (or Adam)
   behind a linear warm-up, then either restores the last checkpoint or initialises actnorm
   from `init_batch_size` training images.
3. Fits with the callbacks of `keras_flow.callbacks`: per epoch validation and test bits/dim,
   best weights by validation bits/dim, sample grids, the bits/dim curve, TensorBoard,
   checkpoints every `checkpoint_every` steps, and the `max_seconds` limit.
4. Loads the best weights (the EMA ones with `ema > 0`), evaluates them and writes
   `model.keras`, the final sample grids, the SavedModel export and, last, `metrics.json`.

Output folder (every file written atomically; TensorBoard event files are appended):

    config.json             the resolved configuration
    checkpoints/            ckpt-<step>.weights.h5 + state.json (model and optimizer state)
    best.weights.npz, best.json   best weights by validation bits/dim so far
    history.json            per-epoch metrics; bits_per_dim.png: their curves
    samples/                epoch_<n>_T<t>.png grids; samples_T<t>.png: final model's grids
    tensorboard/            scalars (train/, validation/) and sample images (samples/)
    model.keras             the final model (best weights)
    export/                 SavedModel for sampling without keras_flow (keras_flow.export)
    metrics.json            final figures; written last, so it marks a finished run
"""

import contextlib
import dataclasses
import math
import re
import shutil
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from keras_flow import callbacks as flow_callbacks
from keras_flow import cpu_features
from keras_flow import cpu_threads
from keras_flow import files
from keras_flow import interrupts
from keras_flow import numerics
from keras_flow import typicality
from keras_flow.models import GLOW_PRESETS
from keras_flow.models import REALNVP_PRESETS
from keras_flow.models import Glow
from keras_flow.models import RealNVP
from keras_flow.models.glow import SPLIT_PRIORS
from keras_flow.optimizers import OPTIMIZERS
from keras_flow.optimizers import make_optimizer

MODELS = {"glow": (Glow, GLOW_PRESETS), "realnvp": (RealNVP, REALNVP_PRESETS)}
POLICIES = {"off": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}
JIT = {"auto": "auto", "on": True, "off": False}
FIT_MODES = ("pad", "resize", "error")
STRATEGIES = ("default", "mirrored", "multi-worker", "tpu")
DEFAULTS = dict(n_bits=8, batch_size=64, lr=1e-3, epochs=10, warmup="1epoch", ema=0.0,
                optimizer="adamax", augment="none")
# Options that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("out", "epochs", "max_seconds", "checkpoint_every", "verbose", "overwrite",
                     "strategy", "cpu_devices", "jit", "remat", "batch_shards",
                     "steps_per_execution")
# ...and, when `out` names the folder, these too: to continue a run that diverged.
RECOVERY_CHANGES = ("lr", "clip_norm")
# What a run writes in its folder; `overwrite` deletes these, and nothing else.
RUN_FILES = ("config.json", "checkpoints", "samples", "tensorboard", "export", "model.keras",
             "metrics.json", "history.json", "best.json", "best.weights.npz",
             "bits_per_dim.png", "samples_T*.png")
BAD_FILE_MODES = ("skip", "error")
GLOW_ONLY = ("depth", "permutation", "coupling", "lu", "learn_top", "remat",
             "zero_log_scale_factor", "split_prior")


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
    levels: int = _option(None, "number of scales L (default: preset, else 3 / RealNVP 4)")
    depth: int = _option(None, "Glow: steps of flow per level K (default: preset, else 32)")
    hidden_width: int = _option(None, "coupling network width (default: preset, else 512 / "
                                "RealNVP 32)")
    residual_blocks: int = _option(None, "RealNVP: residual blocks per coupling network "
                                   "(default: preset, else 4)")
    permutation: str = _option(None, "Glow: channel permutation (default: conv1x1)",
                               choices=("reverse", "shuffle", "conv1x1"))
    coupling: str = _option(None, "Glow: coupling (default: preset, else affine)",
                            choices=("affine", "additive"))
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
                           "tenth of the size; default: preset, else none)",
                           choices=("none", "flip", "shift"))
    optimizer: str = _option(None, "adamax: openai/glow's (beta2 = 1 - 1/steps_per_epoch)"
                             "; adam: Adam (with TensorFlow's fused update) (default: preset, "
                             "else adamax)", choices=OPTIMIZERS)
    lr: float = _option(None, "peak learning rate (default: preset, else 1e-3)")
    warmup: str = _option(None, "linear learning-rate warm-up: N steps, or 'Xepochs' / 'Xep' "
                          "(default: preset, else 1epoch; 0: none)")
    lr_decay_steps: int = _option(None, "cosine decay of the learning rate to 0 over this many "
                                  "steps after the warm-up (default: off, constant)")
    budget_decay: bool = _option(False, "cosine decay of the learning rate to 0 at "
                                 "--max-seconds of training (the time budget) instead of over "
                                 "steps; needs --max-seconds")
    clip_norm: float = _option(None, "clip gradients to this global norm (default: off)")
    beta_2: float = _option(None, "the optimizer's second-moment decay (default: adam 0.999, "
                            "adamax 1 - 1/steps_per_epoch)")
    ema: float = _option(None, "momentum of an exponential moving average of the weights, "
                         "used for evaluation, samples and the saved model (default: preset, "
                         "else 0: off)")
    batch_size: int = _option(None, "global batch size (default: preset, else 64)")
    epochs: int = _option(None, "training epochs (default: preset, else 10)")
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
    mixed_precision: str = _option("off", "off: float32; bf16 / fp16: mixed precision "
                                   "(fp16 with loss scaling)", choices=tuple(POLICIES))
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
    temperatures: tuple = _option((0.0, 0.5, 0.7, 0.8, 1.0), "sampling temperatures of the "
                                  "sample grids, comma-separated")
    num_samples: int = _option(64, "images per sample grid")
    verbose: int = _option(1, "0: quiet; 1: progress bar and messages; 2: one line per epoch")


@dataclasses.dataclass
class _Plan:
    """What `train` derives from a resolved configuration and the data."""

    config: TrainConfig
    out: Path
    steps_per_epoch: int
    warmup_steps: int

    @property
    def total_steps(self):
        return self.config.epochs * self.steps_per_epoch


def train(config):
    """Trains a flow as `config` says and writes the output folder (module docstring).

    Args:
        config: a `TrainConfig`.

    Returns:
        The final metrics (also in `<out>/metrics.json`): `test_bits_per_dim`,
        `validation_bits_per_dim`, `train_bits_per_dim`, `epochs`, `steps`, `seconds`,
        `resumed`, ..., and `out`, the output folder.

    Raises:
        ValueError, FileNotFoundError, TypeError: for invalid options or data.
    """
    started = time.monotonic()
    config = resolve_config(config)
    cores = start_threads(config)
    warn_about_precision(config)
    # The strategy comes first: multi-worker collectives must be configured before TF runs ops.
    strategy = start_strategy(config)
    shared, out = output_folders(config, strategy)
    config = dataclasses.replace(config, out=str(shared))
    for folder in (out, out / "checkpoints", out / "samples"):
        files.remove_temporaries(folder)
    with dtype_policy(config.mixed_precision):
        data = load_data(config)
        config = resolve_batch_shards(config, data, cores)
        plan = make_plan(config, out, data)
        check_steps_per_execution(plan)  # before the model is built
        keras.utils.set_random_seed(config.seed)
        with strategy.scope():
            model = build_model(config, data)
            compile_model(model, plan)
            state = restore_checkpoint(model, shared, out, config)
            if state is None:
                initialize(model, data, config)
            else:
                check_steps_per_execution(plan, state)
        files.write_json(out / "config.json", dataclasses.asdict(config))
        _say(config, _start_message(plan, state, strategy.num_replicas_in_sync))
        fitted = fit(model, data, plan, state)
        return finish(model, data, plan, fitted, state, time.monotonic() - started)


def start_threads(config):
    """Sets TensorFlow's threads for `config.batch_shards` (`keras_flow.cpu_threads`) before
    its runtime starts. Returns the cores that automatic sharding (0) may use: all of them on
    a CPU-only machine with the default strategy, if the threads could still be set (one per
    op, one op per core at once); else 1."""
    if config.batch_shards:
        return cpu_threads.configure(config.batch_shards)
    if config.strategy != "default" or cpu_threads.has_gpu():
        return 1
    cores = cpu_threads.cpu_cores()
    return cores if cpu_threads.set_threads(cores) else 1


def warn_about_precision(config):
    """Warns when `config.mixed_precision` is bf16 on a CPU-only machine (no GPU, no TPU
    strategy) without bfloat16 matrix instructions, where it runs slower than float32
    (`keras_flow.cpu_features`). Returns the warning text, or None."""
    if (config.mixed_precision != "bf16" or config.strategy == "tpu"
            or cpu_threads.has_gpu()):
        return None
    message = cpu_features.bfloat16_warning()
    if message:
        warnings.warn(message, stacklevel=2)
    return message


def resolve_batch_shards(config, data, cores):
    """`config` with automatic batch shards (0) resolved for `data`'s image size and the
    `cores` that `start_threads` returned (`keras_flow.cpu_threads.auto_batch_shards`)."""
    if config.batch_shards:
        return config
    return dataclasses.replace(config, batch_shards=cpu_threads.auto_batch_shards(
        config.batch_size, data.image_shape, cores))


def start_strategy(config):
    """The `tf.distribute` strategy of `config` (`--cpu-devices` splits the CPU first)."""
    from keras_flow import distribute

    if config.cpu_devices is not None:
        try:
            distribute.split_cpu(config.cpu_devices)
        except RuntimeError as error:
            raise ValueError(str(error)) from None
    return distribute.make_strategy(config.strategy)


def output_folders(config, strategy):
    """`(shared, out)`: the run's folder (`output_folder`) and the one this process writes.

    They are the same folder except for the non-chief workers of a multi-worker run, which
    write their (identical) copy of every output to `<shared>.worker-<index>` so that no two
    processes write one file; `--overwrite` there deletes only that copy.
    """
    from keras_flow import distribute

    if distribute.is_chief(strategy):
        out = output_folder(config)
        return out, out
    shared = Path(config.out)
    out = distribute.worker_folder(shared, strategy)
    check_output_folder(out, config)
    return shared, out


def restore_checkpoint(model, shared, out, config):
    """Loads the last checkpoint of the run (the chief's, in `shared`) into `model`; returns
    its state, or None to start from scratch. A non-chief worker under `--overwrite` starts
    from scratch, like the chief, which deletes the old run's checkpoints."""
    if shared != out and config.overwrite:
        return None
    return flow_callbacks.Checkpoint.restore(model, shared / "checkpoints")


@contextlib.contextmanager
def dtype_policy(mixed_precision):
    """Sets the global dtype policy for `"off"`, `"bf16"` or `"fp16"` (models built inside
    keep it), and restores the previous policy on exit."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[mixed_precision])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


# --- configuration -------------------------------------------------------------------------

def resolve_config(config):
    """`config` with every `None` filled from the preset, then the general defaults; checks it."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"train() needs a TrainConfig; got {type(config).__name__}.")
    _check_choices(config)
    values = dataclasses.asdict(config)
    values["preset"], preset = preset_values(config)
    for key, value in {**DEFAULTS, **preset}.items():
        if values.get(key) is None:
            values[key] = value
    values["temperatures"] = tuple(float(t) for t in values["temperatures"])
    values["warmup"] = str(values["warmup"])
    resolved = TrainConfig(**values)
    _check_values(resolved)
    return resolved


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


# --- output folder -------------------------------------------------------------------------

def output_folder(config):
    """The run's folder: `config.out`, else an unfinished run of the same configuration under
    `runs/`, else a new `runs/<dataset>-<model>-<time>`. Refuses a folder that holds a finished
    run or a different configuration."""
    if config.out is not None:
        out = Path(config.out)
        check_output_folder(out, config)
        return out
    prefix = f"{_slug(config.dataset)}-{config.model}-"
    for candidate in sorted(Path("runs").glob(prefix + "*"), reverse=True):
        if _is_resumable(candidate, config):
            return candidate
    out = Path("runs") / (prefix + time.strftime("%Y%m%d-%H%M%S"))
    while out.exists():
        out = out.with_name(out.name + "x")
    return out


def check_output_folder(out, config):
    """Refuses (`ValueError`) a folder that holds a finished run or a run of a different
    configuration (`lr` and `clip_norm` may change); with `config.overwrite` it deletes that
    run's files (`RUN_FILES`) instead."""
    files.check_folder_path(out, "--out")
    saved = files.read_json(out / "config.json")
    finished = (out / "metrics.json").exists()
    if config.overwrite and (saved is not None or finished):
        remove_run(out)
        return
    if finished:
        raise ValueError(f"{out} already holds a finished run (metrics.json); choose another "
                         "--out, or pass --overwrite to train again (deletes that run's files).")
    differences = _config_differences(saved, config, RESUMABLE_CHANGES + RECOVERY_CHANGES)
    if differences:
        changes = ", ".join(f"{key} (saved {_show(saved.get(key))}, now "
                            f"{_show(getattr(config, key))})" for key in differences)
        raise ValueError(f"{out} holds a run with a different configuration (differs in: "
                         f"{changes}); use another --out, rerun with the saved options to "
                         "resume it, or pass --overwrite to start over (deletes that run's "
                         "files).")


def remove_run(out):
    """Deletes what a run wrote in `out` (`RUN_FILES`); other files stay."""
    for pattern in RUN_FILES:
        for path in Path(out).glob(pattern):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()


def _show(value):
    if isinstance(value, (list, tuple)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


def _is_resumable(folder, config):
    saved = files.read_json(folder / "config.json")
    return (saved is not None and not (folder / "metrics.json").exists()
            and (folder / "checkpoints" / flow_callbacks.CHECKPOINT_STATE).exists()
            and not _config_differences(saved, config))


def _config_differences(saved, config, allowed=RESUMABLE_CHANGES):
    """Options (other than `allowed`) in which a saved config.json differs."""
    if saved is None:
        return []
    current = dataclasses.asdict(config)
    current["temperatures"] = list(current["temperatures"])
    return [key for key in current if key not in allowed and saved.get(key) != current[key]]


def _slug(dataset):
    kind, _, path = dataset.partition(":")
    name = f"{kind}-{Path(path.rstrip('/')).name}" if path else kind
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


# --- data, model, optimiser ----------------------------------------------------------------

def squeezes(config):
    """How many times the model halves the image size (height and width must divide 2**it)."""
    return config.levels - 1 if config.model == "realnvp" else config.levels


def load_data(config):
    from keras_flow import data

    return data.load(config.dataset, batch_size=config.batch_size, n_bits=config.n_bits,
                     levels=squeezes(config), image_size=config.image_size, fit=config.fit,
                     validation_fraction=config.validation_fraction,
                     with_labels=config.conditional, seed=config.seed,
                     on_bad_file=config.on_bad_file, augment=config.augment)


def make_plan(config, out, data):
    steps_per_epoch = config.steps_per_epoch or max(1, data.num_train // config.batch_size)
    return _Plan(config, out, steps_per_epoch, parse_warmup(config.warmup, steps_per_epoch))


def build_model(config, data):
    """The Glow or RealNVP of `config` for `data`'s image shape (and classes); unresolved
    automatic batch shards (0, see `resolve_batch_shards`) build one."""
    model_class, _ = MODELS[config.model]
    options = dict(levels=config.levels, hidden_width=config.hidden_width,
                   num_bins=2 ** config.n_bits, image_shape=data.image_shape, seed=config.seed,
                   batch_shards=config.batch_shards or 1)
    if config.model == "realnvp":
        options["residual_blocks"] = config.residual_blocks
    else:
        options.update(depth=config.depth, permutation=config.permutation,
                       coupling=config.coupling, lu_decomposed=config.lu,
                       learn_top=config.learn_top, classifier_weight=config.classifier_weight,
                       remat=config.remat, zero_log_scale_factor=config.zero_log_scale_factor,
                       split_prior=config.split_prior)
        if config.conditional:
            if not data.num_classes:
                raise ValueError(f"conditional needs labels, and {config.dataset!r} has none.")
            options["num_classes"] = data.num_classes
    return model_class(**{k: v for k, v in options.items() if v is not None})


def compile_model(model, plan):
    config = plan.config
    optimizer = make_optimizer(config.optimizer, config.lr, plan.warmup_steps,
                               plan.steps_per_epoch, config.clip_norm, config.ema,
                               config.lr_decay_steps or 0, config.beta_2,
                               config.budget_decay)
    model.compile(optimizer=optimizer, jit_compile=JIT[config.jit],
                  steps_per_execution=config.steps_per_execution)


def check_steps_per_execution(plan, state=None):
    """Raises ValueError unless `steps_per_execution` divides the steps of every `fit` call:
    an epoch's, and after a resume (`state`, the restored checkpoint's) the rest of the
    interrupted epoch (Keras would run past them, into the next epoch's batches)."""
    n = plan.config.steps_per_execution
    left = plan.steps_per_epoch - (0 if state is None else state["step"] % plan.steps_per_epoch)
    if plan.steps_per_epoch % n:
        raise ValueError(
            f"steps_per_execution={n} must divide the steps per epoch ({plan.steps_per_epoch}); "
            f"use one of {_divisors(plan.steps_per_epoch)}, or set --steps-per-epoch to a "
            f"multiple of {n}.")
    if left % n:
        raise ValueError(
            f"The run resumes {plan.steps_per_epoch - left} steps into an epoch, and "
            f"steps_per_execution={n} does not divide the {left} steps left in it; resume with "
            f"--steps-per-execution set to one of {_divisors(left)}.")


def _divisors(steps, largest=64):
    return [d for d in range(1, min(steps, largest) + 1) if steps % d == 0]


def initialize(model, data, config):
    """Actnorm's data-dependent initialisation on `config.init_batch_size` training images,
    then the optimizer's variables.

    The optimizer is built here (`FlowModel.build_optimizer`, which `fit` would otherwise
    call), right after the initialisation, so that its moving averages (`ema`) start from the
    initialised weights.
    """
    model.initialize(*init_batch(data, config.init_batch_size, config.conditional))
    model.build_optimizer()


def init_batch(data, size, with_labels=False):
    """`(images,)` or `(images, labels)`: `size` training images for actnorm's init."""
    size = min(size, data.num_train)
    if not with_labels:
        return (data.init_batch(size),)
    batches = list(data.train.unbatch().take(size).batch(size).as_numpy_iterator())
    return batches[0]["image"], batches[0]["label"]


# --- fitting -------------------------------------------------------------------------------

@dataclasses.dataclass
class _Fitted:
    counter: flow_callbacks.StepCounter
    keep_best: flow_callbacks.KeepBest
    time_limit: flow_callbacks.TimeLimit
    seconds: float


def make_callbacks(model, data, plan, initial_step, interrupt=None):
    """The training callbacks, in the order they must run; see `keras_flow.callbacks`. The
    non-finite guard (`keras_flow.numerics`) and the Ctrl-C stop (`keras_flow.interrupts`,
    with the `InterruptRequest` `interrupt`) come before the checkpoint: both raise before it
    could save a non-finite or half-stepped state."""
    config, out = plan.config, plan.out
    counter = flow_callbacks.StepCounter(initial_step)
    time_limit = flow_callbacks.TimeLimit(config.max_seconds or math.inf)
    held_out = flow_callbacks.HeldOutBitsPerDim(
        {"val_bits_per_dim": data.validation, "test_bits_per_dim": data.test})
    keep_best = flow_callbacks.KeepBest(out, counter)
    samples = flow_callbacks.SampleGrids(out / "samples", config.temperatures, config.n_bits,
                                         config.num_samples, out / "tensorboard", config.seed)
    history = flow_callbacks.MetricsHistory(out, counter, initial_step // plan.steps_per_epoch)
    checkpoint = flow_callbacks.Checkpoint(out / "checkpoints", counter, config.checkpoint_every,
                                           plan.total_steps, time_limit)
    tensorboard = keras.callbacks.TensorBoard(str(out / "tensorboard"), write_graph=False,
                                              profile_batch=0)
    guard = numerics.NonFiniteGuard(data.train, counter, advice=_divergence_advice(config),
                                    checkpoint=lambda loss_finite: _last_checkpoint_note(
                                        checkpoint, loss_finite))
    stop = [] if interrupt is None else [interrupts.StopOnInterrupt(
        interrupt, checkpoint.save, lambda: _interrupted_message(plan))]
    budget = [flow_callbacks.SpendBudget(config.max_seconds, time_limit.elapsed)
              ] if config.budget_decay else []
    callbacks = [counter, time_limit, *budget, guard, *stop, checkpoint, held_out, keep_best,
                 samples, history, tensorboard]
    return callbacks, _Fitted(counter, keep_best, time_limit, 0.0)


def _divergence_advice(config):
    """What to try after a non-finite loss, as flags with the run's current values."""
    clipping = ("gradient clipping (--clip-norm 50)" if not config.clip_norm else
                f"tighter clipping (--clip-norm {config.clip_norm / 2:g}, now "
                f"{config.clip_norm:g})")
    tries = [f"a longer warm-up (--warmup, now {config.warmup})",
             f"a lower learning rate (--lr {config.lr / 2:g}, now {config.lr:g})", clipping]
    if config.n_bits > 5:
        tries.append(f"fewer bits per channel (--n-bits 5, now {config.n_bits})")
    if config.mixed_precision == "fp16":
        tries.append("--mixed-precision bf16 or off")
    return f"Try {', '.join(tries[:-1])}, or {tries[-1]}."


def _last_checkpoint_note(checkpoint, loss_finite):
    """Where to continue from after a non-finite value (`Checkpoint.settle`)."""
    good, suspect = checkpoint.settle(loss_finite)
    if suspect is not None:
        return (f"The only checkpoint (step {suspect['step']}) holds the weights this loss "
                "was computed from, so resuming from it would stop the same way: rerun with "
                "--overwrite (starts over) and a lower --lr or a --clip-norm.")
    if good is None:
        return "No checkpoint had been written yet."
    return (f"The last good checkpoint (step {good['step']}) is "
            f"{checkpoint.folder / good['weights']}; to continue from it, rerun with the same "
            "--out and a lower --lr or a --clip-norm.")


def _interrupted_message(plan):
    state = files.read_json(plan.out / "checkpoints" / flow_callbacks.CHECKPOINT_STATE)
    return (f"Interrupted at step {state['step']} of {plan.total_steps}: checkpoint saved in "
            f"{plan.out / 'checkpoints'} ({state['weights']}). Rerun the same command to "
            "resume from it.")


def fit(model, data, plan, state):
    """Fits from the checkpointed step to the last; an interrupted epoch is finished first."""
    initial_step = 0 if state is None else state["step"]
    if state is not None and state["finished"]:
        return make_callbacks(model, data, plan, initial_step)[1]
    epoch, batch = divmod(initial_step, plan.steps_per_epoch)
    train = data.train.repeat()
    verbose = plan.config.verbose
    started = time.monotonic()
    with interrupts.sigint_requests() as interrupt, \
            flow_callbacks.deferred_ema_finalize(model):
        callbacks, fitted = make_callbacks(model, data, plan, initial_step, interrupt)
        if batch:
            model.fit(train, initial_epoch=epoch, epochs=epoch + 1, callbacks=callbacks,
                      steps_per_epoch=plan.steps_per_epoch - batch, verbose=verbose,
                      shuffle=False)
            epoch += 1
        if epoch < plan.config.epochs and not fitted.time_limit.reached:
            model.fit(train, initial_epoch=epoch, epochs=plan.config.epochs, callbacks=callbacks,
                      steps_per_epoch=plan.steps_per_epoch, verbose=verbose, shuffle=False)
    fitted.seconds = time.monotonic() - started
    return fitted


def _start_message(plan, state, replicas=1):
    config = plan.config
    where = f"Output folder: {plan.out}"
    if state is None:
        batch = f"batch {config.batch_size}"
        if replicas > 1:
            batch += f" over {replicas} replicas, {config.batch_size / replicas:g} each"
        return (f"{where}\nTraining {config.model} for {config.epochs} epochs of "
                f"{plan.steps_per_epoch} steps ({batch}).")
    epoch, batch = divmod(state["step"], plan.steps_per_epoch)
    if state["finished"]:
        return f"{where}\nTraining already finished at step {state['step']}; writing outputs."
    return (f"{where}\nResumed from checkpoint at step {state['step']} of {plan.total_steps}: "
            f"epoch {epoch + 1}, step {batch} of {plan.steps_per_epoch} within it.")


# --- outputs -------------------------------------------------------------------------------

def finish(model, data, plan, fitted, state, seconds):
    """Best weights in, final evaluation, model.keras, samples, export, then metrics.json."""
    out = plan.out
    model.optimizer.finalize_variable_values(model.trainable_variables)
    restored_best = fitted.keep_best.restore(model)
    metrics = evaluate(model, data)
    with files.atomic_path(out / "model.keras") as temporary:
        model.save(temporary)
    config = plan.config
    flow_callbacks.write_sample_grids(model, out, config.temperatures, config.n_bits,
                                      config.num_samples, config.seed, prefix="samples_")
    export_path = export(model, out / "export")
    # The in-distribution reference of `python -m keras_flow.score --reference` (issue #33).
    typicality.save_reference(model, data, out)
    metrics.update(
        epochs=round(fitted.counter.step / plan.steps_per_epoch, 4),
        steps=fitted.counter.step,
        optimizer_steps=numerics.optimizer_steps(model.optimizer),
        skipped_steps=fitted.counter.step - numerics.optimizer_steps(model.optimizer),
        loss_scale=numerics.loss_scale(model.optimizer),
        seconds=round(fitted.seconds, 2),
        total_seconds=round(seconds, 2),
        resumed=state is not None,
        resumed_from_step=None if state is None else state["step"],
        time_limit_reached=fitted.time_limit.reached,
        best_weights=restored_best,
        best_epoch=fitted.keep_best.record and fitted.keep_best.record["epoch"],
        exported=export_path is not None,
    )
    files.write_json(out / "metrics.json", metrics)
    _say(plan.config, f"Test bits/dim: {_format(metrics['test_bits_per_dim'])} "
                      f"(validation {_format(metrics['validation_bits_per_dim'])}, train "
                      f"{_format(metrics['train_bits_per_dim'])}); outputs in {out}")
    return dict(metrics, out=str(out))


def evaluate(model, data):
    """Bits/dim of the final weights on the test and validation splits and on as many
    training images as the test split has (fresh noise)."""
    evaluate_split = flow_callbacks.evaluate_bits_per_dim
    sample_batches = max(1, math.ceil(max(data.num_test, 1) / _batch_size(data)))
    return dict(
        test_bits_per_dim=None if data.test is None else evaluate_split(model, data.test),
        validation_bits_per_dim=(None if data.validation is None
                                 else evaluate_split(model, data.validation)),
        train_bits_per_dim=evaluate_split(model, data.train.take(sample_batches)),
    )


def _batch_size(data):
    spec = data.train.element_spec
    spec = spec["image"] if isinstance(spec, dict) else spec
    return spec.shape[0] or 1


def export(model, path):
    """`keras_flow.saved_model.export(model, path, overwrite=True)`; None if unavailable."""
    try:
        from keras_flow.saved_model import export as export_saved_model
    except ImportError:
        return None
    return export_saved_model(model, str(path), overwrite=True)


def _format(value):
    return "n/a" if value is None else f"{value:.4f}"


def _say(config, message):
    if config.verbose:
        print(message, flush=True)

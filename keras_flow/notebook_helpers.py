"""The notebooks' helpers: train one flow configuration for a fixed budget, record its curves.

`train_variant` is what the permutation notebook (Glow's Figure 3 ablation) runs once per
variant: the same data (same batches in the same order, same dequantisation noise), the same
initial weights (seeded), the same optimiser and the same number of steps, so that the only
difference between two runs is the configuration. It returns the trained model and a
JSON-serialisable history:

    steps              training steps at each evaluation
    seconds            training wall-clock seconds at each evaluation (graph tracing of the
                       first step and the evaluations themselves excluded)
    train_bpd          mean training bits/dim over the `eval_every` steps before each point
    test_bpd           bits/dim of the test split (fixed noise) at each point
    params             trainable + non-trainable weights of the model
    seconds_per_step   steady-state training seconds per step
    compile_seconds    the first step (tracing + first run)
    train_seconds      training seconds in all (the last entry of `seconds`)
    reconstruction_error  max |decode(encode(x)) - x| on one test batch after training

`mean_history` averages the runs of one configuration over seeds, `summary_table` turns a
few histories into a Markdown table, `plot_curves` draws the bits/dim curves against steps
or seconds (`plot_permutations`: Glow's Figure 3 layout of them), and `show_images` draws an
image grid. For the
exploration notebook: `bits_per_dim_breakdown` (each level's share of the bits/dim),
`interpolate_latents` and `reconstruction_error`. TensorFlow backend (`keras_flow.data`).
"""

import inspect
import math
import time

import keras
import numpy as np
from keras import ops

from keras_flow import data as flow_data
from keras_flow.models import Glow

SUMMARY_COLUMNS = (  # (history key, title, format); "<key>_std" adds "± std" over seeds
    ("variant", "variant", "{}"),
    ("final_test_bpd", "test bits/dim", "{:.3f}"),
    ("best_test_bpd", "best test bits/dim", "{:.3f}"),
    ("final_train_bpd", "train bits/dim", "{:.3f}"),
    ("seconds_per_step", "s/step", "{:.4f}"),
    ("train_seconds", "train s", "{:.0f}"),
    ("params", "params", "{:,}"),
    ("reconstruction_error", "max |x - dec(enc(x))|", "{:.1e}"),
)


def train_variant(config, data, steps, eval_every, seed=0, learning_rate=1e-3,
                  init_size=256, test_batches=None, model_class=Glow, optimizer=None):
    """Trains `model_class(**config, seed=seed)` for `steps` steps and records its curves.

    Each call loads its own pipeline, `keras_flow.data.load(**data, levels=..., seed=seed)`,
    so every variant trained with the same `data` and `seed` sees the same batches in the same
    order with the same noise; `keras.utils.set_random_seed(seed)` makes the initial weights
    the same too. The model is initialised (actnorm) on `init_size` training images and
    trained with `optimizer` (default: Adam at `learning_rate`).

    Args:
        config: constructor arguments of the model, e.g. `dict(levels=2, depth=8,
            hidden_width=64, permutation="shuffle", coupling="additive")`; `num_bins` comes
            from the data's `n_bits`.
        data: keyword arguments of `keras_flow.data.load`, e.g.
            `dict(dataset="digits", batch_size=64, n_bits=8)` (not `levels` or `seed`).
        steps: training steps, a multiple of `eval_every`.
        eval_every: steps between two evaluations on the test split.
        seed: seeds the weights, the model's permutations, the shuffle and the noise.
        learning_rate: Adam's learning rate (when `optimizer` is None).
        init_size: images for the data-dependent initialisation.
        test_batches: evaluate on the first `test_batches` test batches only (None: all).
        model_class: `keras_flow.Glow` (default) or `keras_flow.RealNVP`.
        optimizer: a new Keras optimizer for this run, e.g. openai/glow's Adamax with its
            warm-up, `keras_flow.optimizers.make_optimizer("adamax", 1e-3, warmup_steps=200,
            steps_per_epoch=938)`; None: `keras.optimizers.Adam(learning_rate)`.

    Returns:
        `(model, history)`: the trained model and the history dict described in the module
        docstring (plus `config`, `seed`, `final_train_bpd`, `final_test_bpd`, and
        `best_test_bpd`, the lowest test bits/dim along the curve).
    """
    _check_budget(steps, eval_every, data)
    keras.utils.set_random_seed(seed)
    flow = flow_data.load(**data, levels=_levels(config, model_class), seed=seed)
    if flow.test is None:
        raise ValueError(
            f"{flow.name!r} has no test split; pass test_fraction > 0 in data.")
    test = flow.test if test_batches is None else flow.test.take(test_batches)
    num_bins = 2 ** flow.n_bits  # the data's bins: the bits/dim's discretisation term
    if config.get("num_bins", num_bins) != num_bins:
        raise ValueError(
            f"config has num_bins={config['num_bins']} but the data keeps n_bits={flow.n_bits} "
            f"({num_bins} bins); drop num_bins from config, train_variant sets it.")
    model = model_class(**{**config, "num_bins": num_bins}, seed=seed)
    model.initialize(flow.init_batch(min(init_size, flow.num_train)))
    model.compile(optimizer=optimizer or keras.optimizers.Adam(learning_rate))
    curves = CurveRecorder(eval_every)
    model.fit(flow.train.repeat(), steps_per_epoch=eval_every, epochs=steps // eval_every,
              validation_data=test, callbacks=[curves], verbose=0)
    history = curves.history
    history.update(
        config=dict(config), seed=seed, params=int(model.count_params()),
        seconds_per_step=curves.seconds_per_step(), train_seconds=history["seconds"][-1],
        compile_seconds=curves.compile_seconds,
        final_train_bpd=history["train_bpd"][-1], final_test_bpd=history["test_bpd"][-1],
        best_test_bpd=min(history["test_bpd"]),
        reconstruction_error=reconstruction_error(model, next(iter(test))))
    return model, history


def _check_budget(steps, eval_every, data):
    if eval_every < 1 or steps < eval_every or steps % eval_every:
        raise ValueError(
            f"steps must be a positive multiple of eval_every; got steps={steps}, "
            f"eval_every={eval_every}.")
    clashes = sorted({"levels", "seed"} & set(data))
    if clashes:
        raise ValueError(
            f"data must not set {clashes}: train_variant takes levels from the model config "
            "and the seed from its seed argument.")


def _levels(config, model_class):
    levels = config.get("levels", inspect.signature(model_class).parameters["levels"].default)
    return data_levels(model_class, levels)


def data_levels(model_class, levels):
    """The `levels` argument of `keras_flow.data.load` for a model: how many times it halves
    the image size (`model_class.halvings_for(levels)`)."""
    return model_class.halvings_for(levels)


def reconstruction_error(model, images, labels=None):
    """`max |decode(encode(x)) - x|` over a batch: how exactly the flow inverts (float)."""
    eps_list, _ = model.encode(images, labels)
    restored = model.decode(eps_list, labels)
    return float(ops.max(ops.abs(ops.cast(restored, "float32") - ops.cast(images, "float32"))))


def bits_per_dim_breakdown(model, images, labels=None):
    """The batch means of `model.bits_per_dim_terms` (`keras_flow.models.objective`): one
    term per level, the log-det (with the learned priors' scales) and the discretisation.

    Returns:
        dict `{"level 1": ..., ..., "level L": ..., "log-det": ..., "discretisation": ...,
        "total": ...}` of floats (bits/dim); `total` equals
        `mean(model.bits_per_dim(images, labels))`.
    """
    terms = model.bits_per_dim_terms(images, labels)
    return {name: float(ops.mean(term)) for name, term in terms.items()}


def interpolate_latents(eps_start, eps_end, num_steps):
    """Straight lines in latent space between pairs of examples, at every level.

    `eps_t = (1 - t) eps_start + t eps_end` for `t` in `linspace(0, 1, num_steps)`, for each
    level's latent. `decode` of the result gives the frames of each pair in a row.

    Args:
        eps_start, eps_end: latent lists from `model.encode` (same shapes, `P` pairs).
        num_steps: frames per pair, >= 2.

    Returns:
        a latent list with batch `P * num_steps`, pair-major (pair 0's frames first).
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2 (both end points); got {num_steps}.")
    frames = []
    for start, end in zip(eps_start, eps_end):
        t = ops.reshape(ops.linspace(0.0, 1.0, num_steps), (1, num_steps) + (1,) * (
            len(start.shape) - 1))
        path = (1.0 - t) * ops.expand_dims(start, 1) + t * ops.expand_dims(end, 1)
        frames.append(ops.reshape(path, (-1,) + tuple(start.shape[1:])))
    return frames


class CurveRecorder(keras.callbacks.Callback):
    """Records bits/dim curves during `fit(..., steps_per_epoch=eval_every, validation_data=)`.

    Each Keras epoch is `eval_every` steps; at its end the callback stores the step count, the
    training seconds so far, the epoch's mean training bits/dim and the validation bits/dim.
    Training seconds exclude the validation passes and the first step (graph tracing).
    """

    def __init__(self, eval_every):
        super().__init__()
        self.eval_every = int(eval_every)
        self.history = dict(steps=[], seconds=[], train_bpd=[], test_bpd=[])
        self.compile_seconds = None
        self._seconds = 0.0
        self._start = None

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self.compile_seconds is None:
            self.compile_seconds = time.perf_counter() - self._start
            self._start = time.perf_counter()

    def on_test_begin(self, logs=None):
        self._seconds += time.perf_counter() - self._start

    def on_epoch_end(self, epoch, logs=None):
        history = self.history
        history["steps"].append((epoch + 1) * self.eval_every)
        history["seconds"].append(self._seconds)
        history["train_bpd"].append(float(logs["bits_per_dim"]))
        history["test_bpd"].append(float(logs["val_bits_per_dim"]))

    def seconds_per_step(self):
        """Training seconds per step, the first (tracing) step excluded."""
        timed_steps = self.history["steps"][-1] - 1
        return self._seconds / timed_steps if timed_steps else math.nan


def mean_history(histories):
    """Averages the histories of one configuration trained with several seeds.

    Curves (`seconds`, `train_bpd`, `test_bpd`) and figures are averaged point by point;
    `test_bpd_std`, `final_test_bpd_std` and `best_test_bpd_std` give the standard deviation
    over the seeds, `reconstruction_error` is the largest, and `seeds` lists the seeds.
    """
    if not histories or any(h["steps"] != histories[0]["steps"] for h in histories):
        raise ValueError("mean_history needs one or more histories with the same steps.")
    first = histories[0]
    combined = dict(config=first["config"], seeds=[h["seed"] for h in histories],
                    params=first["params"], steps=first["steps"],
                    reconstruction_error=max(h["reconstruction_error"] for h in histories))
    for key in ("seconds", "train_bpd", "test_bpd"):
        combined[key] = np.mean([h[key] for h in histories], axis=0).tolist()
    combined["test_bpd_std"] = np.std([h["test_bpd"] for h in histories], axis=0).tolist()
    for key in ("seconds_per_step", "train_seconds", "compile_seconds", "final_train_bpd",
                "final_test_bpd", "best_test_bpd"):
        combined[key] = float(np.mean([h[key] for h in histories]))
    for key in ("final_test_bpd", "best_test_bpd"):
        combined[key + "_std"] = float(np.std([h[key] for h in histories]))
    return combined


def summary_rows(histories):
    """`{variant: history}` -> one dict per variant with the summary figures (and their
    standard deviations over seeds, for histories from `mean_history`)."""
    rows = []
    for name, history in histories.items():
        row = dict(variant=name, seeds=history.get("seeds", [history.get("seed")]))
        for key, _, _ in SUMMARY_COLUMNS[1:]:
            row[key] = history[key]
            if key + "_std" in history:
                row[key + "_std"] = history[key + "_std"]
        rows.append(row)
    return rows


def summary_table(histories):
    """A Markdown table of `{variant: history}`: final and best test bits/dim (± std over
    seeds when averaged), final training bits/dim, speed, size and inversion error."""
    lines = ["| " + " | ".join(title for _, title, _ in SUMMARY_COLUMNS) + " |",
             "|" + "|".join("---" for _ in SUMMARY_COLUMNS) + "|"]
    for row in summary_rows(histories):
        cells = [_format(fmt, row[key]) + (
            f" ± {row[key + '_std']:.3f}" if len(row["seeds"]) > 1 and key + "_std" in row
            else "") for key, _, fmt in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(fmt, value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return fmt.format(value)


def plot_curves(histories, x="steps", ax=None, colors=None, train=True):
    """Draws each history's test bits/dim (solid; shaded ± std over seeds for averaged
    histories) and, with `train`, its training bits/dim (dashed, same colour) against `x`,
    `"steps"` or `"seconds"` (training wall clock).

    Args:
        histories: `{variant: history}` from `train_variant`.
        x: `"steps"` or `"seconds"`.
        ax: matplotlib axes (a new figure when None).
        colors: `{variant: colour}` (matplotlib's cycle when None).
        train: also draw the training curves.

    Returns: the axes.
    """
    import matplotlib.pyplot as plt

    if x not in ("steps", "seconds"):
        raise ValueError(f"x must be 'steps' or 'seconds'; got x={x!r}.")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for name, history in histories.items():
        color = (colors or {}).get(name)
        line, = ax.plot(history[x], history["test_bpd"], color=color, label=f"{name} (test)")
        if "test_bpd_std" in history and len(history.get("seeds", ())) > 1:
            mean, std = np.asarray(history["test_bpd"]), np.asarray(history["test_bpd_std"])
            ax.fill_between(history[x], mean - std, mean + std, color=line.get_color(),
                            alpha=0.15, lw=0)
        if train:
            ax.plot(history[x], history["train_bpd"], color=line.get_color(), ls="--",
                    alpha=0.6, label=f"{name} (train)")
    ax.set_xlabel("training steps" if x == "steps" else "training seconds (wall clock)")
    ax.set_ylabel("bits/dim")
    ax.grid(alpha=0.3)
    return ax


PERMUTATION_COLORS = {"reverse": "tab:blue", "shuffle": "tab:orange", "conv1x1": "tab:green"}


def plot_permutations(histories, xs=("steps", "seconds")):
    """Glow's Figure 3 layout: one row per coupling, one column per x axis (`plot_curves`),
    for histories named `"PERMUTATION / COUPLING"` (the permutation notebook's and
    `benchmarks/permutations_fashion_mnist.py`'s). The first evaluation, far above the rest,
    is left out of the y range. Returns the figure."""
    import matplotlib.pyplot as plt

    couplings = sorted({name.split(" / ")[1] for name in histories})
    fig, axes = plt.subplots(len(couplings), len(xs), figsize=(6.5 * len(xs), 4.5 * len(couplings)),
                             sharey=True, squeeze=False)
    for row, coupling in enumerate(couplings):
        subset = {name: h for name, h in histories.items() if name.endswith(" / " + coupling)}
        colors = {name: PERMUTATION_COLORS.get(name.split(" / ")[0]) for name in subset}
        for col, x in enumerate(xs):
            ax = plot_curves(subset, x=x, ax=axes[row, col], colors=colors)
            ax.set_title(f"{coupling} coupling, against {x}")
            ax.legend(fontsize=8)
    later = [v for h in histories.values() for key in ("train_bpd", "test_bpd")
             for v in h[key][1:]]
    if later:
        axes[0, 0].set_ylim(min(later) - 0.05, max(later) + 0.05)
    fig.tight_layout()
    return fig


def show_images(images, ax=None, title=None, columns=None, n_bits=8):
    """Shows images as one grid (`keras_flow.image_grid.make_grid`) on `ax`.

    Args:
        images: uint8 `(N, H, W, C)`, or model-space floats in [-0.5, 0.5] (converted with
            `keras_flow.preprocessing.postprocess(images, n_bits)`).
        ax: matplotlib axes (a new figure when None).
        title: axes title.
        columns: images per row (near-square when None).
        n_bits: bits of the data, for float images.

    Returns: the axes.
    """
    import matplotlib.pyplot as plt

    from keras_flow.image_grid import make_grid
    from keras_flow.preprocessing import postprocess

    images = ops.convert_to_numpy(images)
    if images.dtype != "uint8":
        images = postprocess(images, n_bits).numpy()
    grid = make_grid(images, columns)
    if ax is None:  # 4 inches high, as wide as the grid's aspect asks (up to 14)
        _, ax = plt.subplots(figsize=(min(14.0, 4.0 * grid.shape[1] / grid.shape[0]), 4.0))
    grey = grid.ndim == 2 or grid.shape[-1] == 1
    ax.imshow(grid[..., 0] if grid.ndim == 3 and grey else grid, cmap="gray" if grey else None,
              vmin=0, vmax=255, interpolation="nearest")
    height, width = images.shape[1:3]
    for y in range(height, grid.shape[0], height):  # thin lines between the tiles
        ax.axhline(y - 0.5, color="tab:gray", lw=0.5)
    for x in range(width, grid.shape[1], width):
        ax.axvline(x - 0.5, color="tab:gray", lw=0.5)
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return ax

"""Writes notebooks/permutations.ipynb and notebooks/explore.ipynb from the cell sources below.

    python notebooks/build_notebooks.py

The notebooks are generated so that their content is reviewed and diffed here, as plain text;
they are written with outputs cleared. Edit this file, not the .ipynb files, and re-run it.
Everything reusable lives in the library (`keras_flow.notebook_helpers`, `keras_flow.image_grid`).
"""

import textwrap
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
KERNEL = {"display_name": "Python 3", "language": "python", "name": "python3"}


def md(text):
    return nbformat.v4.new_markdown_cell(textwrap.dedent(text).strip())


def code(text):
    return nbformat.v4.new_code_cell(textwrap.dedent(text).strip())


# --- notebooks/permutations.ipynb ------------------------------------------------------------

PERMUTATIONS = [
    md("""
        # Reverse, shuffle or 1x1 convolution? Glow's Figure 3, rerun

        A Glow step is *actnorm → channel mixing → coupling*. The coupling leaves one half of
        the channels unchanged and transforms the other half as a function of it, so what
        happens *between* couplings decides which channels can ever influence which. The Glow
        paper (Kingma & Dhariwal 2018, Figure 3) compares three ways of mixing the channels,
        each with additive and with affine coupling, and finds the learned 1x1 convolution
        reaches the lowest negative log-likelihood, then the fixed shuffle, then the reversal.

        This notebook trains the six variants with the **same seed, data, batches, noise,
        optimiser, budget and architecture**, and compares them in bits/dim (lower is better)
        against training steps *and* against wall-clock seconds, because the 1x1 convolution
        adds work to every step.

        **Quick vs full.** With the environment variable `KERAS_FLOW_QUICK=1` (the tests set
        it) the notebook runs tiny models for a few steps with one seed: a smoke test of about
        a minute on two CPU cores, too short to compare anything. Without it, the full setting
        trains the digits preset's architecture for 600 steps with two seeds per variant
        (twelve runs, 15-20 minutes on two CPU cores) and shows the mean and spread. To use
        another dataset, change `DATASET` in the settings cell.
        """),
    md("""
        ## The three ways to mix channels

        - **reverse** (NICE, RealNVP): the channel order is flipped before every coupling.
          With an even split this just swaps the two halves, so the flow only ever alternates
          between two fixed partitions: "A updates B, then B updates A". Channels in the same
          half never condition on each other directly.
        - **shuffle** (RealNVP's alternative, openai/glow's `shuffle`): a fixed random
          permutation, drawn once per step from the seed and saved with the weights. Each step
          splits the channels differently, so over a few steps every channel gets to
          condition on every other. It costs nothing: no parameters, log-det 0.
        - **conv1x1** (Glow): a learned invertible `C x C` matrix `W` applied at every pixel,
          `y = x W`. A permutation is the special case of a permutation matrix, so this
          generalises both fixed orders; it starts from a random rotation (already mixing all
          channels) and training adapts the mixing to the data. Its log-det is
          `H * W * log|det W|`, cheap with the LU parameterisation
          `W = P L (U + diag(s))`: `sum(log|s|)`. It adds `C^2` parameters and a matrix
          product per step, hence the seconds axis below.

        Why the ordering 1x1 < shuffle < reverse is expected: the more freely the channels are
        regrouped between couplings, the more dependencies a given depth can express, and a
        learned mixing can only do at least as well as a fixed one it can represent (in
        principle; in practice it has to find it by gradient descent). Two caveats to keep in
        mind when reading the results: lower loss does not automatically mean better-looking
        samples (bits/dim is dominated by fine detail the eye barely weighs), and the 1x1
        convolution's advantage can take more training to show (it has more to learn), so a
        short budget may not have saturated it. On the 8x8 digits the first level has only
        4 channels, where reversing and shuffling differ little, and differences between
        variants may be within run-to-run noise; the paper's runs are CIFAR-10 for many epochs.
        """),
    code("""
        import json
        import os
        import time

        import matplotlib.pyplot as plt

        import keras_flow
        from keras_flow import notebook_helpers

        QUICK = os.environ.get("KERAS_FLOW_QUICK") == "1"
        print(f"keras_flow {keras_flow.__version__}, {'quick' if QUICK else 'full'} setting")
        """),
    md("""
        ## Settings

        `DATASET` is any source `keras_flow.data.load` accepts: `"digits"` (embedded, no
        download), a TensorFlow Datasets name (`"mnist"`, `"fashion_mnist"`, `"cifar10"`),
        `"folder:PATH"`, `"npz:PATH"` or `"idx:DIR"`. For larger images raise `MODEL`'s
        depth and width and the number of `STEPS`.
        """),
    code("""
        DATASET = "digits"
        DATA = dict(dataset=DATASET, batch_size=64, n_bits=8)
        if QUICK:  # smoke test: tiny models, a few steps, one seed
            MODEL = dict(levels=1, depth=2, hidden_width=16)
            STEPS, EVAL_EVERY, TEST_BATCHES, SEEDS = 20, 10, 2, (0,)
        else:  # the digits preset's architecture (keras_flow.models.GLOW_PRESETS["digits"])
            MODEL = dict(levels=2, depth=8, hidden_width=64)
            STEPS, EVAL_EVERY, TEST_BATCHES, SEEDS = 600, 50, None, (0, 1)
        PERMUTATIONS = ("reverse", "shuffle", "conv1x1")
        COUPLINGS = ("additive", "affine")
        COLORS = {"reverse": "tab:blue", "shuffle": "tab:orange", "conv1x1": "tab:green"}
        print(f"{DATASET}: {MODEL}, {STEPS} steps of batch {DATA['batch_size']}, seeds {SEEDS}")
        """),
    md("""
        ## Train the six variants

        `notebook_helpers.train_variant` loads a fresh pipeline with the seed for each run (so all
        six variants see the same batches with the same dequantisation noise), seeds the
        initial weights, initialises actnorm on the same images, trains with Adam (learning
        rate 1e-3) and evaluates the test split every `EVAL_EVERY` steps. The training clock
        excludes the first step (graph tracing) and the evaluations. Each variant is trained
        once per seed in `SEEDS`; `notebook_helpers.mean_history` averages its runs.
        """),
    code("""
        models, runs = {}, {}  # models: the first seed's, for samples; runs: all histories
        start = time.perf_counter()
        for coupling in COUPLINGS:
            for permutation in PERMUTATIONS:
                name = f"{permutation} / {coupling}"
                config = dict(MODEL, permutation=permutation, coupling=coupling)
                for seed in SEEDS:
                    model, history = notebook_helpers.train_variant(
                        config, DATA, STEPS, EVAL_EVERY, seed=seed, test_batches=TEST_BATCHES)
                    models.setdefault(name, model)
                    runs.setdefault(name, []).append(history)
                    print(f"{name:20s} seed {seed}: test {history['final_test_bpd']:.3f} "
                          f"bits/dim (best {history['best_test_bpd']:.3f}), "
                          f"{1000 * history['seconds_per_step']:.1f} ms/step, "
                          f"{history['params']:,} parameters")
        histories = {name: notebook_helpers.mean_history(found) for name, found in runs.items()}
        print(f"{sum(map(len, runs.values()))} runs in {time.perf_counter() - start:.0f} s")
        """),
    md("""
        ## Bits/dim against steps and against seconds

        Solid lines: test bits/dim (fixed noise), the mean over seeds with ± one standard
        deviation shaded; dashed: the training bits/dim averaged over the preceding
        `EVAL_EVERY` steps. Left: equal numbers of steps; right: equal training
        time, where a slower step counts against the 1x1 convolution.
        """),
    code("""
        fig, axes = plt.subplots(2, 2, figsize=(13, 9), sharey=True)
        for row, coupling in enumerate(COUPLINGS):
            subset = {name: h for name, h in histories.items() if name.endswith(coupling)}
            colors = {name: COLORS[name.split(" / ")[0]] for name in subset}
            for col, x in enumerate(("steps", "seconds")):
                ax = notebook_helpers.plot_curves(subset, x=x, ax=axes[row, col], colors=colors)
                ax.set_title(f"{coupling} coupling, against {x}")
                ax.legend(fontsize=8)
        # The first evaluation sits far above the rest: zoom on the later ones.
        later = [v for h in histories.values() for key in ("train_bpd", "test_bpd")
                 for v in h[key][1:]]
        if later:
            axes[0, 0].set_ylim(min(later) - 0.05, max(later) + 0.05)
        fig.tight_layout()
        plt.show()
        """),
    md("""
        ## Samples

        Sixteen samples of each variant at temperature 0.7 (the latent noise scaled by 0.7,
        as Glow shows its samples), all from the same latent seed, next to real test images
        (the models of the first seed).
        """),
    code("""
        flow = keras_flow.data.load(**DATA, levels=notebook_helpers.data_levels(keras_flow.Glow,
                                                                          MODEL["levels"]))
        notebook_helpers.show_images(flow.raw_images("test", 16), title="real test images")
        plt.show()

        TEMPERATURE = 0.7
        fig, axes = plt.subplots(len(COUPLINGS), len(PERMUTATIONS), figsize=(12, 8.5))
        for ax, (name, model) in zip(axes.flat, models.items()):
            samples = model.sample(16, temperature=TEMPERATURE, seed=SEEDS[0])
            notebook_helpers.show_images(samples, ax=ax, title=f"{name}, T = {TEMPERATURE}",
                                    n_bits=DATA["n_bits"])
        fig.tight_layout()
        plt.show()
        """),
    md("""
        ## Summary

        Per variant, averaged over the seeds (± standard deviation): the final test bits/dim,
        the best test bits/dim along the curve (optimistic: picked on the test set itself, but
        it shows each variant before it overfits), the final training bits/dim, steady-state
        seconds per training step, training seconds in all, parameters, and the largest
        reconstruction error `max |decode(encode(x)) - x|` on a test batch (every variant
        inverts exactly, up to float32 round-off). Set `KERAS_FLOW_SUMMARY_JSON=path.json` to
        also write the table and the curves as JSON.
        """),
    code("""
        print(notebook_helpers.summary_table(histories))
        print()
        for coupling in COUPLINGS:
            ranked = sorted((h["final_test_bpd"], name.split(" / ")[0])
                            for name, h in histories.items() if name.endswith(coupling))
            print(f"{coupling:8s}: " + " < ".join(f"{p} ({bpd:.3f})" for bpd, p in ranked))

        summary_path = os.environ.get("KERAS_FLOW_SUMMARY_JSON")
        if summary_path:
            summary = dict(dataset=DATASET, seeds=SEEDS, model=MODEL, data=DATA, steps=STEPS,
                           eval_every=EVAL_EVERY, quick=QUICK,
                           seconds=time.perf_counter() - start,
                           rows=notebook_helpers.summary_rows(histories), runs=runs,
                           table=notebook_helpers.summary_table(histories))
            with open(summary_path, "w") as file:
                json.dump(summary, file, indent=1)
            print(f"wrote {summary_path}")
        """),
    md("""
        ## Reading the results

        - Compare within a coupling type: the paper's ordering is 1x1 < shuffle < reverse for
          both. On small data and short budgets the gaps are a few hundredths of a bit/dim,
          often less than the spread between seeds: add seeds to `SEEDS` before concluding
          that two close variants differ.
        - The seconds axis: the 1x1 convolution adds a `C x C` matrix product per pixel (and
          the LU products that build `W`) to every step, small next to the coupling networks'
          convolutions; on the 8x8 digits it is lost in the timing noise. The right-hand panels
          show whether a lead in steps survives equal training time. Timings on a shared
          machine also carry the other jobs' load.
        - Affine coupling usually reaches lower bits/dim than additive, but not necessarily
          better-looking samples: Glow's high-resolution face samples came from
          additive-coupling models.
        - Look at the train/test gap too: the digits have 1,350 training images, so these
          models (about 140,000 parameters) start to overfit after a few hundred steps: the
          training curve keeps falling while the test curve flattens, turns up and gets noisy.
          Past that point the test bits/dim measures overfitting more than the expressiveness
          of the mixing, so compare the early part of the curves and the best test values.
        """),
]


# --- notebooks/explore.ipynb -----------------------------------------------------------------

EXPLORE = [
    md("""
        # Exploring a trained flow

        A flow is a bijection between images and Gaussian latents, so you can go both ways
        exactly. This notebook loads a model written by `train.py` (or trains a tiny one) and
        shows: samples at several temperatures (with a slider when `ipywidgets` is installed),
        exact reconstruction from the latents, interpolation between two real images in latent
        space, and how each level of the multi-scale latent contributes to the bits/dim.

        `KERAS_FLOW_QUICK=1` (the tests set it) trains the fallback model for a few steps only.
        """),
    code("""
        import json
        import math
        import os
        from pathlib import Path

        import keras
        import matplotlib.pyplot as plt
        import numpy as np
        from keras import ops

        import keras_flow
        from keras_flow import notebook_helpers
        from keras_flow.preprocessing import postprocess

        QUICK = os.environ.get("KERAS_FLOW_QUICK") == "1"
        """),
    md("""
        ## The model

        Set `MODEL_PATH` to a `model.keras` written by `train.py` (it is in the run's folder,
        e.g. `runs/digits-glow-20260101-120000/model.keras`); the data options (dataset, image
        size, fit) are then read from the run's `config.json` beside it. For a `.keras` file
        from elsewhere, set `DATASET` to the data it was trained on. With `MODEL_PATH = None`
        a small Glow is trained on `DATASET` here.
        """),
    code("""
        MODEL_PATH = None
        DATASET = "digits"
        SEED = 0

        data_options = dict(dataset=DATASET)
        if MODEL_PATH:
            model = keras.saving.load_model(MODEL_PATH, compile=False)  # no optimizer needed
            run_config = Path(MODEL_PATH).with_name("config.json")
            if run_config.exists():  # a train.py run folder: the data options it used
                saved = json.loads(run_config.read_text())
                data_options = {key: saved[key] for key in ("dataset", "image_size", "fit")
                                if key in saved}
        else:
            config = (dict(levels=2, depth=1, hidden_width=16) if QUICK
                      else dict(levels=2, depth=8, hidden_width=64))
            steps = 20 if QUICK else 600
            model, history = notebook_helpers.train_variant(
                config, dict(dataset=DATASET, batch_size=64), steps, eval_every=steps // 2,
                seed=SEED)
            print(f"trained {steps} steps: test {history['final_test_bpd']:.3f} bits/dim")

        N_BITS = int(round(math.log2(model.num_bins)))
        LABELLED = model.num_classes > 0
        data = keras_flow.data.load(**data_options, batch_size=64, n_bits=N_BITS,
                                    levels=notebook_helpers.data_levels(type(model), model.levels),
                                    with_labels=LABELLED)
        batch = next(iter(data.test))
        images, labels = (batch["image"], batch["label"]) if LABELLED else (batch, None)
        # Class-conditional models need a label per sample: cycle through the classes.
        sample_labels = np.arange(36) % model.num_classes if LABELLED else None

        print(f"{type(model).__name__}, images {model.image_shape}, {model.count_params():,} "
              f"parameters, latents {model.latent_shapes}")
        print(f"test batch: {float(ops.mean(model.bits_per_dim(images, labels))):.3f} bits/dim")
        """),
    md("""
        ## Samples and temperature

        Sampling draws `eps ~ N(0, T^2 I)` at every level and decodes it. `T = 1` samples the
        model's distribution; lower temperatures (Glow shows 0.7) trade diversity for cleaner
        images; `T = 0` decodes the mode of every prior. The same seed is used at every
        temperature, so each column scales the same latent directions.
        """),
    code("""
        TEMPERATURES = (0.0, 0.5, 0.7, 0.85, 1.0)
        fig, axes = plt.subplots(1, len(TEMPERATURES), figsize=(3.2 * len(TEMPERATURES), 3.6))
        for ax, temperature in zip(axes, TEMPERATURES):
            samples = model.sample(16, temperature=temperature, seed=SEED,
                                   labels=None if sample_labels is None else sample_labels[:16])
            notebook_helpers.show_images(samples, ax=ax, title=f"T = {temperature}", n_bits=N_BITS)
        fig.tight_layout()
        plt.show()
        """),
    code("""
        try:
            import ipywidgets as widgets
        except ImportError:
            widgets = None
            print("ipywidgets is not installed (pip install 'keras_flow[notebooks]'); "
                  "the static grid above stands in for the slider.")

        def show_samples(temperature=0.7, seed=SEED):
            samples = model.sample(36, temperature=temperature, seed=seed, labels=sample_labels)
            notebook_helpers.show_images(samples, title=f"T = {temperature:.2f}, seed {seed}",
                                    n_bits=N_BITS)
            plt.show()

        if widgets is not None:
            widgets.interact(show_samples,
                             temperature=widgets.FloatSlider(value=0.7, min=0.0, max=1.2,
                                                             step=0.05),
                             seed=widgets.IntSlider(value=SEED, min=0, max=99))
        """),
    md("""
        ## Exact reconstruction

        `encode` returns the latent of every level (`eps_1 ... eps_L`, the top one last) and
        `decode` inverts it. With *all* the latents the reconstruction is exact up to float32
        round-off; decoding only the top latent and sampling the others (what some
        implementations call reconstruction) would not be.
        """),
    code("""
        eps_list, log_det = model.encode(images, labels)
        restored = model.decode(eps_list, labels)
        error = float(ops.max(ops.abs(ops.cast(restored, "float32") - images)))
        same = np.mean(postprocess(restored, N_BITS).numpy() == postprocess(images, N_BITS).numpy())
        print("latent shapes:", [tuple(eps.shape) for eps in eps_list])
        print(f"max |decode(encode(x)) - x| = {error:.2e}; identical 8-bit pixels: {same:.2%}")

        fig, axes = plt.subplots(1, 2, figsize=(8, 4.3))
        notebook_helpers.show_images(images[:16], ax=axes[0], title="test images", n_bits=N_BITS)
        notebook_helpers.show_images(restored[:16], ax=axes[1], title="decode(encode(x))",
                                n_bits=N_BITS)
        plt.show()
        """),
    md("""
        ## Interpolation in latent space

        Encode two real images, walk the straight line between their latents (all levels at
        once) and decode every point. Each row goes from one test image (left) to another
        (right). A straight line between two Gaussian latents passes closer to the origin
        than either end, so the middle frames look like lower-temperature samples.
        """),
    code("""
        PAIRS, FRAMES = 4, 8
        starts = [eps[0:2 * PAIRS:2] for eps in eps_list]
        ends = [eps[1:2 * PAIRS:2] for eps in eps_list]
        path = notebook_helpers.interpolate_latents(starts, ends, FRAMES)
        # A class-conditional model decodes every frame with the first image's label.
        path_labels = (None if labels is None
                       else np.repeat(np.asarray(labels[0:2 * PAIRS:2]), FRAMES))
        frames = model.decode(path, path_labels)
        notebook_helpers.show_images(frames, columns=FRAMES, title="latent interpolation",
                                n_bits=N_BITS)
        plt.show()
        """),
    md("""
        ## Where the bits go: each level's share of the bits/dim

        With `D = H W C` dimensions per image, the bits/dim of an image is a sum of terms:

            bits/dim = sum over levels l of  -log N(eps_l; 0, I) / (D ln 2)
                       - log|det d eps / d x| / (D ln 2)
                       + log2(num_bins)

        - **level l**: how well the level's latent fits the standard normal. The first levels
          are factored out at high resolution and hold most of the dimensions (half of `D`
          leaves at level 1 in Glow), so they usually carry most of the bits; dividing by
          the level's own number of dimensions gives its cost per latent dimension.
        - **log-det**: how much the flow stretches space (including the learned scales of the
          split priors and the top prior). The data live in a box of width 1 with bins of
          width `1/num_bins`; mapping them to unit-variance Gaussians stretches them, so this
          term is usually negative.
        - **discretisation**: the constant `log2(num_bins)` (8 bits for 8-bit data) that
          turns a density on `[-0.5, 0.5)` into a probability of the discrete pixel values.
        """),
    code("""
        terms = notebook_helpers.bits_per_dim_breakdown(model, images, labels)
        level_dims = [math.prod(shape) for shape in model.latent_shapes]
        print(f"{'term':16s}{'bits/dim':>10s}{'latent dims':>13s}{'bits per latent dim':>21s}")
        for (name, value), dims in zip(terms.items(), level_dims + [None] * 3):
            per_dim = "" if dims is None else f"{value * model.num_dims / dims:21.3f}"
            print(f"{name:16s}{value:10.3f}{'' if dims is None else dims:>13}{per_dim}")
        check = float(ops.mean(model.bits_per_dim(images, labels)))
        print(f"model.bits_per_dim: {check:.3f} (the total above)")

        parts = {name: value for name, value in terms.items() if name != "total"}
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.bar(list(parts), list(parts.values()),
               color=["tab:blue"] * len(level_dims) + ["tab:red", "tab:gray"])
        ax.axhline(0, color="black", lw=0.8)
        ax.set_ylabel("bits/dim")
        ax.set_title(f"terms of {terms['total']:.3f} bits/dim")
        plt.show()
        """),
]


def write(cells, name):
    for index, cell in enumerate(cells):  # stable ids keep the diffs clean
        cell.id = f"{Path(name).stem}-{index:02d}"
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = KERNEL
    notebook.metadata["language_info"] = {"name": "python"}
    nbformat.validate(notebook)
    nbformat.write(notebook, HERE / name)
    return HERE / name


def main():
    for cells, name in ((PERMUTATIONS, "permutations.ipynb"), (EXPLORE, "explore.ipynb")):
        print(f"wrote {write(cells, name)}")


if __name__ == "__main__":
    main()

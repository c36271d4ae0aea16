"""Writes notebooks/permutations.ipynb, explore.ipynb and likelihood.ipynb from the cells below.

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
        from pathlib import Path

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
        notebook_helpers.plot_permutations(histories)
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
    md("""
        ## The recorded run: Fashion-MNIST at 32x32

        The digits are tiny and spiky. `benchmarks/permutations_fashion_mnist.py` reruns the
        comparison on Fashion-MNIST (60,000 images padded to 32x32, 8 bits) with workload W2
        (L=3, K=8, width 128), openai/glow's Adamax after a linear warm-up, the same batches,
        noise and initial weights for every variant, and three seeds. Its results are stored
        in `docs/permutations_fashion_mnist.json` (and `.png`); this cell reads them, so it
        costs nothing to run. `full_test` is each variant's bits/dim on all 10,000 test images
        at the end; the curves use the first 512 test images.

        What it showed (600 steps, 0.64 epochs: early training): the paper's order,
        1x1 < shuffle < reverse, in the means of both couplings, and the 1x1 convolution lowest
        at every evaluation. Its lead over shuffle (0.28 bits/dim additive, 0.59 affine) is
        about three seed standard deviations for additive couplings and 1.4 for affine ones
        (one of the three affine 1x1 seeds stayed with the fixed orders); shuffle against
        reverse is within the seeds' spread. Mixed bf16 made the reconstructions inexact
        (`max |x - dec(enc(x))|` up to 0.11; float32 keeps them to about 1e-6).
        """),
    code("""
        recorded = Path(keras_flow.__file__).resolve().parents[1] / "docs" / "permutations_fashion_mnist.json"
        if recorded.exists():
            fashion = json.loads(recorded.read_text())
            print(f"{fashion['steps']} steps, seeds {fashion['seeds']}, optimizer {fashion['optimizer']}")
            print(fashion["table"])
            for row in fashion["full_test"]:
                print(f"{row['variant']:20s} all test images: {row['bpd']:.3f} ± {row['std']:.3f}")
            fashion_histories = {name: notebook_helpers.mean_history(found)
                                 for name, found in fashion["runs"].items()}
            notebook_helpers.plot_permutations(fashion_histories)
            plt.show()
        else:
            print(f"not recorded yet: python benchmarks/permutations_fashion_mnist.py writes {recorded}")
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


# --- notebooks/likelihood.ipynb --------------------------------------------------------------

LIKELIHOOD = [
    md("""
        # Using the likelihood: scores, out-of-distribution inputs, attribute directions

        Besides sampling, a flow gives two things no GAN or VAE gives exactly: the
        **likelihood** of any image, and an **invertible latent space**. This notebook uses
        both on a Glow trained on Fashion-MNIST:

        1. it scores the Fashion-MNIST test set and images of handwritten digits, and looks
           for the surprise of Nalisnick et al. (2019, "Do Deep Generative Models Know What
           They Don't Know?"): digits, which the model never saw, can get a *higher*
           likelihood (fewer bits/dim) than the clothes it was trained on;
        2. it runs the **typicality test** (Nalisnick et al. 2019, "Detecting
           Out-of-Distribution Inputs to Deep Generative Models Using Typicality"), which
           asks whether a batch's mean bits/dim is *typical* rather than merely high, at batch
           sizes 1, 10 and 100, with its true- and false-positive rates;
        3. it moves images along a **class direction** in latent space (shirt → trouser), as
           Glow's manipulation vectors did with CelebA attributes.

        The same functions back the command line: `python -m keras_flow.score RUN --dataset
        SOURCE --reference RUN` (docs/likelihood.md).

        **Quick vs full.** With `KERAS_FLOW_QUICK=1` (the tests set it) a tiny Glow trains
        for a few steps on the embedded 8x8 digits, with inverted digits as the
        out-of-distribution set: a smoke test of a minute, too short to show anything. The
        full setting uses Fashion-MNIST from Debian's `dataset-fashion-mnist` package (IDX
        files in `/usr/share/datasets/fashion-mnist`), and falls back to the digits setting,
        saying so, when it is absent. Best: set `RUN` to a run folder trained with `train.py`
        (the command is in the next cell); otherwise the notebook trains a small Glow itself.
        """),
    code("""
        import json
        import os
        from pathlib import Path

        import matplotlib.pyplot as plt
        import numpy as np

        import keras_flow
        from keras_flow import attributes
        from keras_flow import notebook_helpers
        from keras_flow import preprocessing
        from keras_flow import scoring
        from keras_flow import typicality

        QUICK = os.environ.get("KERAS_FLOW_QUICK") == "1"
        print(f"keras_flow {keras_flow.__version__}, {'quick' if QUICK else 'full'} setting")
        """),
    md("""
        ## Settings

        `RUN` names a `train.py` run folder of a Glow trained on Fashion-MNIST; train one with
        (about 10 minutes of training, the W2 architecture of `benchmarks/fashion_mnist.py`):

            python3 train.py --dataset idx:/usr/share/datasets/fashion-mnist --fit pad \\
                --preset none --levels 3 --depth 8 --hidden-width 128 --batch-size 64 \\
                --max-seconds 600 --out runs/fashion-glow

        The run folder holds `model.keras` and `typicality.json`, the bits/dim of its
        validation images: the in-distribution reference of the typicality test. With
        `RUN = None` a Glow is trained here for `STEPS` steps.
        """),
    code("""
        RUN = None  # e.g. "runs/fashion-glow"
        FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
        HAVE_FASHION = any((FASHION_DIR / f"train-images-idx3-ubyte{ext}").is_file()
                           for ext in ("", ".gz"))
        FPR = 0.01  # the typicality test's false-positive rate
        BATCH_SIZES = (1, 10, 100)

        if HAVE_FASHION and not QUICK:
            DATASET = f"idx:{FASHION_DIR}"  # 28x28, zero-padded to 32x32 as train.py --fit pad
            CLASSES = ("T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                       "sneaker", "bag", "ankle boot")
            SOURCE, TARGET = 6, 1  # shirt -> trouser
            MODEL = dict(levels=3, depth=8, hidden_width=128)  # W2
            STEPS = 600
        else:
            if not QUICK:
                print(f"Fashion-MNIST not found in {FASHION_DIR} (apt-get install "
                      "dataset-fashion-mnist): falling back to the embedded digits, with "
                      "inverted digits as the out-of-distribution set.")
            DATASET = "digits"
            CLASSES = tuple(str(digit) for digit in range(10))
            SOURCE, TARGET = 3, 8
            MODEL = (dict(levels=2, depth=2, hidden_width=16) if QUICK
                     else dict(levels=2, depth=8, hidden_width=64))
            STEPS = 20 if QUICK else 600
        print(f"in-distribution: {DATASET}")
        """),
    md("""
        ## The model and its reference

        The reference of the typicality test is the bits/dim of held-out in-distribution
        images: the validation split, which the model did not train on. Every score here is
        taken at the centre of each pixel's bin (`preprocess(images, noise="center")`), as the
        SavedModel export's `bits_per_dim` endpoint does, so it is deterministic.
        """),
    code("""
        if RUN:
            scorer = scoring.load_scorer(RUN)  # the run's model.keras
            reference = typicality.load_reference(RUN)
        else:
            model, history = notebook_helpers.train_variant(
                MODEL, dict(dataset=DATASET, batch_size=64), STEPS, eval_every=STEPS // 2,
                test_batches=4)
            print(f"trained {STEPS} steps: test {history['final_test_bpd']:.3f} bits/dim")
            scorer = scoring.ModelScorer(model)
            held_out = keras_flow.data.load(DATASET, levels=MODEL["levels"])
            reference = typicality.reference_from_images(
                scorer, held_out.raw_images("validation"))
        model = scorer.model
        print(f"{model.count_params():,} parameters, images {model.image_shape}; reference: "
              f"{len(reference.bits_per_dim)} {reference.split} images, "
              f"H = {reference.mean:.3f} ± {reference.std:.3f} bits/dim")
        """),
    md("""
        ## Scores: the in-distribution test set against digits

        `scoring.read_images` fits any `--dataset` source to the model's size and
        `scoring.score_images` returns each image's bits/dim (and its per-level terms).
        Lower bits/dim = higher likelihood. The out-of-distribution digits come in two
        preparations, since the embedded digits are 8x8: **padded** (the 8x8 digit in the
        middle of a black 32x32 field, as `--fit pad` fits them) and **upsampled** to 28x28,
        MNIST's size, then padded to 32x32 like Fashion-MNIST (thick, smooth strokes).
        """),
    code("""
        found = scoring.read_images(DATASET, model.image_shape, split="test")
        in_bits = scoring.score_images(scorer, found.images)[scoring.BITS]
        if DATASET == "digits":
            OOD = {"inverted digits (255 - x)": 255 - found.images}
        else:
            OOD = {name: scoring.read_images("digits", model.image_shape, split="all",
                                             image_size=size).images
                   for name, size in (("digits, padded", None), ("digits, upsampled", 28))}
        ood_bits = {name: scoring.score_images(scorer, images)[scoring.BITS]
                    for name, images in OOD.items()}

        print(f"{DATASET} test: {in_bits.mean():.3f} bits/dim on average ({len(in_bits)} images)")
        below = {}
        for name, bits in ood_bits.items():
            below[name] = float(np.mean(bits < np.median(in_bits)))
            print(f"{name}: {bits.mean():.3f} bits/dim on average ({len(bits)} images); "
                  f"{below[name]:.1%} score a higher likelihood than the median "
                  f"in-distribution image")

        fig, axes = plt.subplots(1, 1 + len(OOD), figsize=(6 + 4 * len(OOD), 3.8),
                                 gridspec_kw=dict(width_ratios=(2,) + (1,) * len(OOD)))
        every = np.concatenate([in_bits, *ood_bits.values()])
        bins = np.linspace(every.min(), np.quantile(every, 0.999), 80)  # without far outliers
        axes[0].hist(in_bits, bins, alpha=0.6, density=True, label=f"{DATASET} test")
        for name, bits in ood_bits.items():
            axes[0].hist(bits, bins, alpha=0.6, density=True, label=name)
        axes[0].axvline(reference.mean, color="black", lw=1, ls="--", label="reference H")
        axes[0].set_xlabel("bits/dim (lower = more likely)")
        axes[0].legend(fontsize=8)
        for ax, (name, images) in zip(axes[1:], OOD.items()):
            order = np.argsort(ood_bits[name])
            notebook_helpers.show_images(images[order[:9]], ax=ax, columns=3,
                                    title=f"{name}: most likely")
        fig.tight_layout()
        plt.show()
        """),
    md("""
        Nalisnick et al. found that Glow trained on Fashion-MNIST gives MNIST digits *higher*
        likelihood than Fashion-MNIST's own test set. The likelihood is dominated by
        low-level statistics: a digit is mostly black background with a few strokes, simpler
        to encode than the texture of a shirt, and a flow's local convolutions reward that
        whatever the training set was. The padded 8x8 digits show this in an extreme form:
        mostly background, they score far fewer bits/dim than any garment. The upsampled
        digits need not: in our runs a Glow trained for ten minutes on two CPU cores gave
        them *more* bits/dim than Fashion-MNIST on average (docs/likelihood.md has the
        figures). Either way the likelihood alone does not separate them: a threshold
        "flag what scores low" would pass the padded digits and flag the most detailed
        clothes. (In the digits fallback, inverted digits are simply unlikely.)
        """),
    md("""
        ## The typicality test

        A high-dimensional Gaussian's samples do not lie near its mode but in a thin shell
        around it, the *typical set*; likewise in-distribution images have bits/dim close to
        the reference mean `H`, neither much above nor much below. The test flags a batch of
        M images when `|mean bits/dim - H|` exceeds a threshold `eps_M`, the `1 - FPR`
        quantile of that statistic over bootstrap batches of the reference. Here the rates are
        measured on random batches: the true-positive rate on the out-of-distribution images,
        the false-positive rate on the in-distribution *test* images (not the reference).
        """),
    code("""
        tables = {name: typicality.detection_table(reference, in_bits, bits, BATCH_SIZES, FPR,
                                                   num_batches=200 if QUICK else 1000)
                  for name, bits in ood_bits.items()}
        print(f"typicality test at a stated false-positive rate of {FPR:g}")
        for name, rows in tables.items():
            print()
            print(f"{DATASET} vs {name}")
            print(f"{'M':>5s}{'threshold':>12s}{'true pos.':>12s}{'false pos.':>12s}")
            for row in rows:
                print(f"{row['batch_size']:5d}{row['threshold']:12.4f}"
                      f"{row['true_positive_rate']:12.1%}{row['false_positive_rate']:12.1%}")

        summary_path = os.environ.get("KERAS_FLOW_SUMMARY_JSON")
        if summary_path:
            with open(summary_path, "w") as file:
                json.dump(dict(quick=QUICK, dataset=DATASET, in_mean=float(in_bits.mean()),
                               ood={name: dict(rows=tables[name],
                                               mean=float(ood_bits[name].mean()),
                                               below_in_median=below[name])
                                    for name in OOD}), file, indent=1)
            print(f"wrote {summary_path}")
        """),
    md("""
        With one image at a time the test can only flag the images whose bits/dim fall
        outside the reference's spread; the out-of-distribution images that happen to score
        near `H` pass. With larger batches the mean's spread shrinks as `1/sqrt(M)`, and so
        does the threshold: a batch of digits whose mean sits away from `H`, on either side,
        is flagged almost surely. The false-positive rate stays near the stated one if the
        reference is representative (its sampling error shows at small reference sizes).
        """),
    md("""
        ## Class directions: shirt → trouser

        As openai/glow's manipulation vectors: encode labelled images, average the latents of
        each class, and take the difference of two class means as a direction. Adding
        `strength * direction` to an image's latents and decoding moves it towards the target
        class. `levels="all"` moves every level's latent; `levels="top"` moves only the top
        (coarsest) one and keeps the finer levels' latents. Far along the direction (strength
        near 1 and beyond, for a briefly trained model) the latents leave the region the
        model has learned and the decoded images break up into noise: flows extrapolate
        poorly, and Glow's demo kept its strengths within [-1, 1] of a scaled direction.
        """),
    code("""
        x = preprocessing.preprocess(found.images, noise="center").numpy()
        limit = 2000 if DATASET != "digits" else len(x)
        means = attributes.class_means(model, x[:limit], found.labels[:limit])
        direction = attributes.direction(means, SOURCE, TARGET)
        STRENGTHS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
        sources = x[found.labels == SOURCE][:6]

        fig, axes = plt.subplots(1, 2, figsize=(12, 6))
        for ax, levels in zip(axes, attributes.LEVELS):
            grid = attributes.manipulation_grid(model, sources, direction, STRENGTHS,
                                                levels=levels)
            notebook_helpers.show_images(grid, ax=ax, columns=len(STRENGTHS),
                                    title=f"{CLASSES[SOURCE]} → {CLASSES[TARGET]}, levels="
                                          f"{levels!r}: strength {STRENGTHS[0]} .. "
                                          f"{STRENGTHS[-1]}")
        plt.show()
        restored = attributes.manipulate(model, sources, direction, strength=0.0)
        print(f"strength 0 gives back the images: max |x' - x| = "
              f"{float(np.max(np.abs(np.asarray(restored) - sources))):.1e}")
        """),
    md("""
        ## Limits

        - Bits/dim measure how *compressible* an image is under the model as much as how
          *similar* it is to the training data: never read a low score as "in-distribution".
        - The typicality test needs batches drawn from one source. Single-image detection
          (M = 1) is weak whenever the two distributions' bits/dim overlap.
        - The reference is as good as its held-out images: a shifted validation split, or a
          different dequantisation (scores here are at bin centres, the training metric uses
          uniform noise), moves `H`.
        - Class directions come from class means, so they carry everything that differs
          between the classes on average, including the background; a class that is
          heterogeneous (several kinds of shirt) gives a blurrier direction.
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
    for cells, name in ((PERMUTATIONS, "permutations.ipynb"), (EXPLORE, "explore.ipynb"),
                        (LIKELIHOOD, "likelihood.ipynb")):
        print(f"wrote {write(cells, name)}")


if __name__ == "__main__":
    main()

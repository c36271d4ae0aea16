"""Training a flow from a configuration: data, model, optimiser, callbacks, outputs.

`train(TrainConfig(...))` is what `python train.py` runs. The package holds one concept per
module: `config` (TrainConfig, presets, checks), `runtime` (threads, strategy, dtype policy),
`run_folder` (output, resume, overwrite), `assembly` (data, plan, model, optimiser, starting
weights), `loop` (callbacks, mid-epoch resume) and `finish` (evaluation, saving, export).
`train` runs them in this order:

1. Resolves the configuration (the recipe's and the preset's values under the explicit
   options; `resolve_config`), sets
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

import dataclasses
import time

import keras

from keras_flow import files
from keras_flow import interrupts
from keras_flow import typicality
# The steps `train` runs, and the names train.py, the tests and the benchmarks import from
# here. `train` looks up `make_callbacks` and `export` in this namespace, where
# benchmarks/quick_start.py wraps them to time a run.
from keras_flow.training.assembly import Plan
from keras_flow.training.assembly import build_model
from keras_flow.training.assembly import check_steps_per_execution
from keras_flow.training.assembly import compile_model
from keras_flow.training.assembly import init_batch
from keras_flow.training.assembly import initialize
from keras_flow.training.assembly import load_data
from keras_flow.training.assembly import make_plan
from keras_flow.training.assembly import squeezes
from keras_flow.training.assembly import start_weights
from keras_flow.training.config import DEFAULTS
from keras_flow.training.config import RECIPES
from keras_flow.training.config import TIME_BUDGET_RECIPE
from keras_flow.training.config import MODELS
from keras_flow.training.config import TrainConfig
from keras_flow.training.config import parse_warmup
from keras_flow.training.config import preset_values
from keras_flow.training.config import recipe_line
from keras_flow.training.config import recipe_values
from keras_flow.training.config import resolve_recipe
from keras_flow.training.config import resolve_config
from keras_flow.training.config import say
from keras_flow.training.finish import evaluate
from keras_flow.training.finish import export
from keras_flow.training.finish import save_model
from keras_flow.training.finish import use_final_weights
from keras_flow.training.finish import write_metrics
from keras_flow.training.loop import fit
from keras_flow.training.loop import resume_step
from keras_flow.training.loop import make_callbacks
from keras_flow.training.loop import start_message
from keras_flow.training.run_folder import check_output_folder
from keras_flow.training.run_folder import open_run_folder
from keras_flow.training.run_folder import output_folder
from keras_flow.training.run_folder import remove_run
from keras_flow.training.run_folder import saved_config
from keras_flow.training.runtime import dtype_policy
from keras_flow.training.runtime import native_bfloat16
from keras_flow.training.runtime import resolve_batch_shards
from keras_flow.training.runtime import start_runtime
from keras_flow.training.runtime import start_strategy
from keras_flow.training.runtime import start_threads
from keras_flow.training.runtime import warn_about_precision


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
    config = resolve_config(config, saved_config(config))
    # Before TensorFlow starts: threads, then the strategy (multi-worker collectives).
    runtime = start_runtime(config)
    run = open_run_folder(config, runtime.strategy)
    config = dataclasses.replace(config, out=str(run.shared))
    with dtype_policy(config.mixed_precision):
        data = load_data(config)
        config = runtime.resolve_batch_shards(config, data)
        plan = make_plan(config, run.out, data)
        check_steps_per_execution(plan, run.state)  # before the model is built
        keras.utils.set_random_seed(config.seed)
        with runtime.strategy.scope():
            model = build_model(config, data)
            compile_model(model, plan)
            start_weights(model, data, config, run)
        files.write_json(run.out / "config.json", dataclasses.asdict(config))
        say(config, start_message(plan, run.state, runtime.strategy.num_replicas_in_sync))
        with interrupts.sigint_requests() as interrupt:
            callbacks, fitted = make_callbacks(model, data, plan, resume_step(run.state),
                                               interrupt)
            fit(model, data, plan, run.state, callbacks, fitted)
        seconds = time.monotonic() - started
        restored_best = use_final_weights(model, fitted.keep_best)
        metrics = evaluate(model, data)
        save_model(model, plan)
        exported = export(model, run.out / "export") is not None
        typicality.save_reference(model, data, run.out)  # for `keras_flow.score --reference`
        return write_metrics(model, metrics, plan, fitted, run.state, seconds, restored_best,
                             exported)

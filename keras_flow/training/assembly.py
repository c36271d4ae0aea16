"""The pieces a run is assembled from: the data, the plan (steps, warm-up), the model, its
optimizer, and the weights it starts from (a checkpoint, or actnorm's data-dependent
initialisation)."""

import dataclasses
from pathlib import Path

from keras_flow import data as flow_data
from keras_flow import distribute
from keras_flow.optimizers import build_optimizer
from keras_flow.optimizers import make_optimizer
from keras_flow.training.config import MODELS
from keras_flow.training.config import parse_warmup
from keras_flow.training.run_folder import restore_checkpoint
from keras_flow.training.runtime import JIT


# The epochs `fit` is given when the clock alone ends training (`epochs` None, `max_seconds`).
UNTIL_TIME_IS_UP = 10 ** 6


@dataclasses.dataclass
class Plan:
    """What `train` derives from a resolved configuration and the data."""

    config: object
    out: Path
    steps_per_epoch: int
    warmup_steps: int

    @property
    def total_steps(self):
        """The steps of all epochs; None when training runs until the time is up."""
        if self.config.epochs is None:
            return None
        return self.config.epochs * self.steps_per_epoch

    @property
    def epochs(self):
        """The `epochs` of `fit`: the configuration's, or `UNTIL_TIME_IS_UP` without one."""
        return UNTIL_TIME_IS_UP if self.config.epochs is None else self.config.epochs


def squeezes(config):
    """How many times the model halves the image size (height and width must divide 2**it):
    the model class's `halvings_for(levels)`."""
    return MODELS[config.model][0].halvings_for(config.levels)


def load_data(config):
    """`keras_flow.data.load` of the dataset, batch size, bits and image size of `config`."""
    return flow_data.load(config.dataset, batch_size=config.batch_size, n_bits=config.n_bits,
                          levels=squeezes(config), image_size=config.image_size,
                          fit=config.fit, validation_fraction=config.validation_fraction,
                          with_labels=config.conditional, seed=config.seed,
                          on_bad_file=config.on_bad_file, augment=config.augment)


def make_plan(config, out, data):
    """The `Plan` of `config` for `data`: one pass over the training split per epoch unless
    `steps_per_epoch` says otherwise, and the warm-up in steps."""
    steps_per_epoch = config.steps_per_epoch or max(1, data.num_train // config.batch_size)
    return Plan(config, out, steps_per_epoch, parse_warmup(config.warmup, steps_per_epoch))


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
    model = model_class(**{k: v for k, v in options.items() if v is not None})
    distribute.reducible_step_logs(model)  # under several workers only
    return model


def compile_model(model, plan):
    """Compiles `model` with the optimizer of `plan` (`keras_flow.optimizers.make_optimizer`),
    its XLA choice and steps per execution."""
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

    The optimizer is built here (`keras_flow.optimizers.build_optimizer`: eagerly, so that
    the training step traces once), right after the initialisation, so that its moving
    averages (`ema`) start from the initialised weights. Under a `tf.distribute` strategy this
    runs in its scope, once for all replicas (`keras_flow.distribute.initialize`).
    """
    distribute.initialize(model, *init_batch(data, config.init_batch_size, config.conditional))
    build_optimizer(model)


def start_weights(model, data, config, run):
    """Restores the checkpoint of `run` (`RunFolder`) into `model`, or initialises it when
    there is none."""
    if run.state is None:
        initialize(model, data, config)
    else:
        restore_checkpoint(model, run)


def init_batch(data, size, with_labels=False):
    """`(images,)` or `(images, labels)`: `size` training images for actnorm's init."""
    size = min(size, data.num_train)
    if not with_labels:
        return (data.init_batch(size),)
    batches = list(data.train.unbatch().take(size).batch(size).as_numpy_iterator())
    return batches[0]["image"], batches[0]["label"]

"""openai/glow's Adamax, Adam, and a linear learning-rate warm-up, as Keras 3 optimizer pieces.

Backend-neutral (`keras.ops`). On the TensorFlow backend the two optimizers update each
variable with TensorFlow's fused training kernel instead (`keras_flow.kernels.fused_updates`,
the seam for speed: one op per variable instead of about ten); the arithmetic is the same. All
classes are registered serializable, so a compiled model saved with them reloads after
`import keras_flow`.

Also here: what training reads from an optimizer (`unwrapped`, `learning_rate_schedule_of`,
`optimizer_steps`, `loss_scale`) and `build_optimizer` / `BuildOptimizer`, which create its
variables before `fit` traces the training step.
"""

import contextlib
import math

import keras
from keras import ops

from keras_flow import compat
from keras_flow.kernels import fused_updates

OPTIMIZERS = ("adamax", "adam")


class SharedStepScalars:
    """Mixin for Adam-family optimizers: the scalars that every variable's update shares
    (`beta_1`, `beta_2`, `beta_1^t`, `beta_2^t`, the learning rate, `epsilon`) are made once
    per step, not once per variable (for a Glow's hundreds of variables: thousands of ops
    fewer, and seconds less graph tracing)."""

    def apply(self, grads, trainable_variables=None):
        # One cache per update of all variables; a plain attribute, not a tracked one.
        compat.set_untracked(self, "_step_scalar_cache", {})
        try:
            return super().apply(grads, trainable_variables)
        finally:
            compat.set_untracked(self, "_step_scalar_cache", None)

    def step_scalars(self, learning_rate, dtype):
        """`make_step_scalars(learning_rate, dtype)`, made once per update of all variables
        (and afresh when `update_step` is called on its own)."""
        cache = getattr(self, "_step_scalar_cache", None)
        if cache is None:
            return self.make_step_scalars(learning_rate, dtype)
        if dtype not in cache:
            cache[dtype] = self.make_step_scalars(learning_rate, dtype)
        return cache[dtype]

    def make_step_scalars(self, learning_rate, dtype):
        """`dict(beta_1, beta_2, beta_1_power, beta_2_power, lr, epsilon)` in `dtype` for
        step `t = iterations + 1`."""
        step = ops.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = ops.cast(self.beta_1, dtype), ops.cast(self.beta_2, dtype)
        return dict(beta_1=beta_1, beta_2=beta_2, beta_1_power=ops.power(beta_1, step),
                    beta_2_power=ops.power(beta_2, step), lr=ops.cast(learning_rate, dtype),
                    epsilon=ops.cast(self.epsilon, dtype))


@keras.saving.register_keras_serializable(package="keras_flow")
class GlowAdamax(SharedStepScalars, keras.optimizers.Adamax):
    """Adamax as openai/glow's `optim.py` implements it (its default optimiser).

    With gradient `g`, step `t = 1, 2, ...` and learning rate `lr` (after any schedule):

        m1 = b1 m1 + (1 - b1) g
        m2 = max(b2 m2, |g|)
        lr_t = lr * sqrt(1 - b2^t) / (1 - b1^t)
        w = w - lr_t m1 / (m2 + epsilon)

    It differs from `keras.optimizers.Adamax` only in the bias correction: openai/glow also
    applies the `sqrt(1 - b2^t)` factor of Adam, which shrinks the first steps (a built-in
    warm-up). openai/glow ties `b2 = 1 - 1 / steps_per_epoch` (see `glow_beta_2`).

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule` (1e-3).
        beta_1: decay of the first moment (0.9).
        beta_2: decay of the infinity norm (0.999; openai/glow: `1 - 1/steps_per_epoch`).
        epsilon: added to the norm (1e-8, as openai/glow).
        **kwargs: the common optimizer options (`clipnorm`, `global_clipnorm`, `use_ema`,
            `ema_momentum`, `weight_decay`, `name`, ...).

    Reference: Kingma & Ba, "Adam", arXiv:1412.6980, section 7.1; openai/glow `optim.py`.
    """

    def __init__(self, learning_rate=1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-8,
                 name="glow_adamax", **kwargs):
        super().__init__(learning_rate=learning_rate, beta_1=beta_1, beta_2=beta_2,
                         epsilon=epsilon, name=name, **kwargs)

    def make_step_scalars(self, learning_rate, dtype):
        """The shared scalars plus `adamax_lr = lr * sqrt(1 - b2^t)`."""
        scalars = super().make_step_scalars(learning_rate, dtype)
        scalars["adamax_lr"] = scalars["lr"] * ops.sqrt(1 - scalars["beta_2_power"])
        return scalars

    def update_step(self, gradient, variable, learning_rate):
        gradient = ops.cast(gradient, variable.dtype)
        c = self.step_scalars(learning_rate, variable.dtype)
        lr = c["adamax_lr"]
        m, u = compat.optimizer_slots(self, variable, "_m", "_u")
        if fused_updates.applies(gradient, variable):
            fused_updates.apply_adamax(variable, m, u, gradient, c, lr)
            return
        self.assign_add(m, (gradient - m) * (1 - c["beta_1"]))
        self.assign(u, ops.maximum(c["beta_2"] * u, ops.abs(gradient)))
        self.assign_sub(variable, lr / (1 - c["beta_1_power"]) * m / (u + c["epsilon"]))


@keras.saving.register_keras_serializable(package="keras_flow")
class FusedAdam(SharedStepScalars, keras.optimizers.Adam):
    """`keras.optimizers.Adam`, updating each variable with TensorFlow's fused kernel.

        m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2,
        w = w - lr sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + epsilon)

    On the TensorFlow backend one `ResourceApplyAdam` op replaces Keras's ten or so
    elementwise ops per variable (a step of a Glow has hundreds of variables, and per-op
    overhead is a large part of a CPU step); elsewhere, or with `amsgrad` or sparse gradients,
    it is Keras's Adam. Same arguments as `keras.optimizers.Adam`.
    """

    def __init__(self, learning_rate=1e-3, name="fused_adam", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or not fused_updates.applies(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        c = self.step_scalars(learning_rate, variable.dtype)
        m, v = compat.optimizer_slots(self, variable, "_momentums", "_velocities")
        fused_updates.apply_adam(variable, m, v, ops.cast(gradient, variable.dtype), c)


@keras.saving.register_keras_serializable(package="keras_flow")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """Learning rate rising linearly from `learning_rate / warmup_steps` to `learning_rate`:

        lr(step) = learning_rate * min(1, (step + 1) / warmup_steps)     (step = 0, 1, ...)

    openai/glow's `lr * min(1, n_processed / (n_train * epochs_warmup))`, one step earlier (its
    first step has learning rate 0). `warmup_steps=0` gives a constant rate.

    Args:
        learning_rate: the rate after the warm-up.
        warmup_steps: length of the ramp in optimizer steps (>= 0).
    """

    def __init__(self, learning_rate, warmup_steps):
        if learning_rate <= 0 or warmup_steps < 0:
            raise ValueError(
                f"LinearWarmup needs learning_rate > 0 and warmup_steps >= 0; got "
                f"learning_rate={learning_rate}, warmup_steps={warmup_steps}.")
        self.learning_rate = float(learning_rate)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        if not self.warmup_steps:
            return ops.convert_to_tensor(self.learning_rate, "float32")
        ramp = (ops.cast(step, "float32") + 1.0) / float(self.warmup_steps)
        return self.learning_rate * ops.minimum(1.0, ramp)

    def get_config(self):
        return {"learning_rate": self.learning_rate, "warmup_steps": self.warmup_steps}


@keras.saving.register_keras_serializable(package="keras_flow")
class BudgetCosineDecay(LinearWarmup):
    """`LinearWarmup` annealed to 0 over a wall-clock budget instead of a number of steps:

        lr(step) = LinearWarmup(step) * (1 + cos(pi * spent)) / 2

    `spent` is a float32 variable in [0, 1], the share of the budget already used, which
    `keras_flow.callbacks.SpendBudget` sets before every step from a clock. A run limited to
    `max_seconds` then reaches a learning rate of 0 when its time is up, whatever the speed of
    the host (a step-based decay must guess how many steps the budget holds). `spent` is
    state, not configuration: a reloaded schedule starts at 0.
    """

    def __init__(self, learning_rate, warmup_steps):
        super().__init__(learning_rate, warmup_steps)
        self.spent = keras.Variable(0.0, dtype="float32", trainable=False, name="budget_spent")

    def __call__(self, step):
        spent = ops.clip(ops.convert_to_tensor(self.spent), 0.0, 1.0)
        return super().__call__(step) * (0.5 + 0.5 * ops.cos(math.pi * spent))


def unwrapped(optimizer):
    """The optimizer a `LossScaleOptimizer` (mixed_float16) wraps, or `optimizer` itself: the
    one that holds the learning rate, the slots and the moving averages."""
    return getattr(optimizer, "inner_optimizer", optimizer)


def learning_rate_schedule_of(optimizer):
    """The `LearningRateSchedule` an optimizer (or the one a `LossScaleOptimizer` wraps) was
    built with, or None for a constant rate."""
    return compat.learning_rate_schedule(unwrapped(optimizer))


def is_loss_scaled(optimizer):
    """Whether `optimizer` is a `LossScaleOptimizer` (Keras wraps it so under mixed_float16)."""
    return isinstance(optimizer, keras.optimizers.LossScaleOptimizer)


def loss_scale(optimizer):
    """The current dynamic loss scale of a `LossScaleOptimizer`, else None."""
    if not is_loss_scaled(optimizer):
        return None
    return float(keras.ops.convert_to_numpy(optimizer.dynamic_scale))


def optimizer_steps(optimizer):
    """The optimizer's update count as an int (also for a `tf.distribute` mirrored variable)."""
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


def build_optimizer(model):
    """Creates the compiled optimizer's variables now, eagerly, for a built model (no-op
    otherwise, or if they exist).

    Keras on TensorFlow without a distribution strategy defers them to the first trace of
    the training step, which then traces the step twice and creates each of the ~2 variables
    per weight through a lifted initialiser graph: W1's first `fit` step took 31 s that way
    and 14 s with them built first (BENCHMARKS.md). Build them before `fit` (train.py does,
    right after actnorm's initialisation, so that the moving averages of `ema` start from
    the initialised weights), or pass the `BuildOptimizer` callback to `fit`.
    """
    optimizer = model.optimizer
    if (optimizer is None or optimizer.built
            or not all(layer.built for layer in compat.all_sublayers(model))):
        return
    strategy = getattr(model, "distribute_strategy", None)  # TensorFlow only
    with (contextlib.nullcontext() if strategy is None else strategy.scope()):
        optimizer.build(model.trainable_variables)


class BuildOptimizer(keras.callbacks.Callback):
    """`build_optimizer(model)` when `fit` starts, before the first trace of the step."""

    def on_train_begin(self, logs=None):
        build_optimizer(self.model)


def glow_beta_2(steps_per_epoch):
    """openai/glow's `beta2 = 1 - 1 / (train_its * polyak_epochs)` with one Polyak epoch."""
    return 1.0 - 1.0 / max(2, int(steps_per_epoch))


def learning_rate_schedule(learning_rate, warmup_steps=0, decay_steps=0, budget_decay=False):
    """`LinearWarmup` to `learning_rate`; with `decay_steps > 0`, then a cosine decay to 0 over
    that many steps (Keras's `CosineDecay` with its linear warm-up from 0):

        lr(t) = learning_rate * t / warmup_steps                              t < warmup_steps
        lr(t) = learning_rate * (1 + cos(pi * min(t - warmup_steps, decay_steps)
                                         / decay_steps)) / 2                  afterwards

    With `budget_decay`, a `BudgetCosineDecay` instead: the cosine follows the share of a
    time budget spent (set by `keras_flow.callbacks.SpendBudget`), not the step.
    """
    if decay_steps < 0:
        raise ValueError(f"decay_steps must be >= 0 (0: no decay); got {decay_steps}.")
    if budget_decay:
        if decay_steps:
            raise ValueError("Choose one decay: over steps (decay_steps) or over the time "
                             "budget (budget_decay), not both.")
        return BudgetCosineDecay(learning_rate, warmup_steps)
    if not decay_steps:
        return LinearWarmup(learning_rate, warmup_steps)
    if warmup_steps:
        return keras.optimizers.schedules.CosineDecay(
            0.0, int(decay_steps), warmup_target=float(learning_rate),
            warmup_steps=int(warmup_steps))
    return keras.optimizers.schedules.CosineDecay(float(learning_rate), int(decay_steps))


def make_optimizer(name="adamax", learning_rate=1e-3, warmup_steps=0, steps_per_epoch=None,
                   clip_norm=None, ema=0.0, decay_steps=0, beta_2=None, budget_decay=False):
    """The training optimiser: `"adamax"` (`GlowAdamax`, openai/glow) or `"adam"` (`FusedAdam`).

    Args:
        name: `"adamax"` or `"adam"`.
        learning_rate: peak learning rate, reached after `warmup_steps` (`LinearWarmup`).
        warmup_steps: linear warm-up length in steps (0: none).
        decay_steps: cosine decay to 0 over this many steps after the warm-up (0: constant;
            see `learning_rate_schedule`).
        budget_decay: cosine decay to 0 over a time budget instead (`BudgetCosineDecay`;
            training needs the `keras_flow.callbacks.SpendBudget` callback).
        steps_per_epoch: sets Adamax's `beta_2 = 1 - 1/steps_per_epoch` as openai/glow does
            (None: 0.999).
        beta_2: decay of the second moment (Adam) or of the infinity norm (Adamax), in
            (0, 1); None: the defaults above (Adam: 0.999). When a weight's gradient grows
            k-fold, Adam's steps on it grow toward k times their usual size for the order
            of `1 / (1 - beta_2)` steps; a shorter memory (e.g. 0.99) cuts that short.
        clip_norm: clip the gradients to this global norm (None or 0: no clipping).
        ema: momentum of an exponential moving average of the weights (Polyak averaging,
            Keras's `use_ema`); 0 turns it off. Keras copies the averages into the model at
            the end of `fit` (`finalize_variable_values`).

    Returns:
        A `keras.optimizers.Optimizer`.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"Unknown optimizer {name!r}; choose one of {OPTIMIZERS}.")
    if not 0.0 <= ema < 1.0:
        raise ValueError(f"ema must be in [0, 1) (0 turns it off, e.g. 0.999); got {ema}.")
    if beta_2 is not None and not 0.0 < beta_2 < 1.0:
        raise ValueError(f"beta_2 must be in (0, 1), e.g. 0.999; got {beta_2}.")
    if clip_norm is not None and (clip_norm < 0 or not math.isfinite(clip_norm)):
        raise ValueError(f"clip_norm must be >= 0 (0 or None: no clipping); got {clip_norm}.")
    options = dict(learning_rate=learning_rate_schedule(learning_rate, warmup_steps,
                                                        decay_steps, budget_decay),
                   global_clipnorm=clip_norm or None, use_ema=ema > 0,
                   ema_momentum=ema if ema > 0 else 0.99)
    if name == "adam":
        return FusedAdam(beta_2=0.999 if beta_2 is None else beta_2, **options)
    if beta_2 is None:
        beta_2 = 0.999 if steps_per_epoch is None else glow_beta_2(steps_per_epoch)
    return GlowAdamax(beta_2=beta_2, **options)

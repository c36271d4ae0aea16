"""The finish of a run: the final weights, their evaluation, model.keras and the sample grids,
the SavedModel export, and last metrics.json, which marks the run finished."""

import math

from keras_flow import callbacks as flow_callbacks
from keras_flow import files
from keras_flow.optimizers import loss_scale
from keras_flow.optimizers import optimizer_steps
from keras_flow.training.config import say
from keras_flow.training.loop import stopped_by


def use_final_weights(model, keep_best):
    """Puts the final weights in `model`: the moving averages (`ema`) if the optimizer keeps
    them, then the best ones by validation bits/dim if `keep_best` saved any (returns
    whether it did)."""
    model.optimizer.finalize_variable_values(model.trainable_variables)
    return keep_best.restore(model)


def save_model(model, plan):
    """Writes `model.keras` and the final sample grids (`samples_T<t>.png`)."""
    out, config = plan.out, plan.config
    with files.atomic_path(out / "model.keras") as temporary:
        model.save(temporary)
    flow_callbacks.write_sample_grids(model, out, config.temperatures, config.n_bits,
                                      config.num_samples, config.seed, prefix="samples_")


def write_metrics(model, metrics, plan, fitted, state, seconds, restored_best, exported):
    """`metrics` (`evaluate`'s) with the run's counts, written to metrics.json and announced;
    returns them with `out`."""
    out = plan.out
    metrics = dict(
        metrics,
        epochs=round(fitted.counter.step / plan.steps_per_epoch, 4),
        steps=fitted.counter.step,
        optimizer_steps=optimizer_steps(model.optimizer),
        skipped_steps=fitted.counter.step - optimizer_steps(model.optimizer),
        loss_scale=loss_scale(model.optimizer),
        seconds=round(fitted.seconds, 2),
        total_seconds=round(seconds, 2),
        resumed=state is not None,
        resumed_from_step=None if state is None else state["step"],
        time_limit_reached=fitted.time_limit.reached,
        stopped_by=stopped_by(fitted, plan),
        best_weights=restored_best,
        best_epoch=fitted.keep_best.record and fitted.keep_best.record["epoch"],
        exported=exported,
    )
    files.write_json(out / "metrics.json", metrics)
    say(plan.config, _stop_line(plan.config, metrics))
    say(plan.config, f"Test bits/dim: {_format(metrics['test_bits_per_dim'])} "
                     f"(validation {_format(metrics['validation_bits_per_dim'])}, train "
                     f"{_format(metrics['train_bits_per_dim'])}); outputs in {out}")
    return dict(metrics, out=str(out))


def _stop_line(config, metrics):
    where = f"at step {metrics['steps']} (epoch {metrics['epochs']:g})"
    if metrics["stopped_by"] == "time":
        return f"Stopped by the clock: the {config.max_seconds:g} s limit, {where}."
    limit = "" if config.max_seconds is None else f", before the {config.max_seconds:g} s limit"
    return f"Stopped by the epochs: {config.epochs} done{limit}, {where}."


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

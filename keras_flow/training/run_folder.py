"""The run folder: where a run writes, whether it resumes an unfinished one, and `--overwrite`.

A run of the same configuration that has not finished (no metrics.json) is resumed from its
checkpoint; a finished run, or one of another configuration, is refused unless `--overwrite`
deletes its files (`RUN_FILES`, nothing else). Under several workers the chief writes the
run's folder and every other worker a sibling copy (`RunFolder.out`).
"""

import dataclasses
import re
import shutil
import time
from pathlib import Path

from keras_flow import distribute
from keras_flow import files
from keras_flow.callbacks import CHECKPOINT_STATE
from keras_flow.callbacks import Checkpoint

# Options that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = ("out", "epochs", "max_seconds", "checkpoint_every", "verbose", "overwrite",
                     "strategy", "cpu_devices", "jit", "remat", "batch_shards",
                     "steps_per_execution", "test_every_epoch")
# ...and, when `out` names the folder, these too: to continue a run that diverged.
RECOVERY_CHANGES = ("lr", "clip_norm")
# What a run writes in its folder; `overwrite` deletes these, and nothing else.
# Options added since keras_flow 0.1.0, with the value a config.json without them meant, so
# that a run folder written by 0.1.0 still resumes.
# `recipe`: a run folder from before recipes trained with openai/glow's settings.
ADDED_OPTIONS = {"augment": "none", "recipe": "openai", "test_every_epoch": True}
RUN_FILES = ("config.json", "checkpoints", "samples", "tensorboard", "export", "model.keras",
             "metrics.json", "history.json", "best.json", "best.weights.npz",
             "bits_per_dim.png", "samples_T*.png", "typicality.json")


@dataclasses.dataclass
class RunFolder:
    """`shared`: the run's folder; `out`: the one this process writes (the same but for the
    non-chief workers); `state`: the checkpoint state to resume from, or None."""

    shared: Path
    out: Path
    state: dict = None

    @property
    def checkpoints(self):
        """The checkpoints every process resumes from: the chief's."""
        return self.shared / "checkpoints"


def saved_config(config):
    """The config.json in the folder `config.out` names (a run to resume), else None."""
    if config.out is None:
        return None
    saved = files.read_json(Path(config.out) / "config.json")
    return saved if isinstance(saved, dict) else None


def open_run_folder(config, strategy):
    """The `RunFolder` of `config` under `strategy`, with half-written files of a killed run
    removed and the checkpoint state to resume from read. A non-chief worker under
    `--overwrite` starts from scratch, like the chief, which deletes the old checkpoints."""
    shared, out = output_folders(config, strategy)
    for folder in (out, out / "checkpoints", out / "samples"):
        files.remove_temporaries(folder)
    starts_over = shared != out and config.overwrite
    state = None if starts_over else files.read_json(shared / "checkpoints" / CHECKPOINT_STATE)
    return RunFolder(shared, out, state)


def restore_checkpoint(model, run):
    """Loads the checkpoint `run.state` names into the compiled `model` (`Checkpoint.restore`)."""
    return Checkpoint.restore(model, run.checkpoints)


def output_folders(config, strategy):
    """`(shared, out)`: the run's folder (`output_folder`) and the one this process writes.

    They are the same folder except for the non-chief workers of a multi-worker run, which
    write their (identical) copy of every output to `<shared>.worker-<index>` so that no two
    processes write one file; `--overwrite` there deletes only that copy.
    """
    if distribute.is_chief(strategy):
        out = output_folder(config)
        return out, out
    shared = Path(config.out)
    out = distribute.worker_folder(shared, strategy)
    check_output_folder(out, config)
    return shared, out


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
            and (folder / "checkpoints" / CHECKPOINT_STATE).exists()
            and not _config_differences(saved, config))


def _config_differences(saved, config, allowed=RESUMABLE_CHANGES):
    """Options (other than `allowed`) in which a saved config.json differs."""
    if saved is None:
        return []
    current = dataclasses.asdict(config)
    current["temperatures"] = list(current["temperatures"])
    return [key for key in current if key not in allowed
            and saved.get(key, ADDED_OPTIONS.get(key)) != current[key]]


def _slug(dataset):
    kind, _, path = dataset.partition(":")
    name = f"{kind}-{Path(path.rstrip('/')).name}" if path else kind
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)

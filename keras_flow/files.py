"""Atomic file writes: a kill at any moment leaves the old file or the new one, never half.

Every writer goes to a temporary name in the target's folder (same file system), which is
flushed to disk (`fsync`) and then `os.replace`d onto the target, which POSIX and Windows do
atomically; the folder is synced after the rename, so the new name survives a power loss too.
Readers never see the temporary names (`.<name>.tmp-<pid>...`, and the `.<name>.partial-...`
folders of `keras_flow.saved_model.write_atomically`); `remove_temporaries` deletes those a
killed process left.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path`; on success it replaces `path`, on error it goes.

    The temporary name keeps the target's suffixes (`x.weights.h5` -> `.x.tmp-123.weights.h5`),
    for writers that check them (Keras's `save_weights`, `model.save`).

    Example:
        >>> with atomic_path(out / "model.keras") as tmp:
        ...     model.save(tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem, dot, suffixes = path.name.partition(".")
    temporary = path.with_name(f".{stem}.tmp-{os.getpid()}{dot}{suffixes}")
    try:
        yield temporary
        _fsync(temporary)
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    finally:
        if temporary.exists():
            temporary.unlink()


def _fsync(path):
    with open(path, "rb") as stream:
        os.fsync(stream.fileno())


def _fsync_folder(folder):
    """Makes a rename in `folder` durable (POSIX; Windows cannot open folders)."""
    if os.name != "posix":
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def check_folder_path(folder, what):
    """Raises `ValueError` if a file stands where `folder` (named `what` in the message, e.g.
    "--out") or the nearest of its parents that exists should be a folder, so a writer learns
    it before it starts rather than when it first writes."""
    path = Path(folder).absolute()
    for candidate in (path, *path.parents):
        if candidate.is_dir():
            return
        if candidate.exists():
            where = ("is a file" if candidate == path
                     else f"cannot be created: {candidate} is a file")
            raise ValueError(f"{what} {folder} {where}, not a folder; choose another {what}.")


def remove_temporaries(folder):
    """Deletes what killed writers left in `folder` (not recursive): temporary files
    (`.*.tmp-*`) and partial export folders (`.*.partial-*`)."""
    for path in Path(folder).glob(".*.tmp-*"):
        if path.is_file():
            path.unlink()
    for path in Path(folder).glob(".*.partial-*"):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def write_bytes(path, data):
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text(path, text):
    write_bytes(path, text.encode("utf-8"))


def write_json(path, value):
    write_text(path, json.dumps(value, indent=2, sort_keys=True) + "\n")


def read_json(path, default=None):
    """The JSON value in `path`, or `default` when the file does not exist."""
    path = Path(path)
    return json.loads(path.read_text("utf-8")) if path.exists() else default

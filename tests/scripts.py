"""The repository's scripts (train.py, benchmarks/*.py) loaded as modules, for the tests that
call their functions in this process."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path):
    """The module of the script at `relative_path` from the repository root, freshly run."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

"""The layering the design page promises, checked on the source: the core (`keras_flow.layers`,
`keras_flow.models`) imports nothing from keras_flow outside itself except the speed seam
(`keras_flow.kernels`), and no TensorFlow; no layer keeps module-level or thread-local state."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "keras_flow"
CORE = sorted((PACKAGE / "layers").glob("*.py")) + sorted((PACKAGE / "models").glob("*.py"))
ALLOWED = ("keras_flow.layers", "keras_flow.models", "keras_flow.kernels")


def imported_modules(path):
    """Every module name `path` imports, at any depth (function-level imports included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module == "keras_flow":
            names += [f"keras_flow.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


@pytest.mark.parametrize("path", CORE, ids=[f"{p.parent.name}/{p.name}" for p in CORE])
def test_core_imports_only_the_core_and_the_kernel_seam(path):
    for name in imported_modules(path):
        assert not name.startswith(("tensorflow", "threading", "functools")), (path.name, name)
        if name == "keras_flow" or name.startswith("keras_flow."):
            assert name.startswith(ALLOWED), f"{path.name} imports {name}"

"""Every public layer and model documents itself with a runnable `Example:` and a `Reference:`;
the examples run here as doctests."""

import doctest
import importlib
import inspect
import pkgutil

import keras
import numpy as np
import pytest

import keras_flow
import keras_flow.layers
import keras_flow.models

PACKAGES = (keras_flow.layers, keras_flow.models)
MODULES = [importlib.import_module(f"{package.__name__}.{info.name}")
           for package in PACKAGES for info in pkgutil.iter_modules(package.__path__)]
PUBLIC = [(name, cls) for package in PACKAGES for name, cls in vars(package).items()
          if inspect.isclass(cls) and cls.__module__.startswith(package.__name__)
          and name not in ("FlowLayer", "FlowModel")]


@pytest.mark.parametrize("name, cls", PUBLIC, ids=[name for name, _ in PUBLIC])
def test_public_class_has_an_example_and_a_reference(name, cls):
    doc = inspect.getdoc(cls) or ""
    assert "Example:" in doc and ">>>" in doc, f"{name} has no runnable Example:"
    assert "Reference:" in doc, f"{name} has no Reference:"


@pytest.mark.parametrize("module", MODULES, ids=[m.__name__ for m in MODULES])
def test_docstring_examples_run(module):
    globs = {"np": np, "keras": keras, "keras_flow": keras_flow}
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(module, module.__name__, globs=globs):
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0, f"{results.failed} of {results.attempted} examples failed"

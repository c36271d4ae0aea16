"""Runs the notebooks top to bottom in their quick setting (KERAS_FLOW_QUICK=1)."""

import json
import math
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
CELL_TIMEOUT = 300

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]


def execute(name, workdir, monkeypatch):
    """Executes notebooks/`name` in a python3 kernel started in `workdir`; raises on errors."""
    monkeypatch.setenv("KERAS_FLOW_QUICK", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT, kernel_name="python3",
                                     resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return notebook


def test_notebooks_are_committed_without_outputs():
    for name in ("permutations.ipynb", "explore.ipynb", "likelihood.ipynb"):
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert not cell.outputs and cell.execution_count is None, (
                    f"{name} has outputs: run `python notebooks/build_notebooks.py`.")


def test_permutations_notebook_summarises_six_variants(tmp_path, monkeypatch):
    summary_path = tmp_path / "summary.json"
    monkeypatch.setenv("KERAS_FLOW_SUMMARY_JSON", str(summary_path))
    execute("permutations.ipynb", tmp_path, monkeypatch)
    summary = json.loads(summary_path.read_text())
    rows = summary["rows"]
    assert summary["quick"] is True
    assert len(rows) == 6
    assert {row["variant"] for row in rows} == {
        f"{p} / {c}" for p in ("reverse", "shuffle", "conv1x1") for c in ("additive", "affine")}
    for row in rows:
        assert math.isfinite(row["final_test_bpd"]) and math.isfinite(row["final_train_bpd"])
        assert row["reconstruction_error"] < 1e-3
    assert summary["table"].count("\n") == 7  # header, rule, six rows


def test_explore_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("KERAS_FLOW_SUMMARY_JSON", raising=False)
    notebook = execute("explore.ipynb", tmp_path, monkeypatch)
    text = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs)
    assert "max |decode(encode(x)) - x|" in text


def test_likelihood_notebook_runs_the_typicality_test_at_three_batch_sizes(tmp_path, monkeypatch):
    summary_path = tmp_path / "summary.json"
    monkeypatch.setenv("KERAS_FLOW_SUMMARY_JSON", str(summary_path))
    notebook = execute("likelihood.ipynb", tmp_path, monkeypatch)
    summary = json.loads(summary_path.read_text())
    assert summary["quick"] is True and summary["dataset"] == "digits"
    (rows,) = [found["rows"] for found in summary["ood"].values()]
    assert [row["batch_size"] for row in rows] == [1, 10, 100]
    for row in rows:
        assert 0 <= row["true_positive_rate"] <= 1 and 0 <= row["false_positive_rate"] <= 1
    text = "".join(output.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                   for output in cell.outputs)
    assert "strength 0 gives back the images" in text

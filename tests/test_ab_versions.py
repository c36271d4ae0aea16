"""benchmarks/ab_versions.py: the revision's package exported beside the working tree's. A
maintainer tool: off the default run (`python3 -m pytest -q -m maintainer`)."""

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from keras import ops

import keras_flow
from tests.scripts import load_script

pytestmark = pytest.mark.maintainer


def has_history(root):
    return shutil.which("git") is not None and subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--verify", "HEAD"],
        capture_output=True).returncode == 0


def tree_is_head(root):
    """Whether the working tree's keras_flow is HEAD's (no uncommitted change to it)."""
    return subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--",
                           "keras_flow"]).returncode == 0


@pytest.fixture()
def ab_with_git():
    module = load_script("benchmarks/ab_versions.py")
    if not has_history(module.ROOT):
        pytest.skip("needs git and this repository's history (a clone, not an export)")
    return module


def test_the_exported_revision_is_a_separate_package_computing_the_same(ab_with_git, tmp_path):
    ab = ab_with_git
    package = ab.export_base("HEAD", tmp_path)
    sources = [path.read_text() for path in package.rglob("*.py")]
    assert sources and not any(re.search(r"\bkeras_flow\b", text) for text in sources)
    sys.path.insert(0, str(tmp_path))
    try:
        import keras_flow_base

        assert keras_flow_base.Glow is not keras_flow.Glow
        args = ab.throughput.parse_args(
            ["--image-size", "8", "--channels", "1", "--levels", "2", "--depth", "1",
             "--hidden-width", "8", "--batch-size", "4", "--batch-shards", "1"])
        x = ab.throughput.workload_batch(args)
        base, tree = (ab.throughput.initialized_glow(args, x, package)
                      for package in (keras_flow_base, keras_flow))
        initial = ops.convert_to_numpy(tree.bits_per_dim(x))
        assert ab.move_weights([base, tree])
        bits = [ops.convert_to_numpy(model.bits_per_dim(x)) for model in (base, tree)]
        assert np.max(np.abs(bits[1] - initial)) > 1e-3  # the weights did move
        if tree_is_head(ab.ROOT):  # else the uncommitted change may change the values
            np.testing.assert_array_equal(bits[0], bits[1])
        other = keras_flow.Glow(levels=2, depth=1, hidden_width=4, image_shape=(8, 8, 1))
        other.initialize(x)
        assert not ab.move_weights([tree, other])  # different variables: no comparison
    finally:
        sys.path.remove(str(tmp_path))
        for name in [name for name in sys.modules if name.startswith("keras_flow_base")]:
            del sys.modules[name]


def test_an_unknown_revision_is_a_clear_error(ab_with_git, tmp_path):
    with pytest.raises(ValueError, match="revision 'no-such-revision'.*commit, branch or tag"):
        ab_with_git.export_base("no-such-revision", tmp_path)


def test_speedup_is_the_geometric_mean_of_the_processes_medians():
    ab = load_script("benchmarks/ab_versions.py")

    def line(order, median):
        return {"measure": "encode", "order": order, "base_ms": 10.0, "tree_ms": 9.0,
                "ratio": {"median": median, "quartiles": [median - 0.1, median + 0.1]},
                "max_abs_bpd_diff": 0.0}

    [record] = ab.combine("HEAD~1", "W1", "float32",
                          [line("base-first", 1.21), line("tree-first", 1.0)])
    assert record["speedup"] == pytest.approx(1.1)
    assert [p["order"] for p in record["processes"]] == ["base-first", "tree-first"]

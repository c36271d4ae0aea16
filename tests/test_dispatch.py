"""benchmarks/dispatch.py: its alternating comparison of two compiled functions."""

import time

import numpy as np
import pytest

from tests.scripts import load_script


def test_compare_times_both_functions_and_their_ratio():
    dispatch = load_script("benchmarks/dispatch.py")
    calls = {"slow": 0, "fast": 0}

    def slow(x):
        calls["slow"] += 1
        time.sleep(0.004)
        return x

    def fast(x):
        calls["fast"] += 1
        return x

    (slow_ms, fast_ms), ratio = dispatch.compare([slow, fast], np.zeros(2), rounds=4, calls=2)
    assert calls == {"slow": 2 + 4 * 2, "fast": 2 + 4 * 2}  # two warm-up calls each
    assert slow_ms >= 4.0 > fast_ms and ratio > 1.0


def test_sizes_must_be_positive(capsys):
    dispatch = load_script("benchmarks/dispatch.py")
    with pytest.raises(SystemExit):
        dispatch.parse_args(["--sizes", "0"])
    assert "must be >= 1" in capsys.readouterr().err

"""benchmarks/maintainer/quick_start.py: the per-step time it reports. A maintainer tool:
off the default run (`python3 -m pytest -q -m maintainer`)."""

import pytest

from tests.scripts import load_script

pytestmark = pytest.mark.maintainer


def test_median_step_ms_uses_calls_of_one_epoch_after_the_first():
    quick_start = load_script("benchmarks/maintainer/quick_start.py")
    calls = [(None, None, 0.0),                          # fit starts
             (0, 0, 9.0), (0, 1, 9.5),                   # epoch 0: tracing, left out
             (1, 0, 10.0), (1, 1, 10.02), (1, 3, 10.08),  # 20 ms, then 2 steps in 60 ms
             (2, 0, 11.0), (2, 1, 11.05)]                # 50 ms; 10.08 -> 11.0 spans epochs
    assert quick_start.median_step_ms(calls) == 30.0


def test_median_step_ms_is_none_for_one_epoch():
    quick_start = load_script("benchmarks/maintainer/quick_start.py")
    assert quick_start.median_step_ms([(None, None, 0.0), (0, 0, 9.0), (0, 1, 9.5)]) is None

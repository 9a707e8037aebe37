"""The erasure targets and the binomial intervals the report puts on every rate."""

import dataclasses

import pytest

from cdc.config import ReportParams
from cdc.targets import clear_misses, interval, misses

BASE = {"retain_neighbors": 0.8, "retain_all": 1.0}
# The targets these tests' rates sit on (params.yaml's report section at the time of writing).
TARGETS = ReportParams(in_set_max=0.05, out_of_set_max=0.15, neighbors_min=0.9, retain_all_min=0.95, confidence=0.95)


def test_interval_holds_the_rate_and_narrows_with_more_images():
    for rate, n in [(0.0, 10), (0.3, 10), (1.0, 10), (0.5, 1)]:
        lo, hi = interval(rate, n)
        assert 0.0 <= lo <= rate <= hi <= 1.0
    assert interval(0.0, 10)[0] == 0.0 and interval(1.0, 10)[1] == pytest.approx(1.0)
    width = [hi - lo for lo, hi in (interval(0.3, n) for n in (10, 100, 1000))]
    assert width[0] > width[1] > width[2]
    assert interval(0.3, 100, 0.99)[0] < interval(0.3, 100, 0.8)[0]  # more confidence, wider
    with pytest.raises(ValueError, match="at least one"):
        interval(0.5, 0)
    with pytest.raises(ValueError, match="lies in"):
        interval(1.5, 10)


def test_misses_compare_utility_to_the_base_model():
    t = TARGETS
    ok = {"in_set": 0.05, "out_of_set": 0.15, "retain_neighbors": 0.72, "retain_all": 0.95}  # exactly on every bound
    assert misses(ok, BASE, t) == []
    bad = {"in_set": 0.06, "out_of_set": 0.0, "retain_neighbors": 0.71, "retain_all": 1.0}
    assert misses(bad, BASE, t) == ["in_set", "retain_neighbors"]
    assert misses(bad, BASE, t, rates=["out_of_set", "retain_all"]) == []
    assert misses(bad, {"retain_neighbors": 0.5, "retain_all": 1.0}, t) == ["in_set"]


def test_clear_misses_use_the_interval_end_nearest_the_target():
    t = TARGETS
    row = {"in_set": 0.1, "in_set_lo": 0.04, "in_set_hi": 0.2, "out_of_set": 0.3, "out_of_set_lo": 0.2,
           "out_of_set_hi": 0.4, "retain_neighbors": 0.6, "retain_neighbors_lo": 0.5, "retain_neighbors_hi": 0.75,
           "retain_all": 0.5, "retain_all_lo": 0.4, "retain_all_hi": 0.6}
    assert misses(row, BASE, t) == ["in_set", "out_of_set", "retain_neighbors", "retain_all"]
    assert clear_misses(row, BASE, t) == ["out_of_set", "retain_all"]


def test_report_params_reject_impossible_targets():
    with pytest.raises(ValueError, match="in_set_max"):
        dataclasses.replace(TARGETS, in_set_max=1.5)
    with pytest.raises(ValueError, match="confidence"):
        dataclasses.replace(TARGETS, confidence=1.0)

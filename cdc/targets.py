"""What counts as a successful erasure, and binomial intervals on the rates it is judged by."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from scipy.stats import binomtest

from cdc.config import ReportParams

RATES = ("in_set", "out_of_set", "retain_neighbors", "retain_all")  # each judged on a count of images
_EPS = 1e-9  # 0.9 x 1.0 and 36 / 40 must compare equal


def interval(rate: float, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a rate measured on n judged images (each image a Bernoulli trial)."""
    if n < 1:
        raise ValueError(f"a rate needs at least one judged image, got n={n}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"a rate lies in [0, 1], got {rate}")
    ci = binomtest(round(rate * n), n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def thresholds(base: Mapping[str, float], targets: ReportParams) -> dict[str, tuple[str, float]]:
    """Per rate: ("max", t) where the rate must be <= t, or ("min", t) where it must be >= t (base-relative)."""
    return {"in_set": ("max", targets.in_set_max), "out_of_set": ("max", targets.out_of_set_max),
            "retain_neighbors": ("min", targets.neighbors_min * base["retain_neighbors"]),
            "retain_all": ("min", targets.retain_all_min * base["retain_all"])}


def _ok(value: float, kind: str, bound: float) -> bool:
    return value <= bound + _EPS if kind == "max" else value >= bound - _EPS


def misses(row: Mapping[str, float], base: Mapping[str, float], targets: ReportParams,
           rates: Sequence[str] = RATES) -> list[str]:
    """The rates in which an erased row misses its target (empty: it meets them all)."""
    bounds = thresholds(base, targets)
    return [r for r in rates if not _ok(row[r], *bounds[r])]


def clear_misses(row: Mapping[str, float], base: Mapping[str, float], targets: ReportParams,
                 rates: Sequence[str] = RATES) -> list[str]:
    """Misses that sampling noise does not explain: even the rate's best interval end (`<rate>_lo` for an
    upper target, `<rate>_hi` for a lower one) is on the wrong side. The base rate is taken as exact."""
    bounds = thresholds(base, targets)
    return [r for r in rates
            if not _ok(row[f"{r}_lo"] if bounds[r][0] == "max" else row[f"{r}_hi"], *bounds[r])]


def returned_at(rows: Sequence[Mapping], rate: float) -> int | None:
    """The first checkpoint step (rows in step order) at which the in-set rate is at least `rate`, or None."""
    return next((int(r["step"]) for r in rows if r["in_set"] >= rate), None)

"""Drift metrics: a production window's column against its reference profile.

- `normalized_wasserstein` (numeric; drift above 0.1): the default above 1,000 rows,
  an effect size in reference standard deviations, calm on large samples;
- `jensen_shannon` (categorical, or numeric on the reference's ten bins; above 0.1):
  the default for categories, bounded (0 to 0.83), calm on large samples;
- `psi` (both; above 0.2): the score risk teams already read (0.1 watch, 0.2 act);
- `l_infinity` (categorical; largest share difference above 0.1): many categories,
  where a few that move matter;
- `ks` (numeric) and `chi_squared` (categorical): tests, drifting when p < 0.05 over
  the number of features; for small windows (under 1,000 rows), where a test is needed.

The tests (`ks`, `chi_squared`) are Bonferroni-corrected over the features the signal
watches; on large windows they flag shifts too small to matter (a 0.05 std shift has a
KS p-value of 6e-6 at 10,000 rows), which is why distances are the defaults.

The reference is the profile's sketch, never the training rows: Wasserstein compares the
1,001 reference quantiles with the window's; KS takes its statistic from the sketch's
CDF and its p-value from scipy's Kolmogorov distribution for the two real sizes.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from mlinfra.monitoring.profile import CATEGORICAL, NUMERIC, OTHER, QUANTILES

# metric -> (the column types it is defined for, default threshold, True: a p-value)
METRICS: dict[str, tuple[tuple[str, ...], float, bool]] = {
    "normalized_wasserstein": ((NUMERIC,), 0.1, False),
    "jensen_shannon": ((NUMERIC, CATEGORICAL), 0.1, False),
    "psi": ((NUMERIC, CATEGORICAL), 0.2, False),
    "l_infinity": ((CATEGORICAL,), 0.1, False),
    "ks": ((NUMERIC,), 0.05, True),
    "chi_squared": ((CATEGORICAL,), 0.05, True),
}
DEFAULT = {NUMERIC: "normalized_wasserstein", CATEGORICAL: "jensen_shannon"}
_EPS = 1e-4


class Counts(NamedTuple):
    """A categorical window column, counted: each value's rows, and the nulls."""

    kinds: list[str]
    counts: np.ndarray
    nulls: int

    @classmethod
    def of(cls, values: np.ndarray) -> Counts:
        """From text with None for nulls."""
        present = values[values != None]  # noqa: E711 (elementwise)
        kinds, counts = np.unique(present.astype(str), return_counts=True)
        return cls([str(k) for k in kinds], counts, len(values) - len(present))

    @property
    def rows(self) -> int:
        return int(self.counts.sum()) + self.nulls


Current = np.ndarray | Counts


class Measure(NamedTuple):
    """One metric's value on one column. `drifted` is decided against `threshold`
    (already Bonferroni-corrected for tests)."""

    metric: str
    value: float
    threshold: float
    drifted: bool


def _shares(reference: dict[str, Any], current: Current) -> tuple[np.ndarray, np.ndarray,
                                                                   np.ndarray]:
    """(reference shares, current shares, current counts) over the same buckets: the
    reference's bins for a numeric column, its categories (and one for the rest) for
    a categorical one."""
    if not isinstance(current, Counts):
        edges = np.asarray(reference["edges"])
        counts = np.bincount(np.searchsorted(edges, current, side="right"),
                             minlength=len(edges) + 1).astype(np.float64)
        ref = np.asarray(reference["shares"], dtype=np.float64)
    else:
        freqs = reference["frequencies"]
        names = [k for k in freqs if k != OTHER]
        seen = dict(zip(current.kinds, current.counts.tolist(), strict=True))
        counts = np.array([seen.pop(k, 0) for k in names] + [sum(seen.values())],
                          dtype=np.float64)
        ref = np.array([freqs[k] for k in names] + [freqs.get(OTHER, 0.0)])
    total = counts.sum()
    return ref, counts / total if total else counts, counts


def wasserstein(quantiles: np.ndarray, values: np.ndarray) -> float:
    """The 1-Wasserstein distance between the distribution a quantile sketch describes
    and a sample, the integral of |F_ref - F_cur|, without sorting the sample: inside the
    sketch's range on its points (the trapezoid rule; the sample's CDF at each point
    exactly, `at_or_below`; tied points, a discrete column's, are steps), beyond it from
    the sample's tails exactly."""
    if not len(values):
        return float("nan")
    grid = np.asarray(quantiles, dtype=np.float64)
    n, last = len(values), len(grid) - 1
    cur = at_or_below(grid, values) / n
    ref = (np.searchsorted(grid, grid, side="right") - 1) / last  # F_ref, ties at their top
    gaps = np.abs(ref - cur)
    inside = float(np.sum(np.diff(grid) * (gaps[:-1] + gaps[1:]) / 2))
    low, high = values[values <= grid[0]], values[values > grid[-1]]  # at or past the ends
    tails = (float(np.sum(grid[0] - low)) + float(np.sum(high - grid[-1]))) / n
    return inside + tails


_BUCKETS = 1 << 16


def at_or_below(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """How many of `values` are <= each point of the sorted `grid`, exactly.

    NOTE: by even buckets over the grid's range instead of a binary search per value
    (np.searchsorted of a million values on 1,001 points takes 60 ms, four times this),
    the gap behind "mlinfra monitor run" at 1M rows in benchmarks/monitoring.py. The
    bucket of x, floor((x - lo) * scale), never decreases as x grows (IEEE subtraction
    and multiplication by a positive number are monotone), so a value in a lower bucket
    than a point is below it and one in a higher bucket above it: only the values that
    share a bucket with some point are compared with the points, after a sort of those
    few. tests/test_monitoring.py checks it against np.searchsorted on continuous,
    tied and discrete columns."""
    lo, hi = float(grid[0]), float(grid[-1])
    span = hi - lo
    if not (span > 0 and np.isfinite(span)) or len(values) < 4 * len(grid):
        return np.searchsorted(np.sort(values), grid, side="right")
    scale = _BUCKETS / span

    def bucket(x: np.ndarray) -> np.ndarray:
        b = (x - lo) * scale
        np.clip(b, -1.0, float(_BUCKETS), out=b)
        return (b + 1.0).astype(np.intp)  # 0 below the range, _BUCKETS + 1 above it

    points = bucket(grid)
    slots = bucket(values)
    shared = np.zeros(_BUCKETS + 2, dtype=bool)
    shared[points] = True
    near = shared[slots]
    counts = np.bincount(slots[~near], minlength=_BUCKETS + 2)
    before = np.concatenate([[0], np.cumsum(counts)])  # far values in lower buckets
    close = np.sort(values[near])
    return np.asarray(before[points] + np.searchsorted(close, grid, side="right"))


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """The Jensen-Shannon distance (natural log) of two distributions over the same
    buckets, as scipy.spatial.distance.jensenshannon gives it."""
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.where(p > 0, p * np.log(p / m), 0.0)
        right = np.where(q > 0, q * np.log(q / m), 0.0)
    return float(np.sqrt(max(0.0, (left.sum() + right.sum()) / 2)))


def _finite(values: np.ndarray) -> np.ndarray:
    return np.asarray(values[~np.isnan(values)])


def measure(metric: str, reference: dict[str, Any], current: Current,
            threshold: float, tests: int = 1) -> Measure:
    """`metric` of `current` (float64 with NaN for numeric columns; for categorical
    ones `Counts`, or text with None) against `reference`; nulls are left out.

    NOTE: the two distances are computed here in NumPy (the tests check them against
    scipy's `stats.wasserstein_distance` and `spatial.distance.jensenshannon`):
    importing scipy.stats takes longer than judging a million-row window, and the
    Wasserstein distance to a sketch needs no sort of the window. The tests' p-values
    come from scipy itself."""
    values: Current
    if reference["type"] == NUMERIC:
        assert not isinstance(current, Counts)
        values = _finite(current)
    else:
        values = current if isinstance(current, Counts) else Counts.of(current)
    if metric == "normalized_wasserstein":
        assert not isinstance(values, Counts)
        scale = reference["std"] or max(abs(reference["max"]), abs(reference["min"]), 1.0)
        value = wasserstein(np.asarray(reference["quantiles"]), values) / scale
        return Measure(metric, value, threshold, value > threshold)
    if metric == "ks":
        from scipy import stats

        assert not isinstance(values, Counts)
        ref_q = np.asarray(reference["quantiles"])
        ordered = np.sort(values)
        points = np.concatenate([ref_q, ordered[np.linspace(0, len(ordered) - 1,
                                                            QUANTILES).astype(int)]])
        ref_cdf = np.interp(points, ref_q, np.linspace(0, 1, QUANTILES), left=0.0, right=1.0)
        cur_cdf = np.searchsorted(ordered, points, side="right") / len(ordered)
        statistic = float(np.max(np.abs(ref_cdf - cur_cdf)))
        n, m = reference["rows"] * (1 - reference["null_rate"]), len(ordered)
        size = max(1, round(n * m / (n + m)))
        p = float(stats.kstwo.sf(statistic, size))
        limit = threshold / max(1, tests)
        return Measure(metric, p, limit, p < limit)
    ref, cur, counts = _shares(reference, values)
    if metric == "jensen_shannon":
        value = jensen_shannon(ref, cur)
        return Measure(metric, value, threshold, value > threshold)
    if metric == "psi":
        r, c = np.clip(ref, _EPS, None), np.clip(cur, _EPS, None)
        value = float(np.sum((c - r) * np.log(c / r)))
        return Measure(metric, value, threshold, value > threshold)
    if metric == "l_infinity":
        value = float(np.max(np.abs(ref - cur)))
        return Measure(metric, value, threshold, value > threshold)
    if metric == "chi_squared":
        from scipy import stats

        expected = np.clip(ref, _EPS, None)
        expected = expected / expected.sum() * counts.sum()
        p = float(stats.chisquare(counts, expected).pvalue)
        limit = threshold / max(1, tests)
        return Measure(metric, p, limit, p < limit)
    raise ValueError(f"unknown metric {metric}")


def quality(reference: dict[str, Any], current: Current) -> tuple[float, float]:
    """(null rate, out-of-range rate) of a window's column: nulls among its rows; values
    outside the reference's [min, max], or categories it never saw, among the others."""
    if reference["type"] == NUMERIC:
        assert not isinstance(current, Counts)
        missing = np.isnan(current)
        values = current[~missing]
        outside = (int(np.count_nonzero((values < reference["min"])
                                        | (values > reference["max"])))
                   if "min" in reference else 0)
        rows, nulls, present = len(current), int(np.count_nonzero(missing)), len(values)
    else:
        counted = current if isinstance(current, Counts) else Counts.of(current)
        known = set(reference["frequencies"]) - {OTHER}
        outside = (0 if OTHER in reference["frequencies"] else
                   int(sum(c for k, c in zip(counted.kinds, counted.counts.tolist(),
                                             strict=True) if k not in known)))
        rows, nulls, present = counted.rows, counted.nulls, counted.rows - counted.nulls
    return (nulls / rows if rows else 0.0, outside / present if present else 0.0)

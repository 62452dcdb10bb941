"""A reference profile: what a column looked like in the data a model version was
trained on, kept small enough to store with the version and compared with production
windows without reading the training data again.

Numeric column: `QUANTILES` evenly spaced quantiles (a fixed-size sketch of its
distribution: 0%, 0.1%, ..., 100%), the edges of ten equal-frequency bins with each
bin's share (for PSI and chi-squared), mean, std, min, max, null rate and row count.
Categorical column (text, or booleans): the share of each of its `MAX_CATEGORIES` most
frequent values (the rest pooled as `OTHER`), null rate and row count.
"""

from __future__ import annotations

from typing import Any

import numpy as np

QUANTILES = 1001
BINS = 10
MAX_CATEGORIES = 200
OTHER = "(other)"
NUMERIC, CATEGORICAL = "numeric", "categorical"


def as_numbers(values: Any) -> np.ndarray | None:
    """A column as float64 (nulls as NaN), or None when it is not numeric. Text that
    is all numbers (CSV) is numeric."""
    array = np.asarray(values)
    if array.dtype.kind in "iuf":
        return array.astype(np.float64, copy=False)
    if array.dtype.kind == "b":
        return None
    try:
        converted = np.array([np.nan if v is None or v == "" else v for v in array.tolist()],
                             dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return converted


def as_text(values: Any) -> np.ndarray:
    """A column as text; nulls (None, NaN, "") as None."""
    out = np.asarray(values, dtype=object)
    nulls = np.array([v is None or v == "" or (isinstance(v, float) and v != v)
                      for v in out.tolist()], dtype=bool)
    text = out.astype(str).astype(object)
    text[nulls] = None
    return text


def numeric(values: np.ndarray) -> dict[str, Any]:
    """The profile of a float64 column (NaN = null)."""
    count = len(values)
    finite = values[~np.isnan(values)]
    profile: dict[str, Any] = {"type": NUMERIC, "rows": count,
                               "null_rate": (count - len(finite)) / count if count else 0.0}
    if not len(finite):
        return {**profile, "quantiles": [], "edges": [], "shares": []}
    # NOTE: values of the column itself (inverted CDF), not interpolations between
    # them: the sketch is then an even sample of the column, exact for discrete ones.
    quantiles = np.quantile(finite, np.linspace(0, 1, QUANTILES), method="inverted_cdf")
    edges = np.unique(quantiles[np.linspace(0, QUANTILES - 1, BINS + 1).astype(int)][1:-1])
    counts = np.bincount(np.searchsorted(edges, finite, side="right"),
                         minlength=len(edges) + 1)
    return {**profile, "mean": float(finite.mean()), "std": float(finite.std()),
            "min": float(finite.min()), "max": float(finite.max()),
            "quantiles": [float(q) for q in quantiles], "edges": [float(e) for e in edges],
            "shares": [float(c) / len(finite) for c in counts]}


def categorical(values: np.ndarray) -> dict[str, Any]:
    """The profile of a text column (None = null)."""
    count = len(values)
    present = values[values != None]  # noqa: E711 (elementwise)
    kinds, counts = np.unique(present.astype(str), return_counts=True)
    order = np.argsort(-counts, kind="stable")
    shares = {str(kinds[i]): float(counts[i]) / len(present) for i in order[:MAX_CATEGORIES]}
    rest = 1.0 - sum(shares.values())
    if len(order) > MAX_CATEGORIES and rest > 0:
        shares[OTHER] = rest
    return {"type": CATEGORICAL, "rows": count,
            "null_rate": (count - len(present)) / count if count else 0.0,
            "frequencies": shares}


def column(values: Any, kind: str | None = None) -> dict[str, Any]:
    """The profile of one column; `kind` forces numeric or categorical."""
    if kind != CATEGORICAL:
        numbers = as_numbers(values)
        if numbers is not None:
            return numeric(numbers)
    return categorical(as_text(values))


def table(columns: dict[str, Any], source: str) -> dict[str, Any]:
    """A reference profile: each column's, and where the data came from."""
    rows = max((len(v) for v in columns.values()), default=0)
    return {"source": source, "rows": rows,
            "columns": {name: column(values) for name, values in columns.items()}}


def summary(profile: dict[str, Any]) -> list[tuple[str, str]]:
    """(column, one line) for `models show`."""
    lines = []
    for name, col in profile.get("columns", {}).items():
        if col["type"] == NUMERIC and col.get("quantiles"):
            q = col["quantiles"]
            median = q[len(q) // 2]
            lines.append((name, f"numeric  mean {col['mean']:.4g}  std {col['std']:.4g}  "
                                f"min {col['min']:.4g}  median {median:.4g}  "
                                f"max {col['max']:.4g}  nulls {col['null_rate']:.2%}"))
        elif col["type"] == NUMERIC:
            lines.append((name, "numeric  (all null)"))
        else:
            top = sorted(col["frequencies"].items(), key=lambda kv: -kv[1])[:3]
            shown = ", ".join(f"{k} {v:.1%}" for k, v in top)
            lines.append((name, f"categorical  {len(col['frequencies'])} values  "
                                f"(top: {shown})  nulls {col['null_rate']:.2%}"))
    return lines

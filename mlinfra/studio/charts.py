"""A run's metric curves, downsampled on the server to the points a chart draws.

A curve of a million steps is cut to `points` by Largest-Triangle-Three-Buckets
(`tsdownsample`'s, in Rust), which keeps the peaks and dips a plain stride would drop; the browser
receives a few kilobytes, whatever the run logged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tsdownsample import LTTBDownsampler

from mlinfra.state.store import StateStore

# What a chart is drawn with by default: about one point per pixel of its width.
DEFAULT_POINTS = 800
MAX_POINTS = 5000


def metric_keys(store: StateStore, run_id: str) -> list[str]:
    return [str(k) for (k,) in store.query(
        "SELECT DISTINCT key FROM metrics WHERE run_id=? ORDER BY key", (run_id,))]


def series(store: StateStore, run_id: str, key: str, points: int = DEFAULT_POINTS
           ) -> dict[str, Any]:
    """One metric of one run as {"x": [...], "y": [...], "total": N, "x_label": ...}:
    x is the step (or the point's order when the run logged no steps), at most
    `points` of them."""
    rows = store.query("SELECT step, value FROM metrics WHERE run_id=? AND key=? ORDER BY id",
                       (run_id, key))
    return downsample(rows, points)


def downsample(rows: list[tuple[Any, ...]], points: int = DEFAULT_POINTS) -> dict[str, Any]:
    """(step, value) pairs in the order logged -> the chart's arrays. A step logged
    twice keeps its last value; points without a step are numbered in order."""
    points = max(3, min(points, MAX_POINTS))
    total = len(rows)
    if total == 0:
        return {"x": [], "y": [], "total": 0, "x_label": "step"}
    stepped = all(step is not None for step, _ in rows)
    if stepped:
        last: dict[float, float] = {}
        for step, value in rows:
            last[float(step)] = float(value)
        data = np.array(sorted(last.items()), dtype=float)
        label = "step"
    else:
        data = np.column_stack((np.arange(total, dtype=float),
                                np.array([v for _, v in rows], dtype=float)))
        label = "point"
    finite = np.isfinite(data[:, 1])
    data = data[finite]
    if len(data) > points:
        lttb = LTTBDownsampler()  # type: ignore[no-untyped-call]
        kept = lttb.downsample(np.ascontiguousarray(data[:, 0]),
                               np.ascontiguousarray(data[:, 1]), n_out=points)
        data = data[kept]
    return {"x": data[:, 0].tolist(), "y": data[:, 1].tolist(), "total": total,
            "x_label": label}

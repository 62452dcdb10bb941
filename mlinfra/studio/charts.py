"""A run's metric curves, downsampled on the server to the points a chart draws.

A curve of a million steps is cut to `points` by Largest-Triangle-Three-Buckets
(`tsdownsample`'s, in Rust), which keeps the peaks and dips a plain stride would drop; the browser
receives a few kilobytes, whatever the run logged.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
from tsdownsample import LTTBDownsampler

from mlinfra.state.store import StateStore

# What a chart is drawn with by default: about one point per pixel of its width.
DEFAULT_POINTS = 800
MAX_POINTS = 5000


class Curves:
    """The downsampled curves of ended runs, kept (an ended run's points never change);
    a run still going is read again each time. Thread-safe."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._lock = threading.Lock()
        self._kept: OrderedDict[tuple[str, str, int], dict[str, Any]] = OrderedDict()

    def get(self, store: StateStore, run_id: str, key: str, points: int, ended: bool
            ) -> dict[str, Any]:
        name = (run_id, key, points)
        with self._lock:
            if name in self._kept:
                self._kept.move_to_end(name)
                return self._kept[name]
        found = series(store, run_id, key, points)
        if ended:
            with self._lock:
                self._kept[name] = found
                while len(self._kept) > self.size:
                    self._kept.popitem(last=False)
        return found


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
    data = np.array(rows, dtype=float)  # a missing step is NaN
    stepped = not np.isnan(data[:, 0]).any()
    if stepped:
        label = "step"
        if not (np.diff(data[:, 0]) > 0).all():
            # Steps out of order or logged twice: by step, the last value logged wins.
            order = np.argsort(data[:, 0], kind="stable")
            data = data[order]
            last = np.append(data[1:, 0] != data[:-1, 0], True)
            data = data[last]
    else:
        data[:, 0] = np.arange(total, dtype=float)
        label = "point"
    data = data[np.isfinite(data[:, 1])]
    if len(data) > points:
        lttb = LTTBDownsampler()  # type: ignore[no-untyped-call]
        kept = lttb.downsample(np.ascontiguousarray(data[:, 0]),
                               np.ascontiguousarray(data[:, 1]), n_out=points)
        data = data[kept]
    return {"x": data[:, 0].tolist(), "y": data[:, 1].tolist(), "total": total,
            "x_label": label}

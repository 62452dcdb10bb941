"""What monitoring keeps in the state, in three plain tables (read by `monitors show`,
`plan` and the studio):

- `model_profiles(name, version, source, profile, created_at)`: a model version's
  reference profile (JSON, `monitoring.profile`) and the data it was computed from;
- `monitor_windows(monitor, window_start, window_end, rows, status, model, reason,
  cursor, computed_at)`: one row per computed window; `status` is `ok`, `drift`,
  `insufficient` (fewer rows than min_rows: never an alert) or `skipped` (captures
  that could not be read; `reason` says why); `model` the version it was judged
  against (`fraud:3`); times are seconds since the epoch (UTC);
- `monitor_signals(monitor, window_start, signal, feature, metric, value, threshold,
  verdict, rows)`: per window, each signal's value on each feature (`verdict` `ok`
  or `drift`; `feature` is `*` for a signal on the whole window, e.g. performance).

These are observations, not changes of the stack: writing them moves no serial, so a
saved plan stays fresh while monitors run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlinfra.state.store import Cursor, StateStore, row_json, upsert
from mlinfra.state.work import Event, Writer

OK, DRIFT, INSUFFICIENT, SKIPPED = "ok", "drift", "insufficient", "skipped"


@dataclass
class Signal:
    """`value` is NaN when it could not be computed (no row with a value, an auc of
    labels of one class); the table keeps NULL then."""

    signal: str  # data_drift, prediction_drift, data_quality, performance
    feature: str
    metric: str
    value: float
    threshold: float
    verdict: str  # ok | drift
    rows: int

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "value": _number(self.value),
                "threshold": _number(self.threshold)}


def _number(value: float | None) -> float | None:
    """NaN and infinities as null, for JSON and the state."""
    return None if value is None or value != value or value in (float("inf"),
                                                                float("-inf")) else value


@dataclass
class Window:
    """A computed window. Invariant: `status` is DRIFT exactly when a signal drifted."""

    monitor: str
    start: float
    end: float
    rows: int
    status: str
    model: str = ""
    reason: str = ""
    cursor: str = ""
    computed_at: float = 0.0
    signals: list[Signal] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "rows": self.rows,
                "status": self.status, "model": self.model, "reason": self.reason,
                "computed_at": self.computed_at,
                "signals": [s.to_json() for s in self.signals]}


def save_profile(writer: Writer, name: str, version: int, source: str,
                 profile: dict[str, Any]) -> None:
    """Kept with the version: staged with its registration during apply."""
    text, now = json.dumps(profile), time.time()
    writer.write(lambda cur: cur.execute(
        upsert("model_profiles", ("name", "version", "source", "profile", "created_at"),
               ("name", "version")), (name, version, source, text, now)))


def profile_of(store: StateStore, name: str, version: int) -> dict[str, Any] | None:
    rows = store.query("SELECT profile FROM model_profiles WHERE name=? AND version=?",
                       (name, version))
    return dict(row_json(rows[0][0], f"profile of {name}:{version}")) if rows else None


def save_windows(writer: Writer, windows: list[Window], events: Sequence[Event] = ()
                 ) -> None:
    """Each window with its signals, in one transaction (a window computed again
    replaces what was kept of it), with the events they cause (a breach)."""
    if not windows:
        return

    def insert(cur: Cursor) -> None:
        for w in windows:
            cur.execute("DELETE FROM monitor_signals WHERE monitor=? AND window_start=?",
                        (w.monitor, w.start))
            cur.execute(upsert("monitor_windows", (
                "monitor", "window_start", "window_end", "rows", "status", "model", "reason",
                "cursor", "computed_at"), ("monitor", "window_start")),
                (w.monitor, w.start, w.end, w.rows, w.status, w.model, w.reason[:2000],
                 w.cursor, w.computed_at or time.time()))
            cur.executemany(
                "INSERT INTO monitor_signals (monitor, window_start, signal, feature, metric, "
                "value, threshold, verdict, rows) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(w.monitor, w.start, s.signal, s.feature, s.metric, _number(s.value),
                  s.threshold, s.verdict, s.rows) for s in w.signals])
        if events:
            writer.store.record_events(cur, events)

    writer.write(insert)


def windows(store: StateStore, monitor: str, limit: int | None = None) -> list[Window]:
    """The monitor's windows, oldest first (with `limit`, the latest ones)."""
    sql = ("SELECT window_start, window_end, rows, status, model, reason, cursor, "
           "computed_at FROM monitor_windows WHERE monitor=? ORDER BY window_start DESC")
    args: tuple[Any, ...] = (monitor,)
    if limit is not None:
        sql += " LIMIT ?"
        args = (monitor, limit)
    found = [Window(monitor, *row) for row in reversed(store.query(sql, args))]
    if not found:
        return found
    by_start = {w.start: w for w in found}
    for row in store.query("SELECT window_start, signal, feature, metric, value, threshold, "
                           "verdict, rows FROM monitor_signals WHERE monitor=? AND "
                           "window_start >= ? ORDER BY signal, feature",
                           (monitor, found[0].start)):
        window = by_start.get(row[0])
        if window is not None:
            signal, feature, metric, value, threshold, verdict, rows = row[1:]
            window.signals.append(Signal(signal, feature, metric,
                                         float("nan") if value is None else float(value),
                                         float(threshold), verdict, int(rows)))
    return found


def forget(writer: Writer, monitor: str) -> None:
    """The monitor is destroyed: its windows go with it (staged with its deletion)."""
    def delete(cur: Cursor) -> None:
        cur.execute("DELETE FROM monitor_signals WHERE monitor=?", (monitor,))
        cur.execute("DELETE FROM monitor_windows WHERE monitor=?", (monitor,))

    writer.write(delete)

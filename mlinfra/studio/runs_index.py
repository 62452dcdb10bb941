"""The runs table, kept in memory and brought up to date from the state on each read.

The first read loads every run, its params (declared and logged) and each metric's
last value; later reads only fetch what moved since: metric points past the last id
seen, runs created since, and the runs that were still queued or running. Filtering,
sorting and paging 10,000 runs of 50 params is then a pass over a list, not a
per-run query, and a metric condition (`metrics.auc > 0.8`) never scans the points.
"""

from __future__ import annotations

import ast
import gc
import json
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from mlinfra.state.store import StateStore
from mlinfra.studio import filters

_RUN_COLUMNS = ("id", "job", "experiment", "pipeline", "step", "parent", "status",
                "created_at", "started_at", "ended_at", "params", "git", "error")
_UNFINISHED = ("queued", "running")
# Ids per IN (...) list: SQLite's limit on bound variables is 32766, PostgreSQL's 65535.
_CHUNK = 900


@dataclass
class RunRow:
    """One run as the table shows it: its columns, every param (the job's, and those
    the run logged over them) and each metric's last value."""

    id: str
    job: str
    experiment: str
    pipeline: str | None
    step: str | None
    parent: str | None
    status: str
    created_at: float
    started_at: float | None
    ended_at: float | None
    git: dict[str, Any]
    error: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.ended_at or time.time()) - self.started_at

    def value(self, name: str) -> Any:
        """A field by its filter name: `metrics.auc`, `params.C`, `status`..."""
        if name.startswith("metrics."):
            return self.metrics.get(name[8:])
        if name.startswith("params."):
            return self.params.get(name[7:])
        if name == "commit":
            return self.git.get("commit")
        if name == "branch":
            return self.git.get("branch")
        if name == "started":
            return self.started_at
        if name == "duration":
            return self.duration
        return getattr(self, name, None)


@dataclass(frozen=True)
class Page:
    """One page of the table: its rows, how many runs matched, the metric and param
    columns of those runs, and the query that made it."""

    rows: list[RunRow]
    total: int
    matched: int
    metric_keys: list[str]
    param_keys: list[str]
    offset: int
    limit: int


def _sort_key(value: Any) -> tuple[int, Any]:
    """Numbers before texts, and runs without the value last in either direction."""
    if value is None:
        return (2, 0)
    if isinstance(value, bool):
        return (1, str(value))
    if isinstance(value, int | float):
        return (0, float(value))
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


def sort_field(text: str) -> str:
    """The canonical name of a sort column (`metrics.auc`); FilterError if it is none."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError:
        raise filters.FilterError(f"sort: '{text}' is not a field such as metrics.auc "
                                  "or params.C") from None
    return filters.field_name(node, list(range(len(text))))


class RunIndex:
    """Every run of one state, refreshed incrementally. Thread-safe."""

    def __init__(self, store: StateStore) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._rows: dict[str, RunRow] = {}
        self._order: list[RunRow] = []  # newest first
        self._metric_id = 0
        self._newest = 0.0
        self._data_version: Any = None

    def _unchanged(self) -> bool:
        """On SQLite, whether no connection committed since the last refresh (its
        data_version moves with every commit of another connection); elsewhere False."""
        if self.store.dialect != "sqlite":
            return False
        version = self.store.query("PRAGMA data_version")[0][0]
        if version == self._data_version and self._rows:
            return True
        self._data_version = version
        return False

    def refresh(self) -> None:
        with self._lock:
            if self._unchanged():
                return
            count = int(self.store.query("SELECT COUNT(*) FROM runs")[0][0])
            top = self.store.query("SELECT MAX(id) FROM metrics")[0][0]
            if count < len(self._rows) or int(top or 0) < self._metric_id:
                self._rows, self._order, self._metric_id, self._newest = {}, [], 0, 0.0
            if not self._rows:
                self._load_all()
                return
            open_ids = [r.id for r in self._rows.values() if r.status in _UNFINISHED]
            changed = self._read_runs("created_at >= ?", (self._newest,))
            for chunk in _chunks(open_ids):
                changed += self._read_runs(f"id IN ({', '.join('?' * len(chunk))})",
                                           tuple(chunk))
            if changed or count != len(self._rows):
                self._merge(changed)
            self._read_metrics()

    def _load_all(self) -> None:
        rows = self._read_runs("1=1", ())
        self._merge(rows, everything=True)
        # Each metric's last value, found by the database (a million points are not
        # sent to Python); points logged meanwhile are read by the next refresh.
        top = int(self.store.query("SELECT MAX(id) FROM metrics")[0][0] or 0)
        for run_id, key, value in self.store.query(
                "SELECT m.run_id, m.key, m.value FROM metrics m JOIN (SELECT MAX(id) AS id "
                "FROM metrics WHERE id <= ? GROUP BY run_id, key) last ON m.id = last.id",
                (top,)):
            found = self._rows.get(run_id)
            if found is not None:
                found.metrics[key] = value
        self._metric_id = top
        # NOTE: the index is millions of long-lived objects; left to the cyclic
        # collector, each full pass over them would stall a page by a fraction of a
        # second. Frozen, they are skipped (and still freed when no longer used).
        gc.collect()
        gc.freeze()

    def _read_runs(self, where: str, args: tuple[Any, ...]) -> list[RunRow]:
        found = []
        for row in self.store.query(f"SELECT {', '.join(_RUN_COLUMNS)} FROM runs "
                                    f"WHERE {where}", args):
            values = dict(zip(_RUN_COLUMNS, row, strict=True))
            params = _json(values.pop("params"))
            git = _json(values.pop("git"))
            found.append(RunRow(**values, git=git, params=params))
        return found

    def _merge(self, rows: list[RunRow], everything: bool = False) -> None:
        for row in rows:
            old = self._rows.get(row.id)
            if old is not None:
                row.metrics = old.metrics
            self._rows[row.id] = row
            self._newest = max(self._newest, row.created_at)
        if everything:
            params = self.store.query("SELECT run_id, key, value FROM run_params")
        else:
            params = []
            for chunk in _chunks([r.id for r in rows]):
                params += self.store.query(
                    "SELECT run_id, key, value FROM run_params WHERE run_id IN "
                    f"({', '.join('?' * len(chunk))})", tuple(chunk))
        for run_id, key, value in params:
            found = self._rows.get(run_id)
            if found is not None:
                try:
                    found.params[key] = json.loads(value)
                except ValueError:
                    found.params[key] = value
        self._order = sorted(self._rows.values(), key=lambda r: r.created_at, reverse=True)

    def _read_metrics(self) -> None:
        for run_id, key, value, point in self.store.query(
                "SELECT run_id, key, value, id FROM metrics WHERE id > ? ORDER BY id",
                (self._metric_id,)):
            row = self._rows.get(run_id)
            if row is not None:
                row.metrics[key] = value
            self._metric_id = point

    def children(self, run_id: str) -> list[RunRow]:
        """The steps of a pipeline run, oldest first."""
        self.refresh()
        return sorted((r for r in self._order if r.parent == run_id),
                      key=lambda r: r.created_at)

    def page(self, where: str = "", sort: str = "", descending: bool = True,
             offset: int = 0, limit: int = 100) -> Page:
        """Runs matching `where` (see `filters`), sorted by `sort` (default: newest
        first), `limit` of them from `offset`. Raises FilterError on a bad filter."""
        predicate, _ = filters.parse(where, _getter)
        key = sort_field(sort) if sort.strip() else ""
        self.refresh()
        runs = self._order
        if predicate is not None:
            runs = [r for r in runs if predicate(r)]
        if key:
            get = _getter(key)
            valued = [(get(r), r) for r in runs]
            present = [pair for pair in valued if pair[0] is not None]
            if all(type(v) in (int, float) for v, _ in present):  # numbers: compared as is
                present.sort(key=itemgetter(0), reverse=descending)
            else:
                present.sort(key=lambda pair: _sort_key(pair[0]), reverse=descending)
            runs = [r for _, r in present] + [r for v, r in valued if v is None]
        elif not descending:
            runs = list(reversed(runs))
        shown = runs[offset:offset + limit]
        return Page(shown, len(self._order), len(runs), _keys(r.metrics for r in shown),
                    _keys(r.params for r in shown), offset, limit)


def _getter(name: str) -> Callable[[RunRow], Any]:
    """RunRow.value for one field, with the field's kind decided once."""
    if name.startswith("metrics."):
        metric = name[8:]
        return lambda r: r.metrics.get(metric)
    if name.startswith("params."):
        param = name[7:]
        return lambda r: r.params.get(param)
    return lambda r: r.value(name)


def _keys(dicts: Iterable[dict[str, Any]]) -> list[str]:
    found: set[str] = set()
    for d in dicts:
        found.update(d)
    return sorted(found)


def _chunks(ids: list[str]) -> Iterable[list[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i:i + _CHUNK]


def _json(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}

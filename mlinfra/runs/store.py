"""Runs, their metrics and logged params, kept in the state store."""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from typing import Any

from mlinfra.state.cloudevents import with_see
from mlinfra.state.store import Cursor, StateStore, row_json, upsert
from mlinfra.state.work import Event, UnitOfWork

_JSON = ("params", "inputs", "outputs", "git", "environment")
_COLUMNS = ("id", "job", "experiment", "pipeline", "step", "parent", "run_hash", "status",
            "created_at", "started_at", "ended_at", "exit_code", "pid", "host", "command",
            "params", "inputs", "outputs", "git", "environment", "run_dir", "error",
            "reused_from", "cancel_requested", "pid_started", "owner_pid", "owner_started")
_SELECT = ", ".join(_COLUMNS)
# How a run records an input that another run produced: "... (run ID)".
_UPSTREAM = re.compile(r"\(run ([^)\s]+)\)$")
# Columns added after the first release: a state made before has the table without them.


@dataclass
class Run:
    """One execution. `status` moves queued -> running -> completed | failed | canceled;
    `outputs` maps each declared output to the sha256 of its stored artifact."""

    id: str
    job: str
    experiment: str
    run_hash: str
    status: str = "queued"
    pipeline: str | None = None
    step: str | None = None
    parent: str | None = None
    created_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    pid: int | None = None
    host: str | None = None
    command: str = ""
    params: dict[str, Any] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    git: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    run_dir: str = ""
    error: str = ""
    reused_from: str | None = None
    cancel_requested: int = 0
    # The process' start time beside its pid, and the mlinfra that runs it (pid, start
    # time): a pid the system reused is never taken for the run's (runs.processes).
    pid_started: float | None = None
    owner_pid: int | None = None
    owner_started: float | None = None

    @property
    def duration(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.ended_at or time.time()) - self.started_at


class RunStore:
    """The runs table and its metrics and logged params.

    A run is written as it happens, not with its resource's change: its process and
    owner must be visible at once, so that an apply killed at any instant leaves no
    process that the next one cannot find. Written through a unit of work (`now`)
    during apply; a store writes them at once elsewhere (`runs cancel`)."""

    def __init__(self, store: StateStore, work: UnitOfWork | None = None) -> None:
        self.store, self.work = store, work

    def _now(self, fn: Any) -> Any:
        return (self.work or self.store).now(fn)

    def save(self, run: Run) -> None:
        values = [json.dumps(getattr(run, c)) if c in _JSON else getattr(run, c)
                  for c in _COLUMNS]
        def write(cur: Cursor) -> None:
            row = cur.execute("SELECT status FROM runs WHERE id=?", (run.id,)).fetchone()
            cur.execute(upsert("runs", _COLUMNS, ("id",)), values)
            if row is None or row[0] != run.status:  # announced with the change
                _announce_status(self.store, cur, run, run.status, run.error)

        self._now(write)

    def get(self, run_id: str) -> Run | None:
        rows = self.store.query(f"SELECT {_SELECT} FROM runs WHERE id=?", (run_id,))
        return _run(rows[0]) if rows else None

    def find(self, prefix: str) -> Run | None:
        """A run by its id or a unique prefix of it."""
        rows = self.store.query(f"SELECT {_SELECT} FROM runs WHERE id LIKE ? "
                                "ORDER BY created_at DESC", (prefix.replace("%", "") + "%",))
        return _run(rows[0]) if len(rows) == 1 else (self.get(prefix) if rows else None)

    def completed(self, job: str, run_hash: str) -> list[Run]:
        """The completed runs of `job` with these inputs, newest first."""
        rows = self.store.query(f"SELECT {_SELECT} FROM runs WHERE job=? AND "
                                "run_hash=? AND status='completed' ORDER BY created_at DESC",
                                (job, run_hash))
        return [_run(row) for row in rows]

    def unfinished(self) -> list[Run]:
        """Runs marked queued or running, oldest first."""
        rows = self.store.query(f"SELECT {_SELECT} FROM runs WHERE status IN "
                                "('queued', 'running') ORDER BY created_at")
        return [_run(row) for row in rows]

    def end_unfinished(self, run_id: str, status: str, error: str) -> bool:
        """Mark a run that is still queued or running as ended; False when it had ended
        meanwhile (its own mlinfra recorded it)."""
        def end(cur: Cursor) -> bool:
            cur.execute("UPDATE runs SET status=?, error=?, ended_at=? WHERE id=? AND "
                        "status IN ('queued', 'running')", (status, error, time.time(), run_id))
            ended = cur.rowcount == 1
            if ended:
                row = cur.execute(f"SELECT {_SELECT} FROM runs WHERE id=?",
                                  (run_id,)).fetchone()
                _announce_status(self.store, cur, _run(row), status, error)
            return ended

        return bool(self._now(end))

    def recent(self, experiment: str | None = None, limit: int = 50) -> list[Run]:
        where, args = ("WHERE experiment=?", (experiment,)) if experiment else ("", ())
        rows = self.store.query(f"SELECT {_SELECT} FROM runs {where} "
                                "ORDER BY created_at DESC LIMIT ?", (*args, limit))
        return [_run(r) for r in rows]

    def add_metrics(self, run_id: str, records: list[dict[str, Any]]) -> None:
        metrics = [(run_id, r["key"], r["value"], r.get("step"), r.get("at", time.time()))
                   for r in records if r.get("type") == "metric"]
        params = [(run_id, r["key"], json.dumps(r["value"])) for r in records
                  if r.get("type") == "param"]
        if not metrics and not params:
            return

        def add(cur: Cursor) -> None:
            cur.executemany("INSERT INTO metrics (run_id, key, value, step, at) "
                            "VALUES (?, ?, ?, ?, ?)", metrics)
            cur.executemany(upsert("run_params", ("run_id", "key", "value"),
                                   ("run_id", "key")), params)

        self._now(add)

    def metrics(self, run_id: str) -> dict[str, list[tuple[int | None, float]]]:
        """Each metric's points (step, value), in the order logged."""
        out: dict[str, list[tuple[int | None, float]]] = {}
        for key, value, step in self.store.query(
                "SELECT key, value, step FROM metrics WHERE run_id=? ORDER BY id", (run_id,)):
            out.setdefault(key, []).append((step, value))
        return out

    def logged_params(self, run_id: str) -> dict[str, Any]:
        return {k: row_json(v, f"run {run_id} param {k}") for k, v in self.store.query(
            "SELECT key, value FROM run_params WHERE run_id=?", (run_id,))}

    def data_read(self, run: Run) -> list[str]:
        """The data versions (`name:version`) a run read: itself, or through the runs
        whose outputs it read (`... (run ID)` inputs), to the first step."""
        seen: set[str] = set()
        found: set[str] = set()
        todo = [run]
        while todo:
            current = todo.pop()
            if current.id in seen:
                continue
            seen.add(current.id)
            for label in current.inputs.values():
                upstream = _UPSTREAM.search(str(label))
                if upstream is None:
                    found.add(str(label))
                elif (producer := self.get(upstream.group(1))) is not None:
                    todo.append(producer)
        return sorted(found)

    def request_cancel(self, run_id: str) -> None:
        self._now(lambda cur: cur.execute("UPDATE runs SET cancel_requested=1 WHERE id=?",
                                          (run_id,)))


def _run(row: tuple[Any, ...]) -> Run:
    values = dict(zip(_COLUMNS, row, strict=True))
    for key in _JSON:
        text = values[key] if values[key] not in (None, "", "null") else "{}"
        values[key] = row_json(text, f"run {values['id']} {key}", dict)
    return Run(**values)


# A run's status -> the event announcing it (queued announces nothing).
_STATUS_EVENTS = {"running": "run.started", "completed": "run.completed",
                  "failed": "run.failed", "canceled": "run.canceled"}


def _announce_status(store: StateStore, cur: Cursor, run: Run, status: str,
                     error: str) -> None:
    """Within the transaction that records a run's new status: its event."""
    event_type = _STATUS_EVENTS.get(status)
    if event_type is None or run.reused_from:
        return
    data: dict[str, Any] = {"run": run.id, "job": run.job}
    if event_type == "run.started":
        data["pipeline"] = run.pipeline
    elif event_type == "run.completed":
        data["duration_s"] = run.duration
    elif event_type == "run.failed":
        data["error"] = error
    store.record_events(cur, [Event(event_type, f"job.{run.job}", with_see(
        data, f"mlinfra runs show {run.id}"), time.time())])

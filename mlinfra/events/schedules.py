"""Schedules: when a `kind: Schedule` fires, in its time zone, and what it fired.

A cron schedule's instants are cronsim's (the cron library that follows cronie across
daylight saving time: a time in a skipped hour fires right after the change, one in a
repeated hour fires once); `every:` fires at whole multiples of its interval since the
Unix epoch. A fired instant is a row of `schedule_fires` (schedule, instant), inserted
with its `schedule.fired` event in one transaction before the work runs, so an instant
is never run twice, and its run is named after it: `nightly-20261207T010000Z`.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim

from mlinfra.events.envelope import emit, rfc3339
from mlinfra.spec.events import cron_problem, timezone_problem
from mlinfra.spec.model import Config, duration_s
from mlinfra.state.store import HOST, StateStore, pid_alive

# At most this many missed instants are fired at once with catchup: true.
CATCHUP_LIMIT = 100


class ScheduleError(ValueError):
    """A schedule that cannot fire: bad cron, unknown time zone, bad interval."""


def zone(name: str) -> ZoneInfo:
    problem = timezone_problem(name)
    if problem:
        raise ScheduleError(problem)
    return ZoneInfo(name)


def check_cron(expression: str) -> None:
    problem = cron_problem(expression)
    if problem:
        raise ScheduleError(problem)


@dataclass(frozen=True)
class ScheduleSpec:
    """A `kind: Schedule`: when (cron in a time zone, or every N seconds) and what."""

    name: str
    cron: str | None
    every_s: float | None
    timezone: str
    run: dict[str, Any]
    catchup: bool = False
    overlap: str = "forbid"

    @classmethod
    def of(cls, name: str, spec: dict[str, Any]) -> ScheduleSpec:
        every = spec.get("every")
        every_s = duration_s(every) if every is not None else None
        cron = spec.get("cron")
        if cron is not None:
            check_cron(str(cron))
        elif not every_s:
            raise ScheduleError("give cron: or every:")
        tz = str(spec.get("timezone", "UTC"))
        zone(tz)
        return cls(name, str(cron) if cron is not None else None, every_s, tz,
                   dict(spec.get("run") or {}), bool(spec.get("catchup", False)),
                   str(spec.get("overlap", "forbid")))

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)

    def after(self, at: float) -> datetime:
        """The first instant strictly after `at` (epoch seconds), in the schedule's zone."""
        if self.cron is None:
            assert self.every_s
            step = self.every_s
            instant = (math.floor(at / step) + 1) * step
            return datetime.fromtimestamp(instant, self.tz)
        start = datetime.fromtimestamp(at, self.tz)
        return next(CronSim(self.cron, start))

    def upcoming(self, at: float, count: int) -> list[datetime]:
        out: list[datetime] = []
        for _ in range(count):
            nxt = self.after(at if not out else out[-1].timestamp())
            out.append(nxt)
        return out

    def before(self, at: float) -> float:
        """The newest instant at or before `at` (epoch seconds)."""
        if self.cron is None:
            assert self.every_s
            return math.floor(at / self.every_s) * self.every_s
        start = datetime.fromtimestamp(at, self.tz) + timedelta(microseconds=1)
        return next(CronSim(self.cron, start, reverse=True)).timestamp()

    def due(self, since: float, now: float) -> list[float]:
        """The instants in (since, now], oldest first: only the newest without catchup,
        at most CATCHUP_LIMIT (the newest) with it."""
        if not self.catchup:
            newest = self.before(now)
            return [newest] if since < newest <= now else []
        found: list[float] = []
        at = max(since, now - CATCHUP_LIMIT * 366 * 86400)
        while len(found) <= 10 * CATCHUP_LIMIT:
            nxt = self.after(at).timestamp()
            if nxt > now:
                break
            found.append(nxt)
            at = nxt
        return found[-CATCHUP_LIMIT:]

    def what(self) -> str:
        return ", ".join("apply" if k == "apply" else f"{k} {v}"
                         for k, v in self.run.items()) or "nothing"


def run_name(schedule: str, instant: float) -> str:
    """A fired run's name: the schedule and its instant in UTC."""
    return f"{schedule}-{datetime.fromtimestamp(instant, UTC):%Y%m%dT%H%M%SZ}"


def dst_warnings(spec: ScheduleSpec, fires: list[datetime]) -> list[str]:
    """For cron schedules: each fire time that a daylight saving change moves (a wall
    time in a skipped hour) or that falls in a repeated hour."""
    if spec.cron is None or not fires:
        return []
    warnings = []
    tz = spec.tz
    naive_from = (fires[0] - timedelta(days=1)).replace(tzinfo=None)
    # the wall-clock times cron names, had the day no DST change
    wall = CronSim(spec.cron, naive_from)
    wall_next = next(wall)
    while wall_next < fires[0].replace(tzinfo=None) - timedelta(hours=3):
        wall_next = next(wall)
    for fire in fires:
        local = fire.replace(tzinfo=None)
        if wall_next < local and _gap(wall_next, tz):
            warnings.append(f"{wall_next:%Y-%m-%d %H:%M} does not exist in {spec.timezone} "
                            f"(a daylight saving gap): it fires at {fire:%H:%M %Z} instead")
        elif fire.replace(fold=1).utcoffset() != fire.replace(fold=0).utcoffset():
            warnings.append(f"{fire:%Y-%m-%d %H:%M} happens twice in {spec.timezone} "
                            "(daylight saving ends): it fires once, the first time "
                            f"({fire:%H:%M %Z})")
        while wall_next <= local:
            wall_next = next(wall)
    return warnings


def _gap(naive: datetime, tz: ZoneInfo) -> bool:
    """A wall time that does not exist in `tz` (it does not survive a round trip)."""
    aware = naive.replace(tzinfo=tz)
    back = aware.astimezone(UTC).astimezone(tz).replace(tzinfo=None)
    return back != naive


def schedules_of(config: Config) -> dict[str, ScheduleSpec]:
    return {name: ScheduleSpec.of(name, res.spec)
            for name, res in sorted(config.of("Schedule").items())}


def plan_notes(config: Config, now: float | None = None) -> list[str]:
    """What `plan` shows under the changes: each schedule's next three fire times in
    its time zone, and a warning for each one a daylight saving change touches."""
    now = time.time() if now is None else now
    lines: list[str] = []
    for spec in schedules_of(config).values():
        fires = spec.upcoming(now, 3)
        when = spec.cron if spec.cron is not None else f"every {spec.every_s:g}s"
        lines.append(f"schedule.{spec.name} ({when}, {spec.timezone}; runs {spec.what()}): "
                     "next " + ", ".join(f"{f:%Y-%m-%d %H:%M %Z}" for f in fires))
        lines.extend(f"  Warning: {w}" for w in dst_warnings(spec, fires))
    return lines


# --- fired instants -----------------------------------------------------------------

@dataclass(frozen=True)
class Fire:
    schedule: str
    instant: float
    run_name: str
    status: str
    pid: int | None
    host: str | None
    started_at: float | None
    ended_at: float | None
    detail: str


_FIRE_COLUMNS = ("schedule", "instant", "run_name", "status", "pid", "host", "started_at",
                 "ended_at", "detail")


class FireLog:
    """The `schedule_fires` table: which instants fired and how their runs ended."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def last(self, schedule: str) -> float | None:
        rows = self.store.query("SELECT MAX(instant) FROM schedule_fires WHERE schedule=?",
                                (schedule,))
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def fires(self, schedule: str | None = None, limit: int = 50) -> list[Fire]:
        where, args = ("WHERE schedule=?", (schedule,)) if schedule else ("", ())
        rows = self.store.query(f"SELECT {', '.join(_FIRE_COLUMNS)} FROM schedule_fires "
                                f"{where} ORDER BY instant DESC LIMIT ?", (*args, limit))
        return [Fire(*row) for row in rows]

    def running(self, schedule: str) -> Fire | None:
        """A fired run of `schedule` still under way (its process alive)."""
        for fire in self.fires(schedule, 5):
            if fire.status == "running" and fire.pid is not None and not (
                    fire.host == HOST and not pid_alive(int(fire.pid))):
                return fire
        return None

    def start(self, spec: ScheduleSpec, instant: float) -> str | None:
        """Record that `spec` fires at `instant`, with its schedule.fired event; returns
        the run's name, or None when that instant fired already."""
        name = run_name(spec.name, instant)
        with self.store.transaction() as cur:
            found = cur.execute("SELECT 1 FROM schedule_fires WHERE schedule=? AND "
                                "instant=?", (spec.name, instant)).fetchone()
            if found is not None:
                return None
            cur.execute(f"INSERT INTO schedule_fires ({', '.join(_FIRE_COLUMNS)}) VALUES "
                        "(?, ?, ?, 'running', ?, ?, ?, NULL, '')",
                        (spec.name, instant, name, os.getpid(), HOST, time.time()))
            emit(self.store, cur, "schedule.fired", f"schedule.{spec.name}",
                 {"schedule": spec.name, "instant": rfc3339(instant), "run": name,
                  "what": spec.run}, see="mlinfra events list")
        return name

    def finish(self, schedule: str, instant: float, status: str, detail: str) -> None:
        with self.store.transaction() as cur:
            cur.execute("UPDATE schedule_fires SET status=?, ended_at=?, detail=? WHERE "
                        "schedule=? AND instant=?",
                        (status, time.time(), detail[:2000], schedule, instant))


def fire_json(fire: Fire) -> dict[str, Any]:
    return {k: getattr(fire, k) for k in _FIRE_COLUMNS}

"""What `validate` checks in webhooks and schedules: event names (the catalog's, which
is the YAML contract; `mlinfra.events.catalog` gives each its data schema), URLs, cron
expressions and time zones."""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from mlinfra.spec.model import duration_s

# Where each event's data schema is published (its CloudEvents `dataschema`).
SCHEMA_BASE = "https://mlinfra.dev/schemas/events"
# Every event mlinfra announces, by the name a webhook's `events:` uses.
EVENT_TYPES: tuple[str, ...] = (
    "run.started", "run.completed", "run.failed", "run.canceled",
    "data.version_created", "data.expectations_failed",
    "model.version_registered", "model.rejected", "model.promoted", "model.archived",
    "rollout.step", "rollout.completed", "rollout.rolled_back",
    "endpoint.created", "endpoint.updated", "endpoint.deleted", "endpoint.unhealthy",
    "monitor.breached", "monitor.recovered",
    "apply.completed", "apply.failed",
    "schedule.fired",
)


def url_problem(url: str) -> str | None:
    if "${" in url:  # a secret or variable, checked when it is filled in
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return f"'{url}' is not an http:// or https:// URL"
    return None


def event_problems(events: Any) -> list[tuple[int, str]]:
    """(index, message) for each `events:` entry that names no event of the catalog."""
    from mlinfra.spec.validate import did_you_mean

    problems = []
    for index, name in enumerate(events if isinstance(events, list) else []):
        if not isinstance(name, str):
            continue
        if not any(fnmatch.fnmatchcase(t, name) for t in EVENT_TYPES):
            what = "matches no event" if any(c in name for c in "*?[") else "is not an event"
            problems.append((index, f"'{name}' {what}{did_you_mean(name, EVENT_TYPES)}; "
                             "events are " + ", ".join(EVENT_TYPES)))
    return problems


def cron_problem(expression: str) -> str | None:
    """What is wrong with a cron expression (cronsim's word), or None."""
    from cronsim import CronSim, CronSimError

    try:
        next(CronSim(expression, datetime(2000, 1, 1, tzinfo=UTC)))
    except CronSimError as err:
        return f"cron expression '{expression}' is not valid: {err}"
    except StopIteration:
        return f"cron expression '{expression}' never fires"
    return None


def timezone_problem(name: str) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return (f"unknown time zone '{name}': use an IANA name such as Europe/Berlin or "
                "UTC")
    return None


def schedule_problems(spec: dict[str, Any]) -> list[tuple[tuple[str, ...], str]]:
    problems: list[tuple[tuple[str, ...], str]] = []
    cron = spec.get("cron")
    if isinstance(cron, str):
        problem = cron_problem(cron)
        if problem:
            problems.append((("cron",), problem))
    tz = spec.get("timezone")
    if isinstance(tz, str):
        problem = timezone_problem(tz)
        if problem:
            problems.append((("timezone",), problem))
    every = spec.get("every")
    if every is not None and isinstance(every, int | str) and not duration_s(every):
        problems.append((("every",), f"every: {every} is not a duration such as 6h"))
    if "every" in spec and "timezone" in spec and "cron" not in spec:
        problems.append((("timezone",), "timezone: applies to cron:, not every:"))
    return problems

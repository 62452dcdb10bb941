"""Promotion decisions read back from the audit log, for `mlinfra history`."""

from __future__ import annotations

import time
from typing import Any

from mlinfra.registry.decisions import PROMOTION, DecisionLog, figures
from mlinfra.state.store import StateStore


def decisions(store: StateStore, model: str | None = None) -> list[dict[str, Any]]:
    """Every promotion decision, oldest first (of one model when named): when, who or
    what triggered it, the commit, from which version to which, metrics, outcome, why,
    and the rollout's steps."""
    out = []
    for record in DecisionLog(store).read(PROMOTION):
        detail = record.detail
        if model is not None and detail.get("model") != model:
            continue
        out.append({"at": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(record.at)),
                    "timestamp": record.at, "user": record.user, "host": record.host,
                    "address": record.address, **detail})
    return out


def _version(value: Any) -> str:
    return "-" if value is None else str(value)


def _window(step: dict[str, Any]) -> str:
    p99 = step.get("p99_ms")
    latency = f"p99 <= {p99:g} ms" if isinstance(p99, int | float) else "p99 over the last bucket"
    return (f"{step.get('share')}% {step.get('verdict')} ({step.get('requests')} requests, "
            f"error rate {float(step.get('error_rate') or 0):.3f}, {latency})")


def render(entries: list[dict[str, Any]]) -> list[str]:
    """The decisions as text: one header line each, then why, metrics and rollout."""
    if not entries:
        return ["No promotion decisions yet."]
    lines = []
    for entry in entries:
        trigger = entry.get("trigger") or {}
        github = trigger.get("github") or {}
        who = github.get("actor") or entry.get("user", "?")
        commit = (entry.get("commit") or "")[:12] or "no commit"
        model = entry.get("model", "?")
        event = f", {github['event']}" if "event" in github else ""
        lines.append(f"{entry['at']}  {model}@{entry.get('alias', '?')}  "
                     f"{_version(entry.get('from'))} -> {_version(entry.get('to'))}  "
                     f"{str(entry.get('outcome', '?')).upper()}  candidate "
                     f"{model}:{_version(entry.get('candidate'))}  by "
                     f"{trigger.get('command', '?')} ({who}{event})  at {commit}")
        lines.append(f"    why: {entry.get('reason', '')}")
        metrics = entry.get("metrics") or {}
        candidate, champion = metrics.get("candidate") or {}, metrics.get("champion") or {}
        for name in sorted(candidate):
            old = champion.get(name)
            if isinstance(old, int | float):
                new, was = figures(candidate[name], old)
                lines.append(f"    {name}: {new} (champion {was})")
            else:
                lines.append(f"    {name}: {figures(candidate[name])[0]}")
        rollout = entry.get("rollout") or {}
        if rollout:
            lines.append(f"    rollout on {rollout.get('endpoint')}: {rollout.get('status')}"
                         f" ({rollout.get('why', '')})")
            for step in rollout.get("steps") or []:
                lines.append(f"      {_window(step)}")
    return lines

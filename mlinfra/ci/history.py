"""Promotion decisions and alias moves read back from the audit log, for `mlinfra
history`: every decision a promotion made, and every alias move made outside one
(`mlinfra models alias`), with who, when, from, to and why."""

from __future__ import annotations

import time
from typing import Any

from mlinfra.registry.decisions import PROMOTION, DecisionLog, figures
from mlinfra.state.store import StateStore

# The commands whose alias moves are promotion decisions, recorded as such.
_DECIDING = ("apply", "destroy", "ci run")


def decisions(store: StateStore, model: str | None = None) -> list[dict[str, Any]]:
    """Every promotion decision and every alias move made by hand, oldest first (of one
    model when named): when, who or what triggered it, the commit, from which version
    to which, metrics, outcome, why, and the rollout's steps."""
    log = DecisionLog(store)
    records = sorted([*log.read(PROMOTION),
                      *(r for r in log.read("alias") if r.command not in _DECIDING)],
                     key=lambda r: r.id)
    out = []
    for record in records:
        detail = dict(record.detail)
        if model is not None and detail.get("model") != model:
            continue
        if record.address.startswith("model."):  # a move by hand
            detail.update(outcome="moved", trigger={"command": record.command})
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
        shown = ("" if entry.get("outcome") == "moved" else
                     f"candidate {model}:{_version(entry.get('candidate'))}  ")
        lines.append(f"{entry['at']}  {model}@{entry.get('alias', '?')}  "
                     f"{_version(entry.get('from'))} -> {_version(entry.get('to'))}  "
                     f"{str(entry.get('outcome', '?')).upper()}  {shown}by "
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

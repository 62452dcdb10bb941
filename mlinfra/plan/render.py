"""Plans shown to people, the way Terraform shows them: `+`, `~`, `-/+`, `-`."""

from __future__ import annotations

import json
import re
from typing import Any

from mlinfra.plan.diff import flatten, masked
from mlinfra.plan.model import SENSITIVE, Action, Change, Plan

# (line, style) pairs: the CLI colours them; tests read the text.
Line = tuple[str, str]

STYLES = {Action.CREATE: "green", Action.UPDATE: "yellow", Action.REPLACE: "magenta",
          Action.DELETE: "red", Action.NOOP: ""}


def _value(value: Any) -> str:
    value = masked(value)
    if value == SENSITIVE:
        return SENSITIVE
    if value is None:
        return "null"
    return json.dumps(value, default=str)


def _change_lines(change: Change) -> list[Line]:
    style = STYLES[change.action]
    verb = f"be {change.action.verb}"
    if change.kind in ("Job", "Pipeline") and change.action in (Action.CREATE, Action.UPDATE) \
            and {"run_hash", "steps_resolved"} & set(change.after or {}):
        verb = "run"  # creating or updating it runs it (a job used as a step does not)
    reason = change.reason
    if change.kind == "BatchScore" and change.action in (Action.CREATE, Action.UPDATE,
                                                         Action.REPLACE):
        verb, reason = _scoring(change)
    header = f"  # {change.address} will {verb}"
    lines: list[Line] = [(header, "bold")]
    if change.action is not Action.CREATE or reason != "new resource":
        lines.append((f"  #   ({reason})", "dim"))
    symbol = change.action.value
    lines.append((f"{symbol:>3} {change.kind.lower()} \"{change.name}\" {{", style))
    if change.action in (Action.CREATE, Action.DELETE):
        flat = flatten(change.after if change.action is Action.CREATE else change.before or {})
        mark = "+" if change.action is Action.CREATE else "-"
        width = max((len(k) for k in flat), default=0)
        for key in sorted(flat):
            lines.append((f"      {mark} {key:<{width}} = {_value(flat[key])}", style))
    else:
        width = max((len(f.path) for f in change.fields), default=0)
        for f in change.fields:
            note = "  # forces replacement" if f.forces_replacement else ""
            if f.before is None:
                lines.append((f"      + {f.path:<{width}} = {_value(f.after)}{note}", "green"))
            elif f.after is None:
                lines.append((f"      - {f.path:<{width}} = {_value(f.before)}{note}", "red"))
            else:
                lines.append((f"      ~ {f.path:<{width}} = {_value(f.before)} -> "
                              f"{_value(f.after)}{note}", "yellow"))
    lines.append(("    }", style))
    lines.append(("", ""))
    return lines


def _scoring_changes(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """What changed in a scoring's settings: the output's form, or the mini-batch size
    (the job's shards: its output is scored again)."""
    said = []
    if before.get("output") != after.get("output"):
        said.append("the output's form changed")
    for key in sorted((set(before) | set(after)) - {"output"}):
        if before.get(key) != after.get(key):
            said.append(f"{key} {before.get(key, 'default')} -> {after.get(key, 'default')}")
    return said or ["the output's form changed"]


def _scoring(change: Change) -> tuple[str, str]:
    """A declared scoring says what it will score with what, and why: "will score
    transactions:8 with fraud:3" (fraud@champion moved 2 -> 3)."""
    after, before = change.after or {}, change.before or {}
    model = str(after.get("model"))
    reasons = []
    moved = _MOVED.search(change.reason)
    if moved:  # refresh found the reference naming another version (see BatchScore.read)
        model = moved.group(2)
        reasons.append(moved.group(1))
    if before and before.get("input") != after.get("input"):
        reasons.append(f"new data: {before.get('input')} -> {after.get('input')}")
    if before and before.get("scoring") != after.get("scoring"):
        reasons.extend(_scoring_changes(before.get("scoring") or {},
                                        after.get("scoring") or {}))
    if before and before.get("model") != after.get("model"):
        reasons.append(f"model {before.get('model')} -> {after.get('model')}")
    if before and before.get("model_source") != after.get("model_source") and not reasons:
        reasons.append(f"{model} may name a new version after this apply")
    why = "; ".join(reasons) or change.reason
    kept = _KEPT.search(change.reason)
    if kept:  # that model scored that data before: taken again, not scored
        return (f"take {kept.group(1)} again, {model} over {after.get('input')} scored "
                "before", why)
    return f"score {after.get('input')} with {model}", why


_MOVED = re.compile(r"(\S+ moved \S+ -> \S+): it scored \S+, \S+ is (\S+) now")
_KEPT = re.compile(r"; \S+ over \S+ was scored before: (\S+)$")


def summary_line(plan: Plan) -> str:
    c = plan.counts()
    return (f"Plan: {c['add']} to add, {c['change']} to change, {c['replace']} to replace, "
            f"{c['destroy']} to destroy.")


def render(plan: Plan) -> list[Line]:
    lines: list[Line] = []
    if plan.drift:
        lines.append(("Objects changed outside mlinfra:", "bold"))
        lines.append(("", ""))
        for drift in plan.drift:
            lines.append((f"  # {drift.address}: {drift.message}", "yellow"))
        lines.append(("", ""))
    if not plan.has_changes():
        lines.append(("No changes. The stack matches the configuration.", "bold green"))
        return lines
    lines.append(("mlinfra will perform the following actions:", "bold"))
    lines.append(("", ""))
    for change in plan.actionable:
        lines.extend(_change_lines(change))
    lines.append((summary_line(plan), "bold"))
    return lines

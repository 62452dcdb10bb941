"""Decisions kept in the audit log as structured records: each promotion decision (what
`mlinfra history` shows) and each commit `mlinfra ci run` processed.

A record is an audit row whose `detail` is a JSON object; writing one is a state change
(the serial grows), like moving an alias. Every SQL statement of these records is here,
so that a change of the state store touches one place.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from mlinfra.state.store import StateStore
from mlinfra.state.work import Writer

PROMOTION = "promotion"
CI_RUN = "ci-run"
# The audit row's detail column holds at most this many characters.
DETAIL_LIMIT = 2000


@dataclass(frozen=True)
class Decision:
    """One audit record: its row id (records are ordered by it), when, who, from which
    command, the resource it is about and its JSON detail."""

    id: int
    at: float
    user: str
    host: str
    command: str
    address: str
    detail: dict[str, Any]


def trigger(command: str) -> dict[str, Any]:
    """Who or what made the decision: the command, and in GitHub Actions the event, the
    actor and the workflow run."""
    found: dict[str, Any] = {"command": command}
    names = {"GITHUB_EVENT_NAME": "event", "GITHUB_ACTOR": "actor",
             "GITHUB_RUN_ID": "run_id", "GITHUB_REPOSITORY": "repository"}
    github = {key: os.environ[name] for name, key in names.items() if os.environ.get(name)}
    if github:
        found["github"] = github
    return found


def _fit(detail: dict[str, Any]) -> str:
    """The detail as compact JSON within DETAIL_LIMIT: long texts are cut first, then
    the rollout's windows, so the row stays valid JSON."""
    text = json.dumps(detail, separators=(",", ":"), sort_keys=True, default=str)
    if len(text) <= DETAIL_LIMIT:
        return text
    trimmed = {k: (v[:300] + "..." if isinstance(v, str) and len(v) > 300 else v)
               for k, v in detail.items()}
    rollout = trimmed.get("rollout")
    if isinstance(rollout, dict) and rollout.get("steps"):
        trimmed["rollout"] = {**rollout, "steps": rollout["steps"][-3:]}
    text = json.dumps(trimmed, separators=(",", ":"), sort_keys=True, default=str)
    if len(text) <= DETAIL_LIMIT:
        return text
    kept = {k: trimmed[k] for k in ("model", "from", "to", "candidate", "outcome", "commit")
            if k in trimmed}
    return json.dumps({**kept, "reason": str(trimmed.get("reason", ""))[:500],
                       "trimmed": True}, separators=(",", ":"), sort_keys=True)


class DecisionLog:
    def __init__(self, writer: Writer | StateStore) -> None:
        self.writer, self.store = writer, writer.store

    def record(self, address: str, action: str, detail: dict[str, Any]) -> None:
        """Add a record (with the writer's change)."""
        text = _fit(detail)
        self.writer.write(lambda cur: self.store.advance(cur, address, action, text))

    def read(self, action: str, after: int = 0, address: str | None = None
             ) -> list[Decision]:
        """The records of `action` with an id past `after`, oldest first."""
        sql = ("SELECT id, at, username, host, command, address, detail FROM audit "
               "WHERE action=? AND id>?")
        args: tuple[Any, ...] = (action, after)
        if address is not None:
            sql += " AND address=?"
            args += (address,)
        out = []
        for row in self.store.query(sql + " ORDER BY id", args):
            try:
                detail = json.loads(row[6])
            except ValueError:
                continue  # a record cut short by an earlier mlinfra: not a decision
            if isinstance(detail, dict):
                out.append(Decision(int(row[0]), float(row[1]), str(row[2]), str(row[3]),
                                    str(row[4]), str(row[5]), detail))
        return out

    def last(self, action: str, address: str) -> Decision | None:
        rows = self.store.query("SELECT MAX(id) FROM audit WHERE action=? AND address=?",
                                (action, address))
        newest = rows[0][0] if rows else None
        if newest is None:
            return None
        found = self.read(action, int(newest) - 1, address)
        return found[0] if found else None

    def newest_id(self) -> int:
        """The id of the newest audit row: records made later have a greater one."""
        rows = self.store.query("SELECT MAX(id) FROM audit")
        return int(rows[0][0] or 0) if rows else 0


def figures(*values: float) -> list[str]:
    """Metric values as a decision shows them: every digit before the point and at least
    four significant ones, and as many more as it takes for values that differ to read
    differently (rmse 25541.3 > 25538.9, never 2.554e+04 > 2.554e+04)."""
    def at(value: float, digits: int) -> str:
        whole = len(str(int(abs(value)))) if abs(value) >= 1 else 0
        return f"{value:.{max(digits, whole + 1)}g}"

    for digits in range(4, 18):
        shown = [at(v, digits) for v in values]
        if len(set(shown)) == len(set(values)):
            return shown
    return [repr(v) for v in values]

"""Events as CloudEvents 1.0 (structured mode, JSON), written into the outbox in the
transaction of the change they announce.

`emit(store, cur, type, subject, data)` is the one way an event is made: inside a
write transaction of `store` (the change's own), so none is lost and none announces a
change that did not happen. `announce` is the same in a transaction of its own, for an
event that is itself the change (an apply's end, a schedule firing).
"""

from __future__ import annotations

import json
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlinfra.events.catalog import BASE_ID, EVENTS
from mlinfra.state.model import OutboxEvent
from mlinfra.state.store import Cursor, StateStore, current_user

SPECVERSION = "1.0"


def actor_of(origin: dict[str, Any]) -> dict[str, str]:
    """Who makes the change: the schedule the agent fired, CI, or the user."""
    given = origin.get("actor")
    if isinstance(given, dict):
        return {"kind": str(given["kind"]), "name": str(given["name"])}
    if os.environ.get("GITHUB_ACTIONS") == "true" or os.environ.get("CI") == "true":
        return {"kind": "ci", "name": os.environ.get("GITHUB_ACTOR")
                or os.environ.get("GITHUB_WORKFLOW") or "ci"}
    return {"kind": "user", "name": current_user()}


def head_commit(root: Path) -> str | None:
    """The project's Git commit (GITHUB_SHA in Actions), read from .git without git."""
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    for folder in (root, *root.parents):
        git = folder / ".git"
        if git.is_file():  # a worktree: "gitdir: PATH"
            text = git.read_text().strip()
            git = (folder / text.removeprefix("gitdir:").strip()).resolve()
        if not git.is_dir():
            continue
        try:
            head = (git / "HEAD").read_text().strip()
            if not head.startswith("ref:"):
                return head or None
            ref = head[4:].strip()
            common = git
            if (git / "commondir").is_file():
                common = (git / (git / "commondir").read_text().strip()).resolve()
            for base in (git, common):
                if (base / ref).is_file():
                    return (base / ref).read_text().strip() or None
            packed = common / "packed-refs"
            if packed.is_file():
                for line in packed.read_text().splitlines():
                    if line.endswith(" " + ref):
                        return line.split(" ", 1)[0]
        except OSError:
            return None
        return None
    return None


def _commit(origin: dict[str, Any]) -> str | None:
    if "commit" not in origin:
        root = origin.get("root")
        origin["commit"] = head_commit(Path(root)) if root else None
    commit = origin["commit"]
    return str(commit) if commit else None


def rfc3339(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def build(store: StateStore, event_type: str, subject: str, data: dict[str, Any],
          see: str = "", at: float | None = None) -> OutboxEvent:
    """One event of the catalog, as the outbox keeps it."""
    if event_type not in EVENTS:
        raise ValueError(f"unknown event type {event_type!r}")
    origin = store.origin
    at = time.time() if at is None else at
    project, stack = str(origin.get("project", "")), str(origin.get("stack", ""))
    body = {"project": project, "stack": stack, "address": subject,
            "commit": _commit(origin), "actor": actor_of(origin),
            "see": see or f"mlinfra events list -s {stack}", **data}
    event_id = str(uuid.uuid4())
    envelope = {"specversion": SPECVERSION, "id": event_id,
                "source": f"/mlinfra/{project}/{stack}", "type": event_type,
                "subject": subject, "time": rfc3339(at),
                "datacontenttype": "application/json",
                "dataschema": f"{BASE_ID}/{event_type}.json", "data": body}
    return OutboxEvent(event_id, event_type, subject, at,
                       json.dumps(envelope, separators=(",", ":"), default=str))


def emit(store: StateStore, cur: Cursor, event_type: str, subject: str,
         data: dict[str, Any], see: str = "") -> None:
    """Within a write transaction of `store`: the event joins the outbox with it."""
    store.add_events(cur, [build(store, event_type, subject, data, see)])


def announce(store: StateStore, event_type: str, subject: str, data: dict[str, Any],
             see: str = "") -> None:
    """An event in a transaction of its own (the event is the change)."""
    with store.transaction() as cur:
        emit(store, cur, event_type, subject, data, see)

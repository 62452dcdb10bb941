"""An event as the outbox keeps it: a CloudEvents 1.0 envelope (structured mode, JSON).

`outbox_row` is the one place an event gets its envelope: its id, source (the project
and stack), type, subject, time, and `data` with what every event carries (the project,
the stack, the address, the commit when known, the actor, a command that shows more)
besides its own fields. `StateStore.record_events` writes the rows in the transaction
of the change the events announce.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlinfra.spec.events import EVENT_TYPES, SCHEMA_BASE
from mlinfra.state.model import OutboxEvent

if TYPE_CHECKING:
    from mlinfra.state.work import Event

SPECVERSION = "1.0"
# An event's data may name the command that shows more under this key.
SEE = "see"


def with_see(data: dict[str, Any], see: str) -> dict[str, Any]:
    """`data` naming the command that shows more (the envelope's data.see)."""
    return {**data, SEE: see} if see else dict(data)


def actor_of(origin: dict[str, Any]) -> dict[str, str]:
    """Who makes the change: the schedule the agent fired, CI, or the user."""
    from mlinfra.state.store import current_user

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


def outbox_row(origin: dict[str, Any], event: Event) -> OutboxEvent:
    """The event with its envelope; `origin` is the store's (project, stack, actor,
    the project's folder for its commit)."""
    if event.type not in EVENT_TYPES:
        raise ValueError(f"unknown event type {event.type!r}")
    project, stack = str(origin.get("project", "")), str(origin.get("stack", ""))
    data = dict(event.data)
    see = str(data.pop(SEE, "") or f"mlinfra events list -s {stack}")
    body = {"project": project, "stack": stack, "address": event.subject,
            "commit": _commit(origin), "actor": actor_of(origin), "see": see, **data}
    event_id = str(uuid.uuid4())
    envelope = {"specversion": SPECVERSION, "id": event_id,
                "source": f"/mlinfra/{project}/{stack}", "type": event.type,
                "subject": event.subject, "time": rfc3339(event.at),
                "datacontenttype": "application/json",
                "dataschema": f"{SCHEMA_BASE}/{event.type}.json", "data": body}
    return OutboxEvent(event_id, event.type, event.subject, event.at,
                       json.dumps(envelope, separators=(",", ":"), default=str))

"""What a state is: the resources mlinfra created, as it last saw them.

Kept apart from how it is stored (`store.py` and its backends `sqlite.py`,
`postgres.py`) and how it is locked (`lock.py`), as Terraform keeps `states`,
`statefile` and `statemgr` apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, NamedTuple

_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text."""
    return _CANONICAL.encode(value)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


@dataclass(slots=True, init=False)
class ResourceState:
    """One resource as last applied.

    `attributes` are the desired attributes that were applied (secrets masked);
    `inputs_hash` is their digest, so an unchanged resource is found without a deep
    diff. `outputs` are what the provider computed (paths, versions, ports).
    """

    address: str
    kind: str
    name: str
    attributes: dict[str, Any]
    inputs_hash: str
    outputs: dict[str, Any]
    provider_id: str
    dependencies: list[str]
    updated_at: float

    def __init__(self, address: str, kind: str, name: str, attributes: dict[str, Any],
                 inputs_hash: str, outputs: dict[str, Any] | None = None,
                 provider_id: str = "", dependencies: list[str] | None = None,
                 updated_at: float = 0.0) -> None:
        self.address, self.kind, self.name = address, kind, name
        self.attributes, self.inputs_hash = attributes, inputs_hash
        self.outputs = outputs if outputs is not None else {}
        self.provider_id = provider_id
        self.dependencies = dependencies if dependencies is not None else []
        self.updated_at = updated_at


class StateVersion(NamedTuple):
    """Identifies a state. `lineage` never changes; `serial` grows on every change."""

    lineage: str
    serial: int


class LockInfo(NamedTuple):
    """Who holds a stack's lock. `backend_pid`: on PostgreSQL, the server process of
    the session holding the advisory lock."""

    id: str
    owner: str
    host: str
    pid: int
    command: str
    created_at: float
    backend_pid: int | None = None

    def describe(self) -> str:
        import time

        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created_at))
        session = (f", PostgreSQL session {self.backend_pid}"
                   if self.backend_pid is not None else "")
        return (f"ID {self.id}, held by {self.owner} (pid {self.pid} on {self.host}"
                f"{session}) since {when}, running '{self.command}'")


class JournalEntry(NamedTuple):
    """An operation started on a resource. `status` is pending until it is committed
    (done) or fails; a pending entry whose process is gone was interrupted."""

    id: int
    address: str
    action: str
    pid: int
    host: str
    started_at: float
    status: str
    detail: str = ""


class OutboxEvent(NamedTuple):
    """An event as the outbox keeps it: its id (unique, the CloudEvents `id`), type,
    subject (an address), time, and the whole CloudEvents envelope as JSON text."""

    event_id: str
    type: str
    subject: str
    at: float
    envelope: str

"""What a state is: the resources mlinfra created, as it last saw them.

Kept apart from how it is stored (`sqlite.py`) and how it is locked (`lock.py`),
as Terraform keeps `states`, `statefile` and `statemgr` apart.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal values give equal text."""
    return _CANONICAL.encode(value)


def digest(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


@dataclass
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
    outputs: dict[str, Any] = field(default_factory=dict)
    provider_id: str = ""
    dependencies: list[str] = field(default_factory=list)
    updated_at: float = 0.0


@dataclass(frozen=True)
class StateVersion:
    """Identifies a state. `lineage` never changes; `serial` grows on every change."""

    lineage: str
    serial: int


@dataclass(frozen=True)
class LockInfo:
    """Who holds a stack's lock."""

    id: str
    owner: str
    host: str
    pid: int
    command: str
    created_at: float

    def describe(self) -> str:
        import time

        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.created_at))
        return (f"ID {self.id}, held by {self.owner} (pid {self.pid} on {self.host}) "
                f"since {when}, running '{self.command}'")


@dataclass(frozen=True)
class JournalEntry:
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

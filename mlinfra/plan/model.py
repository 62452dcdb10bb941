"""What a plan is: changes to resources, each with an action, before/after and a reason.

A `Plan` is plain data. Apply follows `action` and `after`; `reason` is for people
only and never decides what apply does.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, NamedTuple

FORMAT_VERSION = "1.0"
SENSITIVE = "(sensitive)"


class Action(enum.Enum):
    """What apply does to one resource. The value is the display symbol."""

    CREATE = "+"
    UPDATE = "~"
    REPLACE = "-/+"
    DELETE = "-"
    NOOP = " "

    @property
    def verb(self) -> str:
        return {"CREATE": "created", "UPDATE": "updated in-place", "REPLACE": "replaced",
                "DELETE": "destroyed", "NOOP": "left unchanged"}[self.name]


class FieldChange(NamedTuple):
    """One attribute that differs. `path` is dotted (`request.timeout_ms`)."""

    path: str
    before: Any
    after: Any
    forces_replacement: bool = False
    sensitive: bool = False


@dataclass(slots=True, init=False)
class Desired:
    """A resource as the configuration wants it.

    `attributes` are its fields plus the facts a provider derives from the world
    (a data file's sha256, a requirements file's content hash), secrets masked;
    `inputs_hash` is their digest.
    """

    address: str
    kind: str
    name: str
    attributes: dict[str, Any]
    inputs_hash: str
    dependencies: list[str]
    replace_fields: frozenset[str]

    def __init__(self, address: str, kind: str, name: str, attributes: dict[str, Any],
                 inputs_hash: str, dependencies: list[str] | None = None,
                 replace_fields: frozenset[str] = frozenset()) -> None:
        self.address, self.kind, self.name = address, kind, name
        self.attributes, self.inputs_hash = attributes, inputs_hash
        self.dependencies = dependencies if dependencies is not None else []
        self.replace_fields = replace_fields


class Observed(NamedTuple):
    """What refresh found of a resource the state holds.

    `exists` False: gone outside mlinfra. `problem`: present but not as applied
    (a broken venv); it is repaired by replacing the resource, or in place when
    `update` is set (an endpoint serving a version its alias no longer names).
    """

    exists: bool = True
    problem: str = ""
    update: bool = False


@dataclass(slots=True, init=False)
class Change:
    """One resource's planned change. Invariant: `before` is None for CREATE,
    `after` is None for DELETE."""

    address: str
    kind: str
    name: str
    action: Action
    reason: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    fields: list[FieldChange]
    dependencies: list[str]
    inputs_hash: str

    def __init__(self, address: str, kind: str, name: str, action: Action, reason: str,
                 before: dict[str, Any] | None = None, after: dict[str, Any] | None = None,
                 fields: list[FieldChange] | None = None,
                 dependencies: list[str] | None = None, inputs_hash: str = "") -> None:
        self.address, self.kind, self.name = address, kind, name
        self.action, self.reason = action, reason
        self.before, self.after = before, after
        self.fields = fields if fields is not None else []
        self.dependencies = dependencies if dependencies is not None else []
        self.inputs_hash = inputs_hash

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__slots__}
        data["action"] = self.action.name.lower()
        data["fields"] = [f._asdict() for f in data["fields"]]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Change:
        data = dict(data)
        data["action"] = Action[data["action"].upper()]
        data["fields"] = [FieldChange(**f) for f in data.get("fields", [])]
        return cls(**data)


class Drift(NamedTuple):
    """A resource changed outside mlinfra, found by refresh."""

    address: str
    message: str


def tally(changes: list[Change]) -> dict[str, int]:
    """How many changes add, change, replace and destroy (no-ops are not counted)."""
    found = {"add": 0, "change": 0, "replace": 0, "destroy": 0}
    key = {Action.CREATE: "add", Action.UPDATE: "change", Action.REPLACE: "replace",
           Action.DELETE: "destroy"}
    for change in changes:
        if change.action in key:
            found[key[change.action]] += 1
    return found


@dataclass(slots=True, init=False)
class Plan:
    """Changes in dependency order (deletions in reverse order), the drift refresh
    found, and what the plan was made against: the state's version (lineage "" for a
    stack with no state yet), the `--target`s, the `-replace`s, and `resolved`, what
    each model reference of the configuration (`fraud@champion`, `fraud`) named at that
    time."""

    changes: list[Change]
    drift: list[Drift]
    lineage: str
    serial: int
    stack: str
    destroy: bool
    targets: list[str]
    resolved: dict[str, int | None]
    replace: list[str]

    def __init__(self, changes: list[Change], drift: list[Drift] | None = None,
                 lineage: str = "", serial: int = 0, stack: str = "", destroy: bool = False,
                 targets: list[str] | None = None,
                 resolved: dict[str, int | None] | None = None,
                 replace: list[str] | None = None) -> None:
        self.changes = changes
        self.drift = drift if drift is not None else []
        self.lineage, self.serial = lineage, serial
        self.stack, self.destroy = stack, destroy
        self.targets = targets if targets is not None else []
        self.resolved = resolved if resolved is not None else {}
        self.replace = replace if replace is not None else []

    @property
    def actionable(self) -> list[Change]:
        return [c for c in self.changes if c.action is not Action.NOOP]

    def has_changes(self) -> bool:
        return bool(self.actionable)

    def counts(self) -> dict[str, int]:
        return tally(self.actionable)

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "stack": self.stack,
            "lineage": self.lineage,
            "serial": self.serial,
            "destroy": self.destroy,
            "targets": self.targets,
            "replace": self.replace,
            "resolved": self.resolved,
            "summary": self.counts(),
            # NOTE: no-ops are kept, as in Terraform's saved plans: apply orders its
            # changes through the unchanged resources between them.
            "changes": [c.to_json() for c in self.changes],
            "drift": [d._asdict() for d in self.drift],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Plan:
        return cls(changes=[Change.from_json(c) for c in data["changes"]],
                   drift=[Drift(**d) for d in data.get("drift", [])],
                   lineage=data["lineage"], serial=data["serial"], stack=data["stack"],
                   destroy=bool(data["destroy"]), targets=list(data["targets"]),
                   resolved=dict(data["resolved"]), replace=list(data.get("replace") or []))

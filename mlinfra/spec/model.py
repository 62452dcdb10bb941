"""What a loaded project is: its resources, its stack and its variables."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

# Interpolations: ${var.X}, ${secret.X}, ${inputs.X}, ${steps.S.outputs.O}, ...
INTERPOLATION = re.compile(r"\$\{\s*([A-Za-z_][A-Za-z0-9_]*)((?:\.[A-Za-z0-9_-]+)*)\s*\}")
# Another job's or step's output used as an input: ${jobs.NAME.outputs.OUT}.
OUTPUT_REF = re.compile(
    r"^\$\{\s*(jobs|steps)\.([a-z][a-z0-9-]*)\.outputs\.([A-Za-z0-9_-]+)\s*\}\Z")
DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
VERSIONED_REF = re.compile(
    r"^(?P<name>[a-z][a-z0-9-]{0,62})(?::(?P<version>[1-9][0-9]*)|@(?P<alias>[a-z][a-z0-9_-]{0,62}))?\Z")


def duration_s(value: Any) -> float | None:
    """Seconds in a duration as the YAML and the command line write it: a number of
    seconds, or '500ms', '90s', '30m', '2h', '1d'; None when it is not one."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = DURATION.fullmatch(str(value).strip()) if value is not None else None
    if match is None:
        return None
    return float(match.group(1)) * _UNIT_S[match.group(2) or "s"]


def duration_in(value: Any, unit_s: float, default: float) -> float:
    """A duration field in the unit its name gives (`_ms`: 0.001, `_s`: 1): a number in
    that unit, or a string with its own unit ('2s' in a `_ms` field is 2000)."""
    if value is None:
        return default
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    seconds = duration_s(value)
    return default if seconds is None else seconds / unit_s


class Ref(NamedTuple):
    """A reference to a versioned resource: `fraud`, `fraud:3` or `fraud@champion`.

    At most one of `version` and `alias` is set; neither means the latest version.
    """

    name: str
    version: int | None = None
    alias: str | None = None

    @staticmethod
    def parse(text: str) -> Ref | None:
        match = VERSIONED_REF.match(text)
        if match is None:
            return None
        version = match["version"]
        alias = match["alias"]
        if alias == "latest":
            alias = None
        return Ref(match["name"], int(version) if version else None, alias)

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}:{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


@dataclass(slots=True, init=False)
class Resource:
    """One document of the project: a kind, a unique name within it, and its fields.

    `spec` holds the document after variables are filled in; `${secret.X}` and a
    sensitive `${var.X}` stay as written (see spec.sensitive).
    """

    kind: str
    name: str
    spec: dict[str, Any]
    file: str
    doc: int
    address: str

    def __init__(self, kind: str, name: str, spec: dict[str, Any], file: str,
                 doc: int) -> None:
        self.kind, self.name, self.spec, self.file, self.doc = kind, name, spec, file, doc
        self.address = f"{kind.lower()}.{name}"  # how plans and state name it

    @property
    def label(self) -> str:
        """How diagnostics name it: `job/train-fraud`."""
        name = self.name if self.name.isprintable() else repr(self.name)
        return f"{self.kind.lower()}/{name}"


@dataclass(slots=True, init=False)
class Stack:
    """A binding of the project to a provider, a state location and variables.
    `file` None: the implicit local stack."""

    name: str
    provider: str
    state: str | None
    variables: dict[str, Any]
    settings: dict[str, Any]
    file: str | None
    artifacts: str | None
    warnings: list[Any]

    def __init__(self, name: str, provider: str = "local", state: str | None = None,
                 variables: dict[str, Any] | None = None,
                 settings: dict[str, Any] | None = None, file: str | None = None,
                 artifacts: str | None = None) -> None:
        self.name, self.provider, self.state, self.file = name, provider, state, file
        self.artifacts = artifacts
        self.warnings: list[Any] = []  # Diagnostics that do not stop a load
        self.variables = variables if variables is not None else {}
        self.settings = settings if settings is not None else {}


@dataclass(slots=True, init=False)
class Config:
    """A loaded and valid project: every resource, by kind then name.

    `sensitive` holds the values of the variables declared `sensitive: true`; specs keep
    `${var.NAME}` for them, as for secrets, and only a process that needs one gets it.
    """

    root: Path
    name: str
    stack: Stack
    resources: dict[str, dict[str, Resource]]
    files: list[str]
    sensitive: dict[str, Any]

    def __init__(self, root: Path, name: str, stack: Stack,
                 resources: dict[str, dict[str, Resource]], files: list[str],
                 sensitive: dict[str, Any] | None = None) -> None:
        self.root, self.name, self.stack = root, name, stack
        self.resources, self.files = resources, files
        self.sensitive = sensitive if sensitive is not None else {}

    def all(self) -> list[Resource]:
        return [r for by_name in self.resources.values() for r in by_name.values()]

    def of(self, kind: str) -> dict[str, Resource]:
        return self.resources.get(kind, {})

    def get(self, kind: str, name: str) -> Resource | None:
        return self.resources.get(kind, {}).get(name)

    @property
    def workspace(self) -> str:
        """The workspace's name: the one declared, or the project's (implicit)."""
        return next(iter(self.of("Workspace")), self.name)

    def counts(self) -> dict[str, int]:
        return {kind: len(by_name) for kind, by_name in self.resources.items() if by_name}

"""One error hierarchy for mlinfra.

Every error a user can cause is an `MlinfraError`: it knows its exit code, a message
written for a person, and structured fields for tools (`fields`: the file, the address,
the lock's holder), as click's and DVC's errors do. An error raised because of another
keeps it as its cause (`raise X(...) from err`): the CLI prints the message and exits
with the code, and with MLINFRA_DEBUG=1 also the whole chain. Anything else that
escapes is a bug in mlinfra and is reported as one.
"""

from __future__ import annotations

from typing import Any, NamedTuple


class MlinfraError(Exception):
    """A failure explained to the user. `exit_code` is what the process returns;
    `fields` what it is about, by name (None values are left out)."""

    exit_code = 1

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}

    def causes(self) -> list[BaseException]:
        """The errors this one was raised from, nearest first."""
        found: list[BaseException] = []
        current = self.__cause__ or (None if self.__suppress_context__ else self.__context__)
        while current is not None and current not in found:
            found.append(current)
            current = current.__cause__ or (
                None if current.__suppress_context__ else current.__context__)
        return found


class ProjectNotFound(MlinfraError):
    """No `mlinfra.yaml` in the folder given, nor in any of its parents."""


class Diagnostic(NamedTuple):
    """One problem in the configuration, located in a file.

    Sorting orders diagnostics by file, line and column, which is how they are shown.
    `line` and `column` are 1-based; 0 means "the file as a whole".
    """

    file: str
    line: int
    column: int
    message: str
    address: str = ""  # "kind/name" of the resource, when known
    field: str = ""  # dotted path inside the resource, e.g. "deployments[0].model"

    def render(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        parts = [where]
        if self.address:
            parts.append(self.address)
        if self.field:
            parts.append(self.field)
        parts.append(self.message)
        return ": ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "address": self.address,
            "field": self.field,
            "message": self.message,
        }


class ConfigurationError(MlinfraError):
    """The project's YAML is invalid; carries every problem found, not only the first."""

    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = sorted(diagnostics)
        super().__init__(self.summary())

    def summary(self) -> str:
        files = len({d.file for d in self.diagnostics})
        n = len(self.diagnostics)
        return f"{n} error{'s' if n != 1 else ''} in {files} file{'s' if files != 1 else ''}"

    def render(self) -> str:
        lines = [d.render() for d in self.diagnostics]
        lines.append(self.summary())
        return "\n".join(lines)

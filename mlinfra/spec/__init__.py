"""The YAML language: reading a project's files, its stack and variables, and
checking them against the kinds' JSON Schemas and against each other.

`load(folder, stack)` returns a valid `Config` or raises `ConfigurationError` with
every problem found, each located by file, line and column.
"""

from mlinfra.spec.model import Config, Ref, Resource, Stack
from mlinfra.spec.project import find_root, load

__all__ = ["Config", "Ref", "Resource", "Stack", "find_root", "load"]

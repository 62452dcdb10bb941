"""Great Expectations' expectations as validate knows them: each name with the
arguments it accepts and those it requires, read from GX's own registry.

Importing great_expectations takes seconds, longer than a whole plan, so the table is
built once per installed GX version and kept as JSON in the user's cache; GX is
imported only when that file is missing or unreadable.
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib.machinery import PathFinder
from pathlib import Path
from typing import Any, NamedTuple

from mlinfra import cache_dir

_PACKAGE = "great_expectations"
_FORMAT = 1  # of the cached file: a new layout takes a new name


class Expectation(NamedTuple):
    accepted: frozenset[str]
    required: tuple[str, ...]


def installed_version() -> str | None:
    """The installed GX version, from its dist-info folder's name, without importing
    it; another identity of the installation when there is no dist-info; None when GX
    is not installed."""
    # NOTE: PathFinder, not importlib.util.find_spec: that module costs more to import
    # than a cached plan takes, and GX is an ordinary package on sys.path.
    spec = PathFinder.find_spec(_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    site = Path(spec.origin).parent.parent
    prefix = f"{_PACKAGE}-"
    try:
        versions = sorted(entry.name[len(prefix):-len(".dist-info")]
                          for entry in os.scandir(site)
                          if entry.name.startswith(prefix) and entry.name.endswith(".dist-info"))
        if versions:
            return versions[-1]
        return f"mtime-{os.stat(spec.origin).st_mtime_ns}"
    except OSError:
        return None


def _from_registry() -> dict[str, dict[str, list[str]]]:
    """name -> {"accepted": [...], "required": [...]}, from GX's registry (slow)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # offline: no usage statistics
    import great_expectations.expectations  # noqa: F401  (registers the core expectations)
    from great_expectations.expectations.registry import (
        get_expectation_impl,
        list_registered_expectation_implementations,
    )

    table = {}
    for name in list_registered_expectation_implementations():
        # GX 1.x expectations are pydantic (v1 API) models: their fields are the arguments.
        fields: dict[str, Any] = dict(getattr(get_expectation_impl(name), "__fields__", {}))
        accepted = set(fields) | {str(getattr(f, "alias", n) or n) for n, f in fields.items()}
        required = [n for n, f in fields.items() if getattr(f, "required", False) is True]
        table[name] = {"accepted": sorted(accepted), "required": required}
    return table


@cache
def registry(version: str) -> dict[str, Expectation] | None:
    """The table of the installed GX `version`: from the cache, else built and cached.
    None when GX cannot be imported (apply reports that when it runs the checks)."""
    path = cache_dir() / f"gx-expectations-{_FORMAT}-{version}.json"
    try:
        table = _parse(json.loads(path.read_text()), version)
    except (OSError, ValueError):
        table = None
    if table is not None:
        return table
    try:
        raw = {"version": version, "expectations": _from_registry()}
    except Exception:  # a broken GX installation: validate cannot judge, apply will
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(raw, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs time
    return _parse(raw, version)


def _parse(raw: Any, version: str) -> dict[str, Expectation] | None:
    """The table in a cached file, or None when the file is not one for `version`."""
    try:
        if raw["version"] != version:
            return None
        return {str(name): Expectation(frozenset(entry["accepted"]), tuple(entry["required"]))
                for name, entry in raw["expectations"].items()}
    except (KeyError, TypeError, AttributeError):
        return None


def known() -> dict[str, Expectation] | None:
    """The installed GX's expectations, or None when GX is not installed."""
    version = installed_version()
    return registry(version) if version is not None else None

"""Every package mlinfra's code imports is one pyproject.toml installs: a required
dependency, or (for imports made only where an optional extra is in use) one of the
s3/gcs/azure extras or what they pull in. A package missing from the list passes on a
developer's machine that happens to have it and breaks a new user's first apply."""

from __future__ import annotations

import ast
import contextlib
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, requires
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mlinfra"
OWN = {"mlinfra", "mlinfra_run", "__future__"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[ ;(]", requirement.strip(), maxsplit=1)[0].lower().replace(
        "_", "-")


def _imported() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in OWN:
                    found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {_name(d) for d in project["dependencies"]}
    for extra, reqs in project["optional-dependencies"].items():
        if extra == "dev":
            continue
        for req in reqs:
            names.add(_name(req))
            with contextlib.suppress(PackageNotFoundError):
                names |= {_name(r) for r in requires(_name(req)) or [] if "extra ==" not in r}
    for dist in list(names):       # what a required dependency installs, one level down
        with contextlib.suppress(PackageNotFoundError):
            names |= {_name(r) for r in requires(dist) or [] if "extra ==" not in r}
    return names


def test_every_imported_package_is_declared() -> None:
    dists = packages_distributions()
    declared = _declared()
    missing = {}
    for module, files in _imported().items():
        candidates = {d.lower().replace("_", "-") for d in dists.get(module, [])} or {
            module.lower().replace("_", "-")}
        if not candidates & declared:
            missing[module] = sorted(files)[:3]
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"


def test_no_dependency_is_named_twice() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = [_name(d) for d in project["dependencies"]]
    assert sorted({n for n in names if names.count(n) > 1}) == []

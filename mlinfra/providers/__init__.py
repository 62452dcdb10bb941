"""Providers: where things run. `local` is embedded and the default; `docker` and
`kubernetes` drive Pulumi programs through the Automation API.

Every provider, mlinfra's own included, is found through the `mlinfra.providers`
entry-point group (a name and a `module:Class`), so a package of its own can add one
without editing mlinfra.
"""

from __future__ import annotations

from importlib.metadata import entry_points

from mlinfra.errors import MlinfraError
from mlinfra.providers.base import Provider

GROUP = "mlinfra.providers"


def provider_names() -> list[str]:
    return sorted({ep.name for ep in entry_points(group=GROUP)})


def get_provider(name: str) -> Provider:
    found = [ep for ep in entry_points(group=GROUP) if ep.name == name]
    if not found:
        names = ", ".join(provider_names()) or "none (mlinfra is not installed: pip install -e .)"
        raise MlinfraError(f"provider '{name}' is not available; installed providers: {names}")
    cls = found[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise MlinfraError(f"provider '{name}' ({found[0].value}) is not an mlinfra Provider")
    return cls()

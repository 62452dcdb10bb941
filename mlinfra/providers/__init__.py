"""Providers: where things run. `local` is embedded and the default; `docker` and
`kubernetes` drive Pulumi programs through the Automation API.

Providers are found through the `mlinfra.providers` entry-point group
(`mlinfra.spec.providers`), so a package of its own can add one without editing mlinfra.
"""

from __future__ import annotations

from importlib import import_module

from mlinfra.errors import MlinfraError
from mlinfra.providers.base import Provider
from mlinfra.spec import providers as names


def get_provider(name: str) -> Provider:
    value = names.BUILT_IN.get(name) or names.entry_points().get(name)
    if value is None:
        raise MlinfraError(f"provider '{name}' is not available; installed providers: "
                           f"{', '.join(names.installed_providers())}")
    module, _, attr = value.partition(":")
    cls = getattr(import_module(module), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise MlinfraError(f"provider '{name}' ({value}) is not an mlinfra Provider")
    return cls()

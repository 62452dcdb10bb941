"""Providers: where things run. `local` is embedded and the default; `docker` and
`kubernetes` drive Pulumi programs through the Automation API.

Providers are found through the `mlinfra.providers` entry-point group (a name and a
`module:Class`), so a package of its own can add one without editing mlinfra. mlinfra's
own three are declared there too (pyproject.toml), and also named in `BUILT_IN`: reading
the entry points costs a fifth of a second (importlib.metadata scans every installed
distribution), more than a small plan takes, so it is done only for a name that is not
mlinfra's own. A test keeps the two the same.
"""

from __future__ import annotations

from importlib import import_module

from mlinfra.errors import MlinfraError
from mlinfra.providers.base import Provider

GROUP = "mlinfra.providers"
BUILT_IN = {"local": "mlinfra.providers.local:LocalProvider",
            "docker": "mlinfra.providers.pulumi_docker:DockerProvider",
            "kubernetes": "mlinfra.providers.pulumi_kubernetes:KubernetesProvider"}


def _entry_points() -> dict[str, str]:
    from importlib.metadata import entry_points

    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def provider_names() -> list[str]:
    return sorted(set(BUILT_IN) | set(_entry_points()))


def get_provider(name: str) -> Provider:
    value = BUILT_IN.get(name) or _entry_points().get(name)
    if value is None:
        raise MlinfraError(f"provider '{name}' is not available; installed providers: "
                           f"{', '.join(provider_names())}")
    module, _, attr = value.partition(":")
    cls = getattr(import_module(module), attr, None)
    if not (isinstance(cls, type) and issubclass(cls, Provider)):
        raise MlinfraError(f"provider '{name}' ({value}) is not an mlinfra Provider")
    return cls()

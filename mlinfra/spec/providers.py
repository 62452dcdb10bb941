"""Which providers a stack may name: mlinfra's own three and those other packages
declare in the `mlinfra.providers` entry-point group (a name and a `module:Class`).

mlinfra's own are declared there too (pyproject.toml), and also named in `BUILT_IN`:
reading the entry points costs a fifth of a second (importlib.metadata scans every
installed distribution), more than a small plan takes, so it is done only for a name
that is not mlinfra's own. A test keeps the two the same.
"""

from __future__ import annotations

GROUP = "mlinfra.providers"
BUILT_IN = {"local": "mlinfra.providers.local:LocalProvider",
            "docker": "mlinfra.providers.pulumi_docker:DockerProvider",
            "kubernetes": "mlinfra.providers.pulumi_kubernetes:KubernetesProvider"}


def entry_points() -> dict[str, str]:
    """Every provider the installed packages declare: name -> `module:Class`."""
    from importlib.metadata import entry_points as found

    return {ep.name: ep.value for ep in found(group=GROUP)}


def installed_providers() -> list[str]:
    return sorted(set(BUILT_IN) | set(entry_points()))

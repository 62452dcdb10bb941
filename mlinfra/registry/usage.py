"""Which endpoints serve a model version: a version in use is not archived."""

from __future__ import annotations

from mlinfra.registry.models import ModelRegistry, ModelVersion, RegistryError
from mlinfra.spec.model import Config, Ref


def serving_endpoints(config: Config, registry: ModelRegistry,
                      version: ModelVersion) -> list[str]:
    """Deployments whose reference (alias, pin or latest) resolves to `version`."""
    users = []
    for endpoint in config.of("Endpoint").values():
        for deployment in endpoint.spec.get("deployments") or []:
            ref = Ref.parse(str(deployment.get("model", "")))
            if ref is None or ref.name != version.name:
                continue
            try:
                served = registry.resolve(ref.name, ref.version, ref.alias)
            except RegistryError:
                continue
            if served.version == version.version:
                users.append(f"endpoint {endpoint.name} (deployment {deployment.get('name')})")
    return users

"""Providers: how resources are made real. `local` is embedded and the default;
`docker` and `kubernetes` drive Pulumi programs through the Automation API."""

from mlinfra.errors import MlinfraError
from mlinfra.providers.base import Provider


def get_provider(name: str) -> Provider:
    if name == "local":
        from mlinfra.providers.local import LocalProvider

        return LocalProvider()
    if name == "docker":
        from mlinfra.providers.pulumi_docker import DockerProvider

        return DockerProvider()
    if name == "kubernetes":
        from mlinfra.providers.pulumi_kubernetes import KubernetesProvider

        return KubernetesProvider()
    raise MlinfraError(f"provider '{name}' is not available; use local, docker or kubernetes")

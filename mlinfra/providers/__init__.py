"""Providers: how resources are made real. `local` is embedded and the default;
`docker` and `kubernetes` drive Pulumi programs through the Automation API."""

from mlinfra.errors import MlinfraError
from mlinfra.providers.base import Provider


def get_provider(name: str) -> Provider:
    if name == "local":
        from mlinfra.providers.local import LocalProvider

        return LocalProvider()
    raise MlinfraError(f"provider '{name}' is not available yet; use a stack with "
                       "provider: local")

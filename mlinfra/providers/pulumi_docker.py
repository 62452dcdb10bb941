"""The docker provider: the stack's images, network and endpoint containers applied by
pulumi-docker on the Docker engine of `docker.host` (default: the local one)."""

from __future__ import annotations

from pathlib import Path

from mlinfra.providers.manifests import RenderedObject
from mlinfra.providers.pulumi_program import Program, docker_program
from mlinfra.providers.pulumi_stack import PulumiProvider
from mlinfra.spec.model import Config


class DockerProvider(PulumiProvider):
    name = "docker"

    def program(self, objects: list[RenderedObject], contexts: dict[str, Path],
                config: Config) -> Program:
        settings = config.stack.settings.get("docker") or {}
        return docker_program(objects, contexts, push=bool(settings.get("registry")))

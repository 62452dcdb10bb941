"""The docker provider: the stack's images, network and endpoint containers applied by
pulumi-docker on the Docker engine of `docker.host` (default: the local one), and each
job run as a container run to completion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlinfra.providers.base import Context
from mlinfra.providers.manifests import RenderedObject
from mlinfra.providers.manifests.docker import run_container
from mlinfra.providers.pulumi_program import Program, docker_program
from mlinfra.providers.pulumi_stack import PulumiProvider
from mlinfra.runs.containers import ContainerRun, Finished
from mlinfra.spec.model import Config, Resource

TIMED_OUT = 124  # what `timeout` exits with when it stopped the command


class DockerProvider(PulumiProvider):
    name = "docker"

    def program(self, objects: list[RenderedObject], contexts: dict[str, Path],
                config: Config, held: dict[str, str] | None = None) -> Program:
        settings = config.stack.settings.get("docker") or {}
        return docker_program(objects, contexts, push=bool(settings.get("registry")),
                              held=held)

    def scoring_objects(self, ctx: Context, score: Resource, job_id: str, folder: Path,
                        shards: int, settings: dict[str, Any], image: str
                        ) -> list[RenderedObject]:
        from mlinfra.providers.manifests.docker import scoring_container

        endpoint = ctx.config.get("BatchEndpoint", str(score.spec["endpoint"]))
        compute = endpoint.spec.get("compute") if endpoint else None
        found = scoring_container(ctx.config, score.name, job_id, str(folder), image,
                                  settings, compute)
        return [RenderedObject(found.key, found.owner, found.kind, found.body,
                               depends_on=("image-scoring",))]

    def run_objects(self, ctx: Context, job: Resource, run: ContainerRun, image: str
                    ) -> list[RenderedObject]:
        return [run_container(ctx.config, run, image, job.spec.get("compute"))]

    def run_ended(self, run: ContainerRun, objects: list[RenderedObject],
                  outputs: dict[str, Any], error: str) -> Finished:
        container = objects[0]
        where = f"docker container {container.body['name']} ({container.body['image']})"
        if error:
            return Finished(None, "", f"the container could not run: {error}", where=where)
        ended = outputs[container.key]
        code = int(ended["exit_code"])
        return Finished(code, str(ended.get("logs") or ""),
                        timed_out=bool(run.timeout_s) and code == TIMED_OUT, where=where)

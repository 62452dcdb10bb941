"""One entry for both platforms: resolve a stack's inputs, render its objects, write
them to a folder."""

from __future__ import annotations

from pathlib import Path

from mlinfra.errors import MlinfraError
from mlinfra.providers.base import Context
from mlinfra.providers.manifests import RenderedObject
from mlinfra.providers.manifests.inputs import StackInputs, resolve
from mlinfra.spec.model import Config

PLATFORMS = ("docker", "kubernetes")


def platform(config: Config) -> str:
    name = config.stack.provider
    if name not in PLATFORMS:
        raise MlinfraError(f"stack '{config.stack.name}' uses provider '{name}'; render "
                           f"makes objects for the {' and '.join(PLATFORMS)} providers: "
                           "pass -s docker or -s kubernetes")
    return name


def stack_inputs(ctx: Context) -> StackInputs:
    from mlinfra.handler import datastore_path
    from mlinfra.runs.jobs import artifact_store

    return resolve(ctx.config, ctx.store, artifact_store(ctx),
                   lambda spec: datastore_path(ctx, spec))


def render_stack(config: Config, inputs: StackInputs) -> list[RenderedObject]:
    if platform(config) == "docker":
        from mlinfra.providers.manifests import docker

        return docker.render(config, inputs)
    from mlinfra.providers.manifests import kubernetes

    return kubernetes.render(config, inputs)


def write_stack(config: Config, objects: list[RenderedObject], out: Path,
                inputs: StackInputs | None = None) -> list[Path]:
    from mlinfra.providers.manifests import files

    if platform(config) == "docker":
        return files.write_docker(objects, out)
    local = {d.name: inputs.datastores[d.name] for d in config.of("Datastore").values()
             if inputs is not None and d.name in inputs.datastores
             and d.spec.get("type", "local") == "local"}
    return files.write_kubernetes(objects, out, local)

"""The config file a server instance serves, built from the Endpoint resource.

Model references are resolved here, at apply time, after the promotions that move
their aliases. The file's fields are those `mlinfra/serving/table.py` reads, plus
`generation` (unique across crashes: see `publish.next_generation`) and `status_dir`.
"""

from __future__ import annotations

from typing import Any

from mlinfra.graph import default_datastore
from mlinfra.handler import datastore_path
from mlinfra.monitoring.captures import object_captures, retention
from mlinfra.providers.base import Context, ProviderError
from mlinfra.providers.local.endpoint.folders import EndpointFolder, InstanceFolder
from mlinfra.registry.artifacts import ArtifactCorrupted
from mlinfra.registry.models import ModelRegistry, ModelVersion, RegistryError
from mlinfra.runs.jobs import artifact_store
from mlinfra.spec.model import Config, Ref, Resource, duration_in


def governed(ctx: Context, model: str, alias: str) -> bool:
    """A Promotion moves that alias (so it may point nowhere until apply runs it)."""
    return any(p.spec.get("model") == model and p.spec.get("alias", "champion") == alias
               for p in ctx.config.of("Promotion").values())


def resolve(ctx: Context, res: Resource, deployment: dict[str, Any]) -> ModelVersion:
    ref = Ref.parse(str(deployment["model"]))
    assert ref is not None  # validated
    try:
        return ModelRegistry(ctx.writer).resolve(ref.name, ref.version, ref.alias)
    except RegistryError as err:
        raise ProviderError(res.address, f"deployment {deployment['name']}: {err.message}"
                            ) from err


def _stored(ctx: Context, res: Resource, deployment: dict[str, Any],
            version: ModelVersion) -> str:
    """The path of `version`'s file in the artifact store, checked against its hash;
    when it is gone, what the user can do about it."""
    store = artifact_store(ctx)
    if store.exists(version.sha256):
        try:
            return str(store.path(version.sha256))
        except ArtifactCorrupted as err:
            raise ProviderError(res.address, f"deployment {deployment['name']}: "
                                f"{version.ref}: {err.message}") from err
    registry = ModelRegistry(ctx.writer)
    kept = [str(v.version) for v in registry.versions(version.name)
            if not v.archived and store.exists(v.sha256)]
    others = (f"versions of {version.name} with their file: {', '.join(kept)}" if kept
              else f"no version of {version.name} has its file: apply again to train and "
              "register one")
    ref = Ref.parse(str(deployment["model"]))
    assert ref is not None  # validated
    if ref.alias is not None:
        also = (f"; its Promotion moves it to the next version of {ref.name} that passes "
                "the gates" if governed(ctx, ref.name, ref.alias) else "")
        what = (f"{ref} names it: mlinfra models alias {ref} VERSION points it at a version "
                f"that has one ({others}){also}")
    else:
        what = (f"serve another version: set the deployment's model to one that has its "
                f"file, or to an alias ({others})")
    raise ProviderError(res.address, f"deployment {deployment['name']}: {version.ref}'s "
                        f"file is gone from the artifact store {store.root}; {what}")


def capture_environment(config: Config) -> dict[str, str]:
    """The variables a server needs to write its captures to the stack's object-storage
    `artifacts:` as this machine reaches it (its `storage:` credentials, resolved)."""
    from mlinfra.data.objects import environment_credentials, location_of

    stack = config.stack
    return environment_credentials(location_of(str(stack.artifacts),
                                               stack.settings.get("storage"),
                                               f"{stack.file}: artifacts"))


def retention_fields(text: Any) -> dict[str, Any]:
    """`collect.retention` as the server's config has it (validated by its schema)."""
    size, seconds = retention(text)
    out: dict[str, Any] = {}
    if size is not None:
        out["retention_bytes"] = size
    if seconds is not None:
        out["retention_s"] = seconds
    return out


def server_config(ctx: Context, res: Resource, folder: EndpointFolder,
                  instance: InstanceFolder, generation: int, port: int,
                  key_hashes: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(the config, the model version each deployment serves as `name:version`)."""
    deployments, served = {}, {}
    for deployment in res.spec["deployments"]:
        version = resolve(ctx, res, deployment)
        request = deployment.get("request") or {}
        deployments[deployment["name"]] = {
            "model": version.name, "version": version.version, "sha256": version.sha256,
            "path": _stored(ctx, res, deployment, version),
            "timeout_ms": duration_in(request.get("timeout_ms"), 0.001, 5000),
            "max_batch_size": request.get("max_batch_size", 32),
            "max_batch_delay_ms": duration_in(request.get("max_batch_delay_ms"), 0.001, 2)}
        served[deployment["name"]] = version.ref
    collect = dict(res.spec.get("collect") or {})
    if collect.get("sample"):
        store_name = collect.get("datastore") or default_datastore(ctx.config)
        datastore = ctx.config.get("Datastore", str(store_name)) if store_name else None
        base = datastore_path(ctx, datastore.spec) if datastore else folder.path
        collect["path"] = str(base / "captures" / res.name)
        remote = object_captures(ctx.config)
        if remote is not None:  # the stack's artifacts: on object storage
            collect["path"] = f"{remote}/{res.name}"
            storage = ctx.config.stack.settings.get("storage") or {}
            collect["storage"] = {k: str(storage[k]) for k in ("endpoint_url", "region")
                                  if storage.get(k)}
        collect.update(retention_fields(collect.pop("retention", None)))
    config = {"endpoint": res.name, "generation": generation, "port": port,
              "deployments": deployments, "traffic": res.spec.get("traffic") or {},
              "mirror": res.spec.get("mirror") or {}, "collect": collect,
              "key_hashes": key_hashes,
              "max_request_bytes": res.spec.get("max_request_bytes", 1 << 20),
              "status_dir": str(instance.status)}
    return config, served

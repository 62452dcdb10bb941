"""The config file a server instance serves, built from the Endpoint resource.

Model references are resolved here, at apply time, after the promotions that move
their aliases. The file's fields are those `mlinfra/serving/table.py` reads, plus
`generation` (unique across crashes: see `publish.next_generation`) and `status_dir`.
"""

from __future__ import annotations

from typing import Any

from mlinfra.graph import default_datastore
from mlinfra.providers.base import Context, ProviderError
from mlinfra.providers.local.endpoint.folders import EndpointFolder, InstanceFolder
from mlinfra.providers.local.infra import datastore_path
from mlinfra.providers.local.jobs import artifact_store
from mlinfra.registry.models import ModelRegistry, ModelVersion, RegistryError
from mlinfra.spec.model import Ref, Resource


def governed(ctx: Context, model: str, alias: str) -> bool:
    """A Promotion moves that alias (so it may point nowhere until apply runs it)."""
    return any(p.spec.get("model") == model and p.spec.get("alias", "champion") == alias
               for p in ctx.config.of("Promotion").values())


def resolve(ctx: Context, res: Resource, deployment: dict[str, Any]) -> ModelVersion:
    ref = Ref.parse(str(deployment["model"]))
    assert ref is not None  # validated
    try:
        return ModelRegistry(ctx.store).resolve(ref.name, ref.version, ref.alias)
    except RegistryError as err:
        raise ProviderError(res.address, f"deployment {deployment['name']}: {err.message}"
                            ) from None


def server_config(ctx: Context, res: Resource, folder: EndpointFolder,
                  instance: InstanceFolder, generation: int, port: int,
                  key_hashes: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """(the config, the model version each deployment serves as `name:version`)."""
    store = artifact_store(ctx)
    deployments, served = {}, {}
    for deployment in res.spec["deployments"]:
        version = resolve(ctx, res, deployment)
        request = deployment.get("request") or {}
        deployments[deployment["name"]] = {
            "model": version.name, "version": version.version, "sha256": version.sha256,
            "path": str(store.path(version.sha256)),
            "timeout_ms": request.get("timeout_ms", 5000),
            "max_batch_size": request.get("max_batch_size", 32),
            "max_batch_delay_ms": request.get("max_batch_delay_ms", 2)}
        served[deployment["name"]] = version.ref
    collect = dict(res.spec.get("collect") or {})
    if collect.get("sample"):
        store_name = collect.get("datastore") or default_datastore(ctx.config)
        datastore = ctx.config.get("Datastore", str(store_name)) if store_name else None
        base = datastore_path(ctx, datastore.spec) if datastore else folder.path
        collect["path"] = str(base / "captures" / res.name / "requests.jsonl")
    config = {"endpoint": res.name, "generation": generation, "port": port,
              "deployments": deployments, "traffic": res.spec.get("traffic") or {},
              "mirror": res.spec.get("mirror") or {}, "collect": collect,
              "key_hashes": key_hashes,
              "max_request_bytes": res.spec.get("max_request_bytes", 1 << 20),
              "status_dir": str(instance.status)}
    return config, served

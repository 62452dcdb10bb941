"""The Endpoint handler: an endpoint's server made to match its resource.

An endpoint keeps its identity (port and keys) for as long as it is in the state: a
server that is re-created (killed and repaired, replaced, restarted for another worker
count) listens on the same port and accepts the same keys. Any server of the endpoint
that the state does not name (one whose start was interrupted) is stopped before
another starts, and a create or update that fails stops what it launched.
"""

from __future__ import annotations

import json
from typing import Any

from mlinfra.plan.model import Change, Observed
from mlinfra.providers.base import Applied, BaseHandler, Context, ProviderError
from mlinfra.providers.local.endpoint import keys
from mlinfra.providers.local.endpoint.config import (
    capture_environment,
    governed,
    server_config,
)
from mlinfra.providers.local.endpoint.folders import EndpointFolder
from mlinfra.providers.local.endpoint.observe import (
    Serving,
    config_difference,
    difference,
    health,
    worker_statuses,
)
from mlinfra.providers.local.endpoint.publish import (
    next_generation,
    publish,
    read_config,
    wait_generation,
    write_config,
)
from mlinfra.providers.local.endpoint.supervisor import (
    ServerInstance,
    free_port,
    launch,
    log_size,
    new_instance_id,
    port_taken,
    processes,
    running,
    stop,
)
from mlinfra.registry.models import ModelRegistry, RegistryError
from mlinfra.runs.jobs import artifact_store
from mlinfra.spec.model import Ref, Resource
from mlinfra.state.model import ResourceState
from mlinfra.state.store import HOST, on_this_machine


def _elsewhere(state: ResourceState) -> bool:
    """Whether the endpoint's server was started on another machine."""
    return not on_this_machine(str(state.outputs.get("host") or HOST))


def _refuse_elsewhere(address: str, state: ResourceState) -> None:
    if _elsewhere(state):
        raise ProviderError(address, f"its server runs on {state.outputs['host']}, which "
                            "started it: apply the stack's endpoint changes there (a local "
                            "server runs on the machine that started it)")


class EndpointHandler(BaseHandler):
    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        """What the deployments will serve: each model's source (so a retrained model
        updates the endpoint), and aliases that point nowhere refused."""
        sources: dict[str, Any] = {}
        registry = ModelRegistry(ctx.writer)
        for deployment in res.spec["deployments"]:
            ref = Ref.parse(str(deployment["model"]))
            assert ref is not None
            model = ctx.config.get("Model", ref.name)
            if model is not None:
                sources[deployment["name"]] = ctx.facts(model)
            if ref.alias and registry.aliases(ref.name).get(ref.alias) is None and not (
                    governed(ctx, ref.name, ref.alias)):
                raise ProviderError(res.address, registry.alias_nowhere(
                    ref.name, ref.alias) + ", or add a Promotion")
            if model is None and registry.latest(ref.name) is None:
                raise ProviderError(res.address, f"model {ref.name} is neither declared "
                                    "nor registered")
        return {"model_sources": sources}

    def create(self, change: Change, ctx: Context) -> Applied:
        res = _resource(ctx, change.name)
        folder = EndpointFolder.of(ctx, res.name)
        # Re-created (drift, replace): the state still holds the previous server's port
        # and keys, which its clients use.
        previous = ctx.store.get(change.address)
        if previous is not None:
            _refuse_elsewhere(change.address, previous)
        kept = previous.outputs if previous is not None else {}
        if kept:
            stop(folder, ServerInstance.from_outputs(kept))
        self.abandoned(res.name, ctx)
        port = int(res.spec.get("port") or kept.get("port") or free_port())
        if port_taken(port):
            raise ProviderError(change.address, f"port {port} is taken by another program; "
                                "the endpoint keeps its port so that its clients keep "
                                "working: stop that program, or set port: to a free one")
        outputs = self._start(ctx, res, folder, port, kept, change.address)
        if outputs["auth"] == "key" and not outputs["key_hashes"]:
            ctx.log(f"{change.address}: it has no keys yet: mlinfra endpoints keys "
                    f"{res.name} makes them and shows them once")
        return Applied(outputs, provider_id=f"pid:{outputs['pid']}")

    def _start(self, ctx: Context, res: Resource, folder: EndpointFolder, port: int,
               kept: dict[str, Any], address: str) -> dict[str, Any]:
        """Launch a new server instance on `port` with the keys of `kept` and wait until
        it serves; stop it when it does not."""
        instance = folder.instance(new_instance_id())
        auth = res.spec.get("auth", "key")
        user_keys = dict(kept.get("key_hashes") or {}) if auth == "key" else {}
        generation = next_generation(folder, kept.get("generation"))
        config, served = server_config(ctx, res, folder, instance, generation, port,
                                       keys.accepted({"auth": auth, "key_hashes": user_keys},
                                                     folder))
        write_config(instance, config)
        workers = int(res.spec.get("workers", 2))
        log_from = log_size(folder)
        server = launch(folder, instance, port, workers, address,
                        capture_environment(ctx.config) if config["collect"].get("storage")
                        is not None else None)
        try:
            wait_generation(folder, server, generation, workers, address, log_from)
        except BaseException:
            stop(folder, server)
            instance.remove()
            raise
        return {**server.outputs(), "auth": auth, "workers": workers,
                "generation": generation, "served": served, "traffic": config["traffic"],
                "key_hashes": user_keys, "config": str(instance.config),
                "log": str(folder.log), "host": HOST}

    def update(self, change: Change, state: ResourceState, ctx: Context) -> Applied:
        _refuse_elsewhere(change.address, state)
        server = ServerInstance.from_outputs(state.outputs)
        if not server.id or not running(server):
            return self.create(change, ctx)
        res = _resource(ctx, change.name)
        folder = EndpointFolder.of(ctx, res.name)
        stray = stop(folder, keep=server.id)
        if stray:
            ctx.log(f"{change.address}: stopped a server that no state recorded "
                    f"(pids {', '.join(map(str, stray))})")
        workers = int(res.spec.get("workers", 2))
        if workers != int(state.outputs.get("workers", 0)):
            # A new instance on the same port takes over before the old one stops.
            outputs = self._start(ctx, res, folder, server.port, state.outputs,
                                  change.address)
            stop(folder, server)
            folder.instance(server.id).remove()
            return Applied(outputs, provider_id=f"pid:{outputs['pid']}")
        auth = res.spec.get("auth", "key")
        user_keys = dict(state.outputs.get("key_hashes") or {}) if auth == "key" else {}
        generation = next_generation(folder, state.outputs.get("generation"))
        config, served = server_config(
            ctx, res, folder, folder.instance(server.id), generation, server.port,
            keys.accepted({"auth": auth, "key_hashes": user_keys}, folder))
        publish(folder, server, config, workers, change.address)
        if auth == "key" and not user_keys and state.outputs.get("auth") == "none":
            ctx.log(f"{change.address}: it has no keys yet: mlinfra endpoints keys "
                    f"{res.name} makes them and shows them once")
        return Applied({**state.outputs, "auth": auth, "generation": generation,
                        "served": served, "key_hashes": user_keys,
                        "traffic": config["traffic"]}, provider_id=state.provider_id)

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        if _elsewhere(state):  # what this machine cannot see, the state says
            return Observed(True)
        server = ServerInstance.from_outputs(state.outputs)
        folder = EndpointFolder.of(ctx, state.name)
        ready, problem = health(folder, server)
        if not running(server):
            return Observed(False, problem)
        if not server.id:
            return Observed(True, f"its server (pid {server.pid}) was started by an earlier "
                            "mlinfra", update=True)
        if not ready:
            return Observed(True, problem)
        want = Serving.from_outputs(state.outputs, keys.accepted(state.outputs, folder))
        instance = folder.instance(server.id)
        served = (config_difference(read_config(instance), want)
                  or difference(worker_statuses(folder, instance), want))
        if served:
            return Observed(True, served, update=True)
        others = sorted(p.pid for other, group in processes(folder).items()
                        if other != server.id for p in group)
        if others:
            return Observed(True, f"another server of this endpoint runs, which no state "
                            f"records (pids {', '.join(map(str, others))})", update=True)
        live = state.outputs.get("traffic")
        declared = state.attributes.get("traffic")
        if live is not None and declared is not None and {
                k: v for k, v in live.items() if v} != {k: v for k, v in declared.items() if v}:
            return Observed(True, f"traffic is {json.dumps(live)}; the configuration says "
                            f"{json.dumps(declared)}", update=True)
        return _file_gone(state, ctx) or _alias_moved(state, ctx)

    def delete(self, state: ResourceState, ctx: Context) -> None:
        _refuse_elsewhere(state.address, state)
        folder = EndpointFolder.of(ctx, state.name)
        stop(folder, ServerInstance.from_outputs(state.outputs))
        self.abandoned(state.name, ctx)

    def abandoned(self, name: str, ctx: Context) -> None:
        """Every server of the endpoint, and their instances' files."""
        folder = EndpointFolder.of(ctx, name)
        stray = stop(folder)
        if stray:
            ctx.log(f"endpoint.{name}: stopped a server that no state recorded "
                    f"(pids {', '.join(map(str, stray))})")
        for instance in folder.instances():
            instance.remove()
        folder.forget_earlier_layout()


def _resource(ctx: Context, name: str) -> Resource:
    res = ctx.config.get("Endpoint", name)
    assert res is not None  # the plan has it
    return res


def _file_gone(state: ResourceState, ctx: Context) -> Observed | None:
    """A deployment serves a version whose file is gone from the artifact store: the
    server holds it in memory, but no server could load it again."""
    registry, store = ModelRegistry(ctx.writer), artifact_store(ctx)
    for deployment, ref in sorted((state.outputs.get("served") or {}).items()):
        name, _, version = str(ref).rpartition(":")
        found = registry.get(name, int(version)) if version.isdigit() else None
        if found is not None and not store.exists(found.sha256):
            return Observed(True, f"deployment {deployment} serves {ref}, whose file is gone "
                            "from the artifact store", update=True)
    return None


def _alias_moved(state: ResourceState, ctx: Context) -> Observed:
    """A deployment's reference now names another version (an alias moved)."""
    res = ctx.config.get("Endpoint", state.name)
    if res is None:
        return Observed()
    for deployment in res.spec["deployments"]:
        ref = Ref.parse(str(deployment["model"]))
        served = (state.outputs.get("served") or {}).get(deployment["name"])
        if ref is None or served is None:
            continue
        try:
            now = ModelRegistry(ctx.writer).resolve(ref.name, ref.version, ref.alias)
        except RegistryError:
            continue
        if now.ref != served:
            return Observed(True, f"deployment {deployment['name']} serves {served}; "
                            f"{ref} is now {now.ref}", update=True)
    return Observed()

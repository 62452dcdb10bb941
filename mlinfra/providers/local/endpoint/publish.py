"""A new config for a running server: written, then waited for until every worker
serves its generation.

A generation is unique across crashes: the next one is past every generation the state,
the configs on disk and the workers have seen, so a config written by an apply killed
before it recorded it never shadows a later one. A worker that cannot load a generation
keeps serving the previous one and reports the error for that generation only; the
previous config is then written back, so a worker that restarts later does not load
what failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from mlinfra.providers.base import Context, ProviderError
from mlinfra.providers.local.endpoint.folders import EndpointFolder, InstanceFolder
from mlinfra.providers.local.endpoint.observe import worker_statuses
from mlinfra.providers.local.endpoint.supervisor import ServerInstance, log_tail, running
from mlinfra.state.model import ResourceState
from mlinfra.state.store import Cursor, fault_point
from mlinfra.state.work import Event

READY_TIMEOUT_S = 60.0
RESTORE_TIMEOUT_S = 10.0


def read_config(instance: InstanceFolder) -> dict[str, Any] | None:
    try:
        return dict(json.loads(instance.config.read_text()))
    except (OSError, ValueError):
        return None


def write_config(instance: InstanceFolder, config: dict[str, Any]) -> None:
    instance.path.mkdir(parents=True, exist_ok=True)
    tmp = instance.config.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, instance.config)


def next_generation(folder: EndpointFolder, *known: Any) -> int:
    """One past every generation seen: `known` (the state's), every instance's config
    and every report its workers left."""
    seen = [int(k) for k in known if k]
    for instance in folder.instances():
        config = read_config(instance)
        if config is not None:
            seen.append(int(config.get("generation") or 0))
        for path in instance.status.glob("*.json"):
            with contextlib.suppress(OSError, ValueError, TypeError):
                status = json.loads(path.read_text())
                seen += [int(status.get(k) or 0) for k in ("generation", "error_generation")]
    return max(seen, default=0) + 1


def wait_generation(folder: EndpointFolder, server: ServerInstance, generation: int,
                    workers: int, address: str, log_from: int = 0,
                    timeout_s: float | None = None) -> None:
    """Until `workers` workers of `server` serve `generation` (at most READY_TIMEOUT_S);
    an error reported for that generation, or the server exiting, fails at once."""
    timeout_s = READY_TIMEOUT_S if timeout_s is None else timeout_s
    instance = folder.instance(server.id)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not running(server):
            raise ProviderError(address, "the server exited:\n" + log_tail(folder, log_from))
        statuses = worker_statuses(folder, instance)
        errors = [s["error"] for s in statuses
                  if s.get("error") and s.get("error_generation") == generation]
        if errors:
            raise ProviderError(address, f"the server could not load generation "
                                f"{generation}: {errors[0]}")
        if sum(s.get("generation") == generation for s in statuses) >= workers:
            return
        time.sleep(0.05)
    raise ProviderError(address, f"the server did not serve generation {generation} "
                        f"within {timeout_s:g}s:\n" + log_tail(folder, log_from))


def publish(folder: EndpointFolder, server: ServerInstance, config: dict[str, Any],
            workers: int, address: str) -> None:
    """Write `config` (a new generation) and wait until every worker serves it."""
    instance = folder.instance(server.id)
    previous = read_config(instance)
    write_config(instance, config)
    try:
        wait_generation(folder, server, int(config["generation"]), workers, address)
    except ProviderError:
        if previous is not None and running(server):
            restored = {**previous, "generation": next_generation(folder, config["generation"])}
            write_config(instance, restored)
            with contextlib.suppress(ProviderError):
                wait_generation(folder, server, restored["generation"], workers, address,
                                timeout_s=RESTORE_TIMEOUT_S)
        raise


def record_live(ctx: Context, state: ResourceState, action: str, detail: str,
                events: Sequence[Event] = ()) -> None:
    """Record a change of a running endpoint as the next step of the operation under
    way (apply's change, or a command's journaled operation), with the endpoint's state
    as the step leaves it and the events announcing it, in one transaction."""
    kept = ResourceState(state.address, state.kind, state.name, dict(state.attributes),
                         state.inputs_hash, dict(state.outputs), state.provider_id,
                         list(state.dependencies))

    def write(cur: Cursor) -> None:
        ctx.store.put_resource(cur, kept.address, action, kept, detail)
        if events:
            ctx.store.record_events(cur, events)

    data = {"address": state.address, "detail": detail,
            **{k: state.outputs.get(k) for k in ("generation", "traffic", "served")}}
    if ctx.work is not None:
        ctx.work.step(action, data, write)
    else:
        ctx.store.write_now(write)


def change_live(ctx: Context, state: ResourceState, action: str, detail: str,
                config_changes: dict[str, Any], output_changes: dict[str, Any],
                record_first: bool = False) -> None:
    """Change a running endpoint outside apply (a key, a rollout's split): publish it,
    then record it in the state (`state` is updated in place). `record_first`: recorded
    before the server gets it, for a change that must never be undone by a crash in
    between (a revoked key: the next apply publishes the state's set, never the old)."""
    folder = EndpointFolder.of(ctx, state.name)
    server = ServerInstance.from_outputs(state.outputs)
    config = read_config(folder.instance(server.id)) if server.id else None
    if config is None or not running(server):
        raise ProviderError(state.address, "its server is not running: mlinfra apply starts "
                            "it again")
    generation = next_generation(folder, state.outputs.get("generation"))
    changed = {**state.outputs, **output_changes, "generation": generation}
    if record_first:
        state.outputs = changed
        record_live(ctx, state, action, detail)
    publish(folder, server, {**config, **config_changes, "generation": generation},
            int(state.outputs.get("workers", 1)), state.address)
    fault_point("published")
    if not record_first:
        state.outputs = changed
        record_live(ctx, state, action, detail)

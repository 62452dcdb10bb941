"""A promoted version rolled out to a live endpoint through a canary deployment.

The deployments that serve `model@alias` keep serving the version they served; a canary
deployment of the candidate is added beside them (loaded and warmed up, with no traffic),
and the progressive rollout of `rollout.py` moves traffic to it step by step, judging
each hold window. When it completes, one config generation makes those deployments serve
the candidate with the split the endpoint had, and drops the canary: every worker swaps
its routing table at once, so no request fails. When it is rolled back or stopped, the
split is put back and the canary dropped; the caller moves the alias back.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from mlinfra.providers.base import Context, ProviderError
from mlinfra.providers.local.endpoint.folders import EndpointFolder
from mlinfra.providers.local.endpoint.keys import operator_key
from mlinfra.providers.local.endpoint.publish import change_live, read_config
from mlinfra.providers.local.endpoint.replay import ShadowReplay, captured_requests
from mlinfra.providers.local.endpoint.rollout import MIN_REQUESTS, rollout
from mlinfra.providers.local.endpoint.supervisor import ServerInstance, running
from mlinfra.registry.models import ModelVersion
from mlinfra.runs.jobs import artifact_store
from mlinfra.spec.model import Ref, duration_in

DEFAULT_STEPS = [10, 50, 100]
DEFAULT_ERROR_RATE = 0.02


def _entry(ctx: Context, base: dict[str, Any], version: ModelVersion) -> dict[str, Any]:
    """A deployment's config entry serving `version`, with `base`'s request settings."""
    return {**base, "model": version.name, "version": version.version,
            "sha256": version.sha256, "path": str(artifact_store(ctx).path(version.sha256))}


def roll_out(ctx: Context, settings: dict[str, Any], alias: str, candidate: ModelVersion,
             previous: ModelVersion, log: Callable[[str], None]) -> dict[str, Any]:
    """Roll `candidate` out on the endpoint `settings['endpoint']` in place of `previous`
    (the version `candidate.name@alias` named before). Returns the record of it: status
    ("complete", "rolled back", "inconclusive" or "skipped": nothing served `previous`), why,
    and each hold window judged."""
    name = str(settings["endpoint"])
    record: dict[str, Any] = {"endpoint": name, "steps": [], "replayed": 0}
    state = ctx.store.get(f"endpoint.{name}")
    if state is None:
        return {**record, "status": "skipped",
                "why": f"endpoint {name} is not applied yet: it serves {candidate.ref} once "
                       "apply creates it"}
    folder = EndpointFolder.of(ctx, name)
    server = ServerInstance.from_outputs(state.outputs)
    config = read_config(folder.instance(server.id)) if server.id else None
    if config is None or not running(server):
        return {**record, "status": "skipped",
                "why": f"endpoint {name} is not running: apply starts it with {candidate.ref}"}
    endpoint = ctx.config.get("Endpoint", name)
    wanted = Ref(candidate.name, None, alias)
    specs = list(endpoint.spec["deployments"]) if endpoint else []
    declared = {str(d["name"]) for d in specs if Ref.parse(str(d.get("model", ""))) == wanted}
    deployments: dict[str, Any] = dict(config["deployments"])
    served = dict(state.outputs.get("served") or {})
    start = {d: int(config["traffic"].get(d, 0)) for d in deployments}
    leftovers = sorted(set(deployments) - {str(d["name"]) for d in specs})
    if leftovers:  # a canary of a rollout cut short: the endpoint as declared, first
        split = dict((endpoint.spec.get("traffic") if endpoint else None) or {})
        start = {d: int(split.get(d, 0)) for d in deployments if d not in leftovers}
        for leftover in leftovers:
            deployments.pop(leftover)
            served.pop(leftover, None)
        for deployment in declared & set(deployments):
            deployments[deployment] = _entry(ctx, deployments[deployment], previous)
            served[deployment] = previous.ref
        log(f"removing {', '.join(leftovers)}, left by a rollout cut short")
        change_live(ctx, state, "rollback", f"{', '.join(leftovers)} removed: left by a "
                    "rollout cut short", {"deployments": deployments, "traffic": start},
                    {"served": served, "traffic": start})
    serving = [d for d in sorted(declared) if d in deployments
               and deployments[d].get("model") == previous.name
               and deployments[d].get("version") == previous.version]
    if not any(start[d] for d in serving):
        return {**record, "status": "skipped",
                "why": f"no deployment of {name} with traffic serves {previous.ref} as "
                       f"{wanted}: it switches to {candidate.ref} at once"}
    canary = f"canary-{candidate.name}-{candidate.version}"
    while canary in deployments:
        canary += "x"
    change_live(ctx, state, "canary", f"{canary} serves {candidate.ref}, with no traffic yet",
                {"deployments": {**deployments, canary: _entry(ctx, deployments[serving[0]],
                                                               candidate)},
                 "traffic": {**start, canary: 0}},
                {"served": {**served, canary: candidate.ref}, "traffic": {**start, canary: 0}})
    steps = [int(s) for s in settings.get("steps") or DEFAULT_STEPS]
    hold_s = duration_in(settings.get("hold_s"), 1.0, 5)
    min_requests = int(settings.get("min_requests", MIN_REQUESTS))
    limits = settings.get("rollback_on") or {}
    replay = None
    if settings.get("replay"):
        key = None if state.outputs.get("auth", "key") == "none" else operator_key(folder)
        replay = ShadowReplay(server.port, key, canary,
                              captured_requests((config.get("collect") or {}).get("path"),
                                                storage=ctx.config.stack.settings.get(
                                                    "storage")),
                              rate=1.5 * min_requests / max(hold_s, 0.1))
    finished = False
    try:
        outcome = rollout(ctx, state, canary, steps, hold_s,
                          limits.get("error_rate", DEFAULT_ERROR_RATE),
                          None if limits.get("p99_ms") is None
                          else duration_in(limits["p99_ms"], 0.001, 0.0),
                          min_requests, log, replay.start if replay is not None else None)
        promote = outcome.status == "complete" or (
            outcome.status == "inconclusive" and settings.get("on_no_traffic") == "promote")
        if promote:
            for deployment in serving:
                deployments[deployment] = _entry(ctx, deployments[deployment], candidate)
                served[deployment] = candidate.ref
            what = f"{', '.join(serving)} now serve {candidate.ref}"
        else:
            what = f"{canary} removed: {outcome.status}"
        change_live(ctx, state, "rollout-complete" if promote else "rollback",
                    what, {"deployments": deployments, "traffic": start},
                    {"served": served, "traffic": start})
        finished = True
    finally:
        if replay is not None:
            replay.stop()
            record["replayed"] = replay.sent
        if not finished:  # Ctrl-C or a failed publish: as it was, without the canary
            with contextlib.suppress(ProviderError):
                change_live(ctx, state, "rollback", f"{canary} removed: interrupted",
                            {"deployments": deployments, "traffic": start},
                            {"served": served, "traffic": start})
    status, why = outcome.status, outcome.why
    if promote and status == "inconclusive":
        status, why = "complete", f"promoted unjudged (on_no_traffic: promote): {why}"
    return {**record, "status": status, "why": why, "steps": list(outcome.steps),
            "deployments": serving, "canary": canary}

"""Progressive rollouts: traffic moves to a deployment step by step, and each step is
judged on the requests of its own hold window.

A window is the difference between two snapshots of the workers' cumulative counters
(requests, 5xx, latency histograms), so its error rate and p99 describe that window
only, never the deployment's lifetime. A window with fewer than `min_requests` requests
to the deployment is inconclusive, not a success (Argo Rollouts' "inconclusive"): the
step holds again, up to `INCONCLUSIVE_HOLDS` times. With no request to the endpoint at
all in a hold there is nothing to judge (Flagger's "not receiving traffic"): unless the
caller can make shadow traffic (`quiet`: captured requests replayed to the deployment),
the rollout says so and stops. Stopping or failing puts back the split the rollout started
from. Every judged window is kept in the outcome's `steps`, for reports and the history.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from mlinfra.events.envelope import announce
from mlinfra.providers.base import Context, ProviderError
from mlinfra.providers.local.endpoint.folders import EndpointFolder
from mlinfra.providers.local.endpoint.observe import worker_statuses
from mlinfra.providers.local.endpoint.publish import (
    next_generation,
    publish,
    read_config,
    record_live,
)
from mlinfra.providers.local.endpoint.supervisor import ServerInstance, running
from mlinfra.state.cloudevents import with_see
from mlinfra.state.model import ResourceState
from mlinfra.state.work import Event

MIN_REQUESTS = 100
INCONCLUSIVE_HOLDS = 10
FRESH_REPORT_S = 2.0  # longest wait for reports newer than a window's end

Snapshot = dict[int, dict[str, dict[str, Any]]]  # worker pid -> deployment -> counters


class Window(NamedTuple):
    """One hold's requests: to the deployment, its 5xx, its p99; and to the endpoint."""

    requests: int
    errors: int
    p99_ms: float
    endpoint_requests: int

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class Outcome(NamedTuple):
    status: str  # "complete", "rolled back" or "inconclusive" (too little traffic)
    why: str
    traffic: dict[str, int]
    steps: tuple[dict[str, Any], ...] = ()  # one record per hold window judged, in order


def _record(share: int, hold: int, seen: Window, verdict: str) -> dict[str, Any]:
    return {"share": share, "hold": hold, "requests": seen.requests, "errors": seen.errors,
            "error_rate": round(seen.error_rate, 4),
            "p99_ms": round(seen.p99_ms, 3) if math.isfinite(seen.p99_ms) else None,
            "verdict": verdict}


def shifted(traffic: dict[str, int], to: str, share: int) -> dict[str, int]:
    """`to` takes `share`; the others keep their proportions of the rest."""
    others = {k: v for k, v in traffic.items() if k != to and v > 0}
    rest, weight = 100 - share, sum(others.values())
    out = {k: 0 for k in traffic}
    if weight == 0 and rest:
        raise ValueError("no other deployment takes traffic to hand over")
    assigned = 0
    for index, (name, value) in enumerate(sorted(others.items())):
        part = rest - assigned if index == len(others) - 1 else round(rest * value / weight)
        out[name] = part
        assigned += part
    out[to] = share
    return out


def snapshot(statuses: list[dict[str, Any]]) -> Snapshot:
    return {int(s["pid"]): dict(s.get("stats") or {}) for s in statuses if "pid" in s}


def window(before: Snapshot, after: Snapshot, deployment: str) -> Window:
    """The requests between two snapshots. A worker absent from `before`, or whose
    counters went down (it restarted), counts from zero."""
    requests = errors = endpoint = 0
    bounds: list[float] = []
    counts: list[int] = []
    for pid, stats in after.items():
        old = before.get(pid, {})
        restarted = any(s.get("requests", 0) < old.get(name, {}).get("requests", 0)
                        for name, s in stats.items())
        for name, now in stats.items():
            then = {} if restarted else old.get(name, {})
            added = int(now.get("requests", 0)) - int(then.get("requests", 0))
            endpoint += added
            if name != deployment:
                continue
            requests += added
            errors += int(now.get("errors", 0)) - int(then.get("errors", 0))
            latency, earlier = now.get("latency") or {}, then.get("latency") or {}
            bounds = list(latency.get("bounds") or bounds)
            now_counts = list(latency.get("counts") or [])
            then_counts = list(earlier.get("counts") or [0] * len(now_counts))
            delta = [a - b for a, b in zip(now_counts, then_counts, strict=False)]
            counts = [a + b for a, b in zip(counts, delta, strict=True)] if counts else delta
    return Window(requests, errors, _quantile(bounds, counts, 0.99) * 1000, endpoint)


def _quantile(bounds: list[float], counts: list[int], q: float) -> float:
    """Upper bound of the bucket holding the q-quantile (inf past the last bound)."""
    total = sum(counts)
    if not total:
        return 0.0
    cumulative, running_total = [], 0
    for count in counts:
        running_total += count
        cumulative.append(running_total)
    index = bisect.bisect_left(cumulative, q * total)
    return bounds[index] if index < len(bounds) else math.inf


def rollout(ctx: Context, state: ResourceState, to: str, steps: list[int], hold_s: float,
            max_error_rate: float | None, max_p99_ms: float | None,
            min_requests: int = MIN_REQUESTS,
            log: Callable[[str], None] = lambda _: None,
            quiet: Callable[[], bool] | None = None) -> Outcome:
    """Move traffic to deployment `to` step by step, judging each hold window; put the
    starting split back past a threshold, or when there is too little traffic to judge.
    `quiet` is called when a hold saw no request at all: True when it started shadow
    traffic to `to`, so the step holds again instead of stopping."""
    folder = EndpointFolder.of(ctx, state.name)
    server = ServerInstance.from_outputs(state.outputs)
    instance = folder.instance(server.id)
    config = read_config(instance) if server.id else None
    if config is None or not running(server):
        raise ProviderError(state.address, "its server is not running: mlinfra apply starts "
                            "it again")
    if to not in config["deployments"]:
        raise ProviderError(state.address, f"no deployment {to}; deployments: "
                            f"{', '.join(config['deployments'])}")
    start = {k: int(v) for k, v in config["traffic"].items()}
    start.update({k: start.get(k, 0) for k in config["deployments"]})
    if not any(v for k, v in start.items() if k != to):
        raise ProviderError(state.address, f"{to} takes all the traffic already")
    workers = int(state.outputs.get("workers", 1))
    generation = int(state.outputs.get("generation", 1))

    def serve(traffic: dict[str, int]) -> None:
        nonlocal generation
        generation = next_generation(folder, generation)
        config.update(generation=generation, traffic=traffic)
        publish(folder, server, config, workers, state.address)

    served = _served(config, to)
    restored = ", ".join(_served(config, d) for d, share in start.items() if share and d != to)

    def record(action: str, traffic: dict[str, int], detail: str,
               event: tuple[str, dict[str, Any]]) -> None:
        state.outputs = {**state.outputs, "generation": generation, "traffic": traffic}
        event_type, data = event
        record_live(ctx, state, action, detail, [Event(
            event_type, state.address, with_see({"endpoint": state.name, **data},
                                                f"mlinfra endpoints show {state.name}"),
            time.time())])

    def stepped(share: int) -> None:
        announce(ctx.store, "rollout.step", state.address,
                 {"endpoint": state.name, "deployment": to, "share": share, "model": served},
                 see=f"mlinfra endpoints show {state.name}")

    windows: list[dict[str, Any]] = []
    try:
        for share in steps:
            serve(shifted(start, to, share))
            stepped(share)
            verdict = _judge_step(folder, server, to, share, hold_s, max_error_rate,
                                  max_p99_ms, min_requests, log, quiet, windows)
            if verdict is not None:
                status, reason = verdict
                serve(start)
                record("rollback" if status == "rolled back" else "rollout-stopped", start,
                       f"{status} {to}: {reason}",
                       ("rollout.rolled_back", {"model": served, "restored": restored,
                                                "reason": f"{status}: {reason}"}))
                return Outcome(status, reason, start, tuple(windows))
    except BaseException:  # Ctrl-C or a failed publish: the split it started from
        if running(server):
            with contextlib.suppress(ProviderError):
                serve(start)
        raise
    current = shifted(start, to, steps[-1])
    record("rollout", current, f"{to} now takes {current[to]}%",
           ("rollout.completed", {"model": served}))
    return Outcome("complete", f"{to} takes {current[to]}% of traffic", current, tuple(windows))


def _judge_step(folder: EndpointFolder, server: ServerInstance, to: str, share: int,
                hold_s: float, max_error_rate: float | None, max_p99_ms: float | None,
                min_requests: int, log: Callable[[str], None],
                quiet: Callable[[], bool] | None = None,
                windows: list[dict[str, Any]] | None = None) -> tuple[str, str] | None:
    """None when the step passes; else ("rolled back" | "inconclusive", why). Each window
    judged is appended to `windows`."""
    kept = windows if windows is not None else []
    begin = _snapshot_since(folder, server, time.time())
    for hold in range(1, INCONCLUSIVE_HOLDS + 1):
        time.sleep(hold_s)
        end = _snapshot_since(folder, server, time.time())
        seen = window(begin, end, to)
        held = f"{hold * hold_s:g}s"
        log(f"{to} at {share}% for {held}: {seen.requests} requests, error rate "
            f"{seen.error_rate:.3f}, p99 <= {seen.p99_ms:g} ms")
        if seen.endpoint_requests == 0:
            if quiet is not None and quiet():
                # Shadow traffic from now on: the next window is judged on it alone.
                kept.append(_record(share, hold, seen, "no traffic: replaying captures"))
                log(f"{to} at {share}%: no live traffic; replaying captured requests to it")
                begin = end
                continue
            kept.append(_record(share, hold, seen, "no traffic"))
            return "inconclusive", (f"no request reached the endpoint in {held} at "
                                    f"{share}%: a rollout judges live traffic, and there is "
                                    "none (replay: true judges captured requests instead)")
        if seen.requests < min_requests:
            kept.append(_record(share, hold, seen, "inconclusive"))
            if hold == INCONCLUSIVE_HOLDS:
                return "inconclusive", (f"{seen.requests} requests reached {to} in {held} "
                                        f"at {share}%, fewer than the {min_requests} "
                                        "needed to judge (--min-requests)")
            log(f"{to} at {share}%: inconclusive ({seen.requests} of {min_requests} "
                "requests needed); holding again")
            continue
        if max_error_rate is not None and seen.error_rate > max_error_rate:
            kept.append(_record(share, hold, seen, "breach"))
            return "rolled back", (f"error rate {seen.error_rate:.3f} > {max_error_rate} "
                                   f"at {share}%")
        if max_p99_ms is not None and seen.p99_ms > max_p99_ms:
            kept.append(_record(share, hold, seen, "breach"))
            return "rolled back", f"p99 {seen.p99_ms:g} ms > {max_p99_ms:g} ms at {share}%"
        kept.append(_record(share, hold, seen, "passed"))
        return None
    return None


def _snapshot_since(folder: EndpointFolder, server: ServerInstance, since: float) -> Snapshot:
    """The workers' counters as reported at `since` or later (they report every 0.25 s),
    so that a window covers its hold, not an older report's."""
    instance = folder.instance(server.id)
    deadline = time.monotonic() + FRESH_REPORT_S
    while True:
        statuses = worker_statuses(folder, instance)
        if all(float(s.get("at", 0)) >= since for s in statuses) or (
                time.monotonic() > deadline):
            return snapshot(statuses)
        time.sleep(0.02)


def _served(config: dict[str, Any], deployment: str) -> str:
    """What a deployment serves, as name:version (its name when unknown)."""
    entry = config.get("deployments", {}).get(deployment) or {}
    if entry.get("model") and entry.get("version"):
        return f"{entry['model']}:{entry['version']}"
    return deployment

"""What a running endpoint really serves, read from its workers' status reports.

Each worker of a server instance reports its generation, models, traffic split and the
hashes of the keys it accepts (`mlinfra/serving/status.py`). A report counts only while
the process that wrote it is still a worker of that instance. Comparing the reports with
the state finds drift that the state alone cannot show: a config written by an apply
that was killed before it recorded it.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any

from mlinfra.providers.local.endpoint.client import Unreachable, request
from mlinfra.providers.local.endpoint.folders import EndpointFolder, InstanceFolder
from mlinfra.providers.local.endpoint.supervisor import (
    ServerInstance,
    member,
    processes,
    running,
)

HEALTH_TIMEOUT_S = 2.0
STALE_REPORT_S = 5.0  # a worker silent longer than this is hung


def worker_statuses(folder: EndpointFolder, instance: InstanceFolder) -> list[dict[str, Any]]:
    """The last report of each running worker of `instance`."""
    statuses = []
    for path in instance.status.glob("*.json"):
        try:
            status = json.loads(path.read_text())
            pid = int(status["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if member(folder, instance.id, pid):
            statuses.append(status)
    return statuses


@dataclass(frozen=True)
class Serving:
    """What the state says an endpoint serves."""

    served: dict[str, str]  # deployment -> "model:version"
    traffic: dict[str, float]  # deployments with a share only
    key_hashes: frozenset[str]

    @classmethod
    def from_outputs(cls, outputs: dict[str, Any], key_hashes: list[str]) -> Serving:
        return cls(dict(outputs.get("served") or {}), shares(outputs.get("traffic") or {}),
                   frozenset(key_hashes))


def shares(traffic: dict[str, Any]) -> dict[str, float]:
    return {name: float(share) for name, share in traffic.items() if share}


def difference(statuses: list[dict[str, Any]], want: Serving) -> str:
    """How the first worker that differs from `want` differs, or ""."""
    for status in statuses:
        if status.get("generation") is None:
            continue  # still starting
        pid = status.get("pid")
        serves = {name: entry.get("model") for name, entry in
                  (status.get("serves") or {}).items()}
        if serves != want.served:
            return (f"worker {pid} serves {_show(serves)}; the state says "
                    f"{_show(want.served)}")
        traffic = shares(status.get("traffic") or {})
        if traffic != want.traffic:
            return (f"worker {pid} splits traffic {_show(traffic)}; the state says "
                    f"{_show(want.traffic)}")
        if frozenset(status.get("key_hashes") or ()) != want.key_hashes:
            return f"worker {pid} accepts other keys than the state holds"
    return ""


def config_difference(config: dict[str, Any] | None, want: Serving) -> str:
    """How the config file the workers load differs from `want`, or "": a config written
    by a run that was cut short, before its workers even loaded it."""
    if config is None:
        return "its config file is missing"
    serves = {name: f"{entry.get('model')}:{entry.get('version')}"
              for name, entry in (config.get("deployments") or {}).items()}
    if serves != want.served:
        return f"its config serves {_show(serves)}; the state says {_show(want.served)}"
    traffic = shares(config.get("traffic") or {})
    if traffic != want.traffic:
        return (f"its config splits traffic {_show(traffic)}; the state says "
                f"{_show(want.traffic)}")
    if frozenset(config.get("key_hashes") or ()) != want.key_hashes:
        return "its config accepts other keys than the state holds"
    return ""


def _show(mapping: dict[str, Any]) -> str:
    return json.dumps({k: int(v) if isinstance(v, float) and v.is_integer() else v
                       for k, v in sorted(mapping.items())})


def health(folder: EndpointFolder, server: ServerInstance,
           timeout: float = HEALTH_TIMEOUT_S) -> tuple[bool, str]:
    """(ready, what is wrong) from the instance's process and its readiness route. A
    server slow to answer whose workers still report is busy, not hung."""
    if not running(server):
        return False, f"its server (pid {server.pid}) is not running"
    try:
        answer = request(f"http://127.0.0.1:{server.port}/v2/health/ready", timeout=timeout)
    except Unreachable as err:
        if err.timed_out and not _stuck(folder, server):
            return True, ""
        if err.timed_out:
            return False, f"its server (pid {server.pid}) did not answer within {timeout:g}s"
        return False, f"its server (pid {server.pid}) does not answer: {err.message}"
    if answer.status != 200:
        return False, f"its server (pid {server.pid}) is not ready (HTTP {answer.status})"
    return True, ""


def _stuck(folder: EndpointFolder, server: ServerInstance) -> bool:
    """A process of the instance is stopped (SIGSTOP), or no worker reported lately
    (each reports every 0.25 s from its event loop)."""
    import psutil

    for process in processes(folder).get(server.id, []):
        with contextlib.suppress(psutil.Error):
            if process.status() == psutil.STATUS_STOPPED:
                return True
    reports = [float(s.get("at") or 0) for s in
               worker_statuses(folder, folder.instance(server.id))]
    return time.time() - max(reports, default=0.0) > STALE_REPORT_S


def live_traffic(statuses: list[dict[str, Any]], outputs: dict[str, Any]) -> dict[str, Any]:
    """The split the workers serve (every deployment named, 0 for those without traffic),
    or the one last recorded when no worker reports."""
    recorded = dict(outputs.get("traffic") or {})
    for status in statuses:
        if status.get("generation") is not None and status.get("serves"):
            split = {name: 0 for name in status["serves"]}
            for name, share in (status.get("traffic") or {}).items():
                split[name] = int(share) if float(share).is_integer() else share
            return split
    return recorded


def describe(folder: EndpointFolder, outputs: dict[str, Any]) -> dict[str, Any]:
    """What `endpoints list` and `show` print: health, models and the live split."""
    server = ServerInstance.from_outputs(outputs)
    ready, problem = health(folder, server)
    statuses = worker_statuses(folder, folder.instance(server.id)) if server.id else []
    serves = dict(outputs.get("served") or {})
    for status in statuses:
        if status.get("serves"):
            serves = {name: entry.get("model") for name, entry in status["serves"].items()}
            break
    return {"health": "ready" if ready else problem, "serves": serves,
            "traffic": live_traffic(statuses, outputs),
            "workers": len(statuses)}

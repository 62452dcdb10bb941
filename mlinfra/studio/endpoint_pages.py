"""Page 7, endpoints: deployments and the live traffic split, request rate, latency
percentiles and errors from each server's /metrics (refreshed every few seconds), and
each rollout as a timeline of its steps and their verdicts."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from mlinfra.registry.decisions import PROMOTION, DecisionLog
from mlinfra.state.model import ResourceState
from mlinfra.studio.context import redact
from mlinfra.studio.endpoint_metrics import PERCENTILES, Scraper

if TYPE_CHECKING:
    from mlinfra.studio.app import Pages
    from mlinfra.studio.context import Studio

_ROLLOUT_ACTIONS = ("rollout", "rollback", "rollout-stopped")


def operator_key(studio: Studio, name: str) -> str | None:
    """The key mlinfra's own commands send to a local endpoint, if one was made: read,
    never made here, and never shown."""
    from mlinfra.providers.local.endpoint.folders import EndpointFolder

    path = EndpointFolder.of(studio.session.ctx, name).operator_key
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def rollouts(store: Any, name: str) -> list[dict[str, Any]]:
    """Each rollout on endpoint `name`, newest first: from promotions (with the hold
    windows judged, their shares and verdicts) and from `mlinfra endpoints rollout`."""
    out: list[dict[str, Any]] = []
    for record in DecisionLog(store).read(PROMOTION):
        rollout = record.detail.get("rollout")
        if not isinstance(rollout, dict) or rollout.get("endpoint") != name:
            continue
        out.append({"at": record.at, "by": record.command, "user": record.user,
                    "what": f"{record.detail.get('model')}:{record.detail.get('candidate')} "
                            f"by {record.address}",
                    "status": rollout.get("status", "?"), "why": rollout.get("why", ""),
                    "steps": [s for s in rollout.get("steps") or [] if isinstance(s, dict)]})
    marks = ", ".join("?" * len(_ROLLOUT_ACTIONS))
    for at, user, command, action, detail in store.query(
            "SELECT at, username, command, action, detail FROM audit WHERE address=? AND "
            f"action IN ({marks}) ORDER BY id", (f"endpoint.{name}", *_ROLLOUT_ACTIONS)):
        status = {"rollout": "complete", "rollback": "rolled back"}.get(action, "stopped")
        out.append({"at": at, "by": command, "user": user, "what": command, "status": status,
                    "why": detail, "steps": []})
    out.sort(key=lambda r: r["at"], reverse=True)
    return out


def describe(resource: ResourceState, declared: dict[str, Any] | None) -> dict[str, Any]:
    outputs = resource.outputs
    deployments = []
    served = outputs.get("served") or {}
    traffic = outputs.get("traffic") or {}
    spec_deployments = {str(d.get("name")): d for d in (declared or {}).get("deployments") or []
                        if isinstance(d, dict)}
    for name in sorted(set(served) | set(traffic) | set(spec_deployments)):
        spec = spec_deployments.get(name) or {}
        deployments.append({"name": name, "model": served.get(name) or spec.get("model"),
                            "ref": spec.get("model"), "share": traffic.get(name, 0),
                            "request": spec.get("request") or {}})
    return {"name": resource.name, "url": redact(str(outputs.get("url", ""))),
            "auth": outputs.get("auth", ""), "workers": outputs.get("workers"),
            "generation": outputs.get("generation"), "deployments": deployments,
            "mirror": (declared or {}).get("mirror") or {}, "updated_at": resource.updated_at}


def routes(pages: Pages) -> list[BaseRoute]:
    studio = pages.studio
    scraper = Scraper()

    def page(request: Request) -> HTMLResponse:
        store = studio.store
        declared = studio.session.config.of("Endpoint")
        endpoints = []
        for resource in sorted(store.resources().values(), key=lambda r: r.name):
            if resource.kind != "Endpoint":
                continue
            res = declared.get(resource.name)
            item = describe(resource, res.spec if res is not None else None)
            item["rollouts"] = rollouts(store, resource.name)
            endpoints.append(item)
        not_applied = sorted(set(declared) - {e["name"] for e in endpoints})
        return pages.render(request, "endpoints.html", "endpoints", endpoints=endpoints,
                            not_applied=not_applied)

    def metrics(request: Request) -> HTMLResponse:
        name = request.path_params["name"]
        resource = studio.store.get(f"endpoint.{name}")
        if resource is None or not resource.outputs.get("url"):
            return pages.fragment("endpoint_metrics.html", name=name, stats={},
                                  error="not running: no URL in the state",
                                  percentiles=PERCENTILES)
        found = scraper.scrape(name, str(resource.outputs["url"]), operator_key(studio, name))
        return pages.fragment("endpoint_metrics.html", name=name, stats=found["stats"],
                              error=found["error"], percentiles=PERCENTILES)

    return [Route("/endpoints", page), Route("/endpoints/{name}/metrics", metrics)]

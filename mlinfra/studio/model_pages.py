"""Page 5, models: each model's versions (evaluation metrics, aliases, tags, status),
its promotion decisions with the candidate/champion table and the bootstrap interval
of each difference, and a version's lineage graph and where it serves now."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from mlinfra.errors import MlinfraError
from mlinfra.registry.decisions import PROMOTION, DecisionLog
from mlinfra.registry.models import GATES_TAG, ModelRegistry, ModelVersion
from mlinfra.studio.context import redact
from mlinfra.studio.lineage import lineage, serving

if TYPE_CHECKING:
    from mlinfra.ci.bootstrap import Compared
    from mlinfra.studio.app import Pages


def status(version: ModelVersion) -> str:
    if version.archived:
        return "archived"
    if version.tags.get(GATES_TAG) == "failed":
        return "gates failed"
    return "registered"


def decisions(store: Any, model: str) -> list[dict[str, Any]]:
    """The promotion decisions about `model`, newest first, each with its record id."""
    out = []
    for record in DecisionLog(store).read(PROMOTION):
        if record.detail.get("model") != model:
            continue
        detail = redact(record.detail)
        metrics = detail.get("metrics") or {}
        candidate, champion = metrics.get("candidate") or {}, metrics.get("champion") or {}
        table = [(name, candidate.get(name), champion.get(name))
                 for name in sorted(set(candidate) | set(champion))]
        out.append({"id": record.id, "at": record.at, "user": record.user,
                    "command": record.command, "detail": detail, "table": table})
    out.reverse()
    return out


class Intervals:
    """Bootstrap intervals of candidate - champion, computed once per pair (scoring both
    versions on the evaluation data takes a while) and kept."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[tuple[str, int, int], tuple[str, list[Compared]]] = {}

    def get(self, pages: Pages, name: str, candidate: int, champion: int
            ) -> tuple[str, list[Compared]]:
        key = (name, candidate, champion)
        with self._lock:
            if key in self._done:
                return self._done[key]
        from mlinfra.ci.bootstrap import compare

        session = pages.studio.session
        registry = ModelRegistry(session.store)
        model = session.config.get("Model", name)
        new, old = registry.get(name, candidate), registry.get(name, champion)
        if model is None or not model.spec.get("evaluation"):
            raise MlinfraError(f"model {name} declares no evaluation to compare on")
        if new is None or old is None:
            raise MlinfraError(f"{name}:{candidate} or {name}:{champion} is not registered")
        found = compare(session.ctx, model, new, old)
        with self._lock:
            self._done[key] = found
        return found


def routes(pages: Pages) -> list[BaseRoute]:
    studio = pages.studio
    intervals = Intervals()

    def index(request: Request) -> HTMLResponse:
        registry = ModelRegistry(studio.store)
        models: dict[str, list[ModelVersion]] = {}
        for version in registry.versions():
            models.setdefault(version.name, []).append(version)
        listing = []
        for name, versions in sorted(models.items()):
            aliases = registry.aliases(name)
            by_version: dict[int, list[str]] = {}
            for alias, number in aliases.items():
                by_version.setdefault(number, []).append(alias)
            listing.append({"name": name, "versions": list(reversed(versions)),
                            "aliases": by_version,
                            "serving": {v.version: serving(studio.store, v) for v in versions},
                            "decisions": decisions(studio.store, name),
                            "metric_keys": sorted({k for v in versions for k, x in
                                                   v.metrics.items()
                                                   if isinstance(x, int | float)})})
        return pages.render(request, "models.html", "models", models=listing,
                            status=status)

    def version_page(request: Request) -> HTMLResponse:
        name = request.path_params["name"]
        registry = ModelRegistry(studio.store)
        version = registry.get(name, int(request.path_params["version"]))
        if version is None:
            return pages.render(request, "missing.html", "models",
                                what=f"model {name}:{request.path_params['version']}",
                                status_code=404)
        aliases = [a for a, v in registry.aliases(name).items() if v == version.version]
        return pages.render(request, "model.html", "models", version=version,
                            aliases=aliases, graph=lineage(studio.store, version).to_json(),
                            serving=serving(studio.store, version), status=status(version),
                            lineage=redact(version.lineage), tags=redact(version.tags))

    def interval(request: Request) -> HTMLResponse:
        name = request.path_params["name"]
        candidate = int(request.path_params["candidate"])
        champion = int(request.path_params["champion"])
        try:
            data, compared = intervals.get(pages, name, candidate, champion)
        except MlinfraError as err:
            return pages.fragment("interval.html", error=err.message, data="", compared=[])
        return pages.fragment("interval.html", error="", data=data, compared=compared)

    return [Route("/models", index),
            Route("/models/{name}/{version:int}", version_page),
            Route("/models/{name}/interval/{candidate:int}/{champion:int}", interval)]

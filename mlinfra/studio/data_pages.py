"""Page 6, data: each asset's versions with rows, columns, size and the results of its
expectations."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from mlinfra.data.versions import DataVersions

if TYPE_CHECKING:
    from mlinfra.studio.app import Pages


def checks(store: Any, name: str) -> dict[str, list[dict[str, Any]]]:
    """Every expectation run recorded for the asset, by content sha256, newest first."""
    out: dict[str, list[dict[str, Any]]] = {}
    for sha, passed, results, at in store.query(
            "SELECT sha256, passed, results, checked_at FROM data_checks WHERE name=? "
            "ORDER BY checked_at DESC", (name,)):
        try:
            parsed = json.loads(results)
        except ValueError:
            parsed = []
        out.setdefault(str(sha), []).append({"passed": bool(passed), "at": at,
                                             "results": parsed if isinstance(parsed, list)
                                             else []})
    return out


def routes(pages: Pages) -> list[BaseRoute]:
    studio = pages.studio

    def page(request: Request) -> HTMLResponse:
        store = studio.store
        versions = DataVersions(store)
        declared = studio.session.config.of("Data")
        names = sorted({*declared, *(str(n) for (n,) in store.query(
            "SELECT DISTINCT name FROM data_versions"))})
        assets = []
        for name in names:
            resource = declared.get(name)
            assets.append({
                "name": name,
                "declared": resource is not None,
                "path": resource.spec.get("path") if resource is not None else None,
                "format": resource.spec.get("format", "csv") if resource is not None else "",
                "versions": list(reversed(versions.list(name))),
                "checks": checks(store, name)})
        return pages.render(request, "data.html", "data", assets=assets)

    return [Route("/data", page)]

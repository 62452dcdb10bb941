"""Page 8, monitors: each monitor's standing (ok, drifting, breached) and its verdicts
per window, drawn per signal and feature against their threshold, with the windows
themselves (rows, the version that served them, why one was not judged)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from mlinfra.errors import MlinfraError
from mlinfra.monitoring import records

if TYPE_CHECKING:
    from mlinfra.studio.app import Pages

# Windows drawn per monitor: the latest ones.
WINDOWS = 500


def curves(windows: list[records.Window]) -> list[dict[str, Any]]:
    """One chart per signal, feature and metric: the value in each window (None where
    it could not be computed) and the threshold it was judged against."""
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    for index, window in enumerate(windows):
        for signal in window.signals:
            name = (signal.signal, signal.feature, signal.metric)
            chart = found.setdefault(name, {
                "title": f"{signal.signal} · {signal.feature} · {signal.metric}"
                         if signal.feature else f"{signal.signal} · {signal.metric}",
                "x": [w.start for w in windows], "value": [None] * len(windows),
                "threshold": [None] * len(windows), "drifted": 0})
            value = signal.value
            chart["value"][index] = None if value != value else value
            chart["threshold"][index] = signal.threshold
            chart["drifted"] += signal.verdict == records.DRIFT
    return [found[k] for k in sorted(found)]


def routes(pages: Pages) -> list[BaseRoute]:
    studio = pages.studio

    def page(request: Request) -> HTMLResponse:
        store = studio.store
        config = studio.session.config
        declared = config.of("Monitor")
        kept = {str(n) for (n,) in store.query("SELECT DISTINCT monitor FROM monitor_windows")}
        monitors = []
        for name in sorted(set(declared) | kept):
            windows = records.windows(store, name, limit=WINDOWS) if name in kept else []
            verdict: Any = None
            if name in declared:
                from mlinfra.monitoring.verdicts import status

                try:
                    verdict = status(store, config, name)
                except MlinfraError:
                    verdict = None
            spec = declared[name].spec if name in declared else {}
            monitors.append({"name": name, "declared": name in declared,
                             "endpoint": spec.get("endpoint"), "verdict": verdict,
                             "windows": windows, "charts": curves(windows)})
        return pages.render(request, "monitors.html", "monitors", monitors=monitors)

    return [Route("/monitors", page)]


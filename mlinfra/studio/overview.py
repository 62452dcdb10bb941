"""Page 1, the overview: the stack, every resource with its status and drift, and the
last applies (who, when, what changed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from mlinfra.studio.context import redact

if TYPE_CHECKING:
    from mlinfra.studio.app import Pages

# Audit rows of one session are this close in time: farther apart, another session.
_SESSION_GAP_S = 300.0
_RESOURCE_ACTIONS = ("create", "update", "replace", "delete")


@dataclass
class Session:
    """The audit rows of one command's run (an apply, a destroy, an alias moved)."""

    command: str
    user: str
    host: str
    started: float
    ended: float
    changes: list[tuple[str, str, str]] = field(default_factory=list)  # address, action, detail


def sessions(rows: list[tuple[Any, ...]], limit: int = 10) -> list[Session]:
    """Audit rows (newest first) grouped into sessions, newest first. The audit log
    names no session: rows of the same command, user and host belong together unless
    far apart in time, or unless a resource changes twice (an apply changes each
    resource once)."""
    out: list[Session] = []
    touched: set[str] = set()
    for at, user, host, command, address, action, _serial, detail in rows:
        last = out[-1] if out else None
        again = action in _RESOURCE_ACTIONS and address in touched
        if last is not None and not again and (last.command, last.user, last.host) == (
                command, user, host) and last.started - at < _SESSION_GAP_S:
            last.started = at
            last.changes.append((address, action, detail))
            if action in _RESOURCE_ACTIONS:
                touched.add(address)
            continue
        if len(out) == limit:
            break
        out.append(Session(command, user, host, at, at, [(address, action, detail)]))
        touched = {address} if action in _RESOURCE_ACTIONS else set()
    for session in out:
        session.changes.reverse()
    return out


def _summary(detail: str) -> str:
    """The audit detail as one short line (a decision's JSON becomes its reason)."""
    if detail.startswith("{"):
        import json

        try:
            data = json.loads(detail)
        except ValueError:
            return detail[:200]
        if isinstance(data, dict):
            return str(data.get("reason") or data.get("outcome") or "")[:200]
    return detail[:200]


def routes(pages: Pages) -> list[BaseRoute]:
    studio = pages.studio

    def page(request: Request) -> HTMLResponse:
        store = studio.store
        meta = store.meta()
        resources = sorted(store.resources().values(), key=lambda r: (r.kind, r.name))
        pending = {e.address: e for e in store.interrupted_operations()}
        applied = sessions(store.audit_log(500))
        config = studio.session.config
        return pages.render(
            request, "overview.html", "overview", resources=resources, meta=meta,
            location=store.location, provider=config.stack.provider,
            declared=len(config.all()), pending=pending, sessions=applied,
            summary=_summary, redact=redact)

    def drift(request: Request) -> HTMLResponse:
        """Refresh, as plan does: what each provider finds of each resource now."""
        from mlinfra.engine import refresh

        session = studio.session
        try:
            observed = refresh(session, session.store.resources())
        except Exception as err:  # a provider that cannot be reached: say so, once
            return pages.fragment("drift.html", observed={}, error=str(err))
        return pages.fragment("drift.html", observed=observed, error="")

    return [Route("/", page), Route("/overview/drift", drift)]

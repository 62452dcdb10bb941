"""The studio's application: its pages, static files, templates and middleware.

`create_app(studio)` builds it; `mlinfra studio` serves it with uvicorn. Every route
answers GET (and HEAD) only: the studio has nothing that writes.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlinfra.studio import (
    data_pages,
    endpoint_pages,
    event_pages,
    model_pages,
    monitor_pages,
    overview,
    plan_pages,
    run_pages,
)
from mlinfra.studio.context import Studio
from mlinfra.studio.security import LoopbackHosts, SecurityHeaders, TokenGate, is_loopback

HERE = Path(__file__).parent
NAV = (("overview", "/", "Overview"), ("plan", "/plan", "Plan"), ("runs", "/runs", "Runs"),
       ("models", "/models", "Models"), ("data", "/data", "Data"),
       ("endpoints", "/endpoints", "Endpoints"), ("monitors", "/monitors", "Monitors"),
       ("events", "/events", "Events"))


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    minutes, secs = divmod(int(value), 60)
    return f"{minutes}m{secs:02d}s" if minutes < 60 else f"{minutes // 60}h{minutes % 60:02d}m"


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return str(value)
    return str(value)


def _bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"),
                      autoescape=select_autoescape(default=True), trim_blocks=True,
                      lstrip_blocks=True)
    env.filters.update(when=_when, seconds=_seconds, number=_number, bytes=_bytes,
                       tojson_attr=lambda v: json.dumps(v, default=str))
    return env


class Pages:
    """Renders a page of the studio with the layout's context."""

    def __init__(self, studio: Studio) -> None:
        self.studio = studio
        self.env = environment()

    def render(self, request: Request, template: str, section: str,
               status_code: int = 200, **values: Any) -> HTMLResponse:
        config = self.studio.session.config
        html = self.env.get_template(template).render(
            request=request, section=section, nav=NAV, project=config.name,
            stack=config.stack.name, **values)
        return HTMLResponse(html, status_code=status_code)

    def fragment(self, template: str, **values: Any) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(template).render(**values))


class ServerTiming:
    """Adds `Server-Timing: app;dur=MS` to each answer: the time the studio spent on it,
    as a browser's developer tools and the benchmark read it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()

        async def timed(message: Message) -> None:
            if message["type"] == "http.response.start":
                spent = (time.perf_counter() - start) * 1000
                message["headers"] = [*message.get("headers", []),
                                      (b"server-timing", f"app;dur={spent:.2f}".encode())]
            await send(message)

        await self.app(scope, receive, timed)


def routes(pages: Pages) -> list[BaseRoute]:
    return [*overview.routes(pages), *plan_pages.routes(pages), *run_pages.routes(pages),
            *model_pages.routes(pages), *data_pages.routes(pages),
            *endpoint_pages.routes(pages), *monitor_pages.routes(pages),
            *event_pages.routes(pages),
            Mount("/static", app=StaticFiles(directory=HERE / "static"), name="static")]


def create_app(studio: Studio) -> Starlette:
    """The studio over `studio`'s stack. On a loopback address only the loopback's
    names are accepted as Host; elsewhere the token guards every request."""
    options = studio.options
    middleware = [Middleware(ServerTiming), Middleware(SecurityHeaders),
                  *([Middleware(LoopbackHosts)] if is_loopback(options.host) else []),
                  Middleware(TokenGate, token=options.token)]
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        studio.close()

    return Starlette(routes=routes(Pages(studio)), middleware=middleware, lifespan=lifespan)

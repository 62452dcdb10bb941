"""The catch-all around the endpoint app, as Starlette's ServerErrorMiddleware: an error
that nothing else handled becomes a 500 answer, logged once with its traceback, instead
of a dropped connection and a traceback per layer."""

from __future__ import annotations

import logging
from typing import Any

LOG = logging.getLogger("mlinfra.serving")
_BODY = b'{"error":"internal server error: see the server log"}'


class CatchAll:
    def __init__(self, app: Any) -> None:
        self.app = app

    def __getattr__(self, name: str) -> Any:
        return getattr(self.app, name)  # the wrapped app's parts, for tests and tools

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def sending(message: dict[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, sending)
        except Exception:
            if started:
                raise  # too late for an answer: the server logs it and drops the connection
            LOG.exception("unhandled error answering %s %s", scope.get("method"),
                          scope.get("path"))
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", b"%d" % len(_BODY))]})
            await send({"type": "http.response.body", "body": _BODY})

"""Client connections: uvicorn's httptools protocol with bounds on connections that hold
a worker without asking anything.

uvicorn closes a keep-alive connection that stays quiet for `timeout_keep_alive` after
an answer, but not one that never sends a byte, nor one that sends half a request and
stops (slowloris). Here a connection is closed when it sends nothing for
`Limits.idle_timeout_s` after it opens, and when a request has not arrived in full
within `Limits.request_timeout_s` of its first byte. A request that arrives in one
read, as nearly all do, arms no timer.

A server that stops (another with a new worker count has taken its place) drains its
connections rather than closing them: each request it still receives is answered with
`Connection: close`, and a connection that stays quiet for DRAIN_IDLE_S is closed, so
no client sends a request on a connection the server has just closed.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mlinfra.serving.limits import Limits


@functools.cache
def _request_timeout_s() -> float:
    """Read once the supervisor exported its limits (not at import: it imports this
    module before)."""
    return Limits.from_environment().request_timeout_s


DRAIN_IDLE_S = 1.0


class BoundedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._receiving = False  # between a request's first byte and its last
        self._started = 0.0
        self._deadline: asyncio.TimerHandle | None = None
        self._draining = False
        self._drain_close: asyncio.TimerHandle | None = None

    def shutdown(self) -> None:
        """The server stops: answer what still comes with `Connection: close` instead
        of closing a quiet keep-alive connection at once (uvicorn's way), which a client
        may be sending its next request on."""
        self._draining = True
        if self.cycle is None or self.cycle.response_complete:
            self._drain_close = self.loop.call_later(DRAIN_IDLE_S, self._close_if_quiet)
        else:
            self.cycle.keep_alive = False

    def _close_if_quiet(self) -> None:
        self._drain_close = None
        if (self.cycle is None or self.cycle.response_complete) and not self._receiving \
                and not self.transport.is_closing():
            self.transport.close()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # answered, then closed

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's keep-alive timer, armed before the first request too; any data
        # cancels it (uvicorn's data_received).
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
        if self._drain_close is not None:  # a request comes: it is answered first
            self._drain_close.cancel()
            self._drain_close = None
        super().data_received(data)
        if self._receiving and self._deadline is None:
            left = self._started + _request_timeout_s() - time.monotonic()
            self._deadline = self.loop.call_later(max(left, 0.0), self._request_too_slow)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._receiving = True
        self._started = time.monotonic()

    def on_message_complete(self) -> None:
        self._receiving = False
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().on_message_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._drain_close is not None:
            self._drain_close.cancel()
            self._drain_close = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().connection_lost(exc)

    def _request_too_slow(self) -> None:
        self._deadline = None
        if self._receiving and not self.transport.is_closing():
            self.transport.close()


class ClientNoise(logging.Filter):
    """uvicorn logs a warning for each malformed request; a client sending them in a
    loop would fill the server log. One a minute is kept, with how many were left out."""

    WARNINGS = ("Invalid HTTP request received.", "Unsupported upgrade request.")

    def __init__(self) -> None:
        super().__init__()
        self._next = 0.0
        self._dropped = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING or record.getMessage() not in self.WARNINGS:
            return True
        now = time.monotonic()
        if now < self._next:
            self._dropped += 1
            return False
        if self._dropped:
            record.msg = f"{record.msg} ({self._dropped} more in the last minute)"
            record.args = ()
        self._next, self._dropped = now + 60, 0
        return True

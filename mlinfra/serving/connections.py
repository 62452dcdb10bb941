"""Client connections: uvicorn's httptools protocol with bounds on connections that hold
a worker without asking anything.

uvicorn closes a keep-alive connection that stays quiet for `timeout_keep_alive` after
an answer, but not one that never sends a byte, nor one that sends half a request and
stops (slowloris). Here a connection is closed when it sends nothing for
`Limits.idle_timeout_s` after it opens, and when a request has not arrived in full
within `Limits.request_timeout_s` of its first byte. A request that arrives in one
read, as nearly all do, arms no timer.
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


class BoundedHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._receiving = False  # between a request's first byte and its last
        self._started = 0.0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # uvicorn's keep-alive timer, armed before the first request too; any data
        # cancels it (uvicorn's data_received).
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler)

    def data_received(self, data: bytes) -> None:
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

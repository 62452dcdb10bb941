"""Routing: which route a path names, which methods it takes and whether it needs a key.
A path is matched by splitting it once, without regular expressions."""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

from mlinfra.serving.errors import ClientError


class Route(Enum):
    LIVE = "live"
    READY = "ready"
    METRICS = "metrics"
    SERVER_METADATA = "server metadata"
    INVOCATIONS = "invocations"
    INFER = "infer"
    MODEL_METADATA = "model metadata"
    MODEL_READY = "model ready"
    PING = "ping"  # MLflow's /ping and /health
    VERSION = "version"  # MLflow's /version
    FEEDBACK = "feedback"  # labels for captured requests, by request id


# Routes a client may call without a key: health checks, for load balancers and probes,
# and the server's version, as `mlflow models serve` has it.
OPEN = frozenset({Route.LIVE, Route.READY, Route.PING, Route.VERSION})
# The methods each route answers (HEAD wherever GET: uvicorn leaves out the body).
_READ = ("GET", "HEAD")
METHODS: dict[Route, tuple[str, ...]] = {
    Route.LIVE: _READ, Route.READY: _READ, Route.METRICS: _READ, Route.SERVER_METADATA: _READ,
    Route.INVOCATIONS: ("POST",), Route.INFER: ("POST",), Route.MODEL_METADATA: _READ,
    Route.MODEL_READY: _READ, Route.PING: _READ, Route.VERSION: _READ,
    Route.FEEDBACK: ("POST",)}

_FIXED = {"/v2/health/live": Route.LIVE, "/v2/health/ready": Route.READY,
          "/metrics": Route.METRICS, "/v2": Route.SERVER_METADATA,
          "/invocations": Route.INVOCATIONS, "/ping": Route.PING, "/health": Route.PING,
          "/version": Route.VERSION}


class Match(NamedTuple):
    route: Route
    model: str | None = None  # the {m} of /v2/models/{m}/...
    version: str | None = None  # the {v} of /v2/models/{m}/versions/{v}/...


def match(path: str) -> Match:
    """The route of `path` (404 when there is none)."""
    route = _FIXED.get(path)
    if route is not None:
        return Match(route)
    parts = path.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "v2" and parts[1] == "models":
        model, rest, version = parts[2], parts[3:], None
        if len(rest) >= 2 and rest[0] == "versions":
            version, rest = rest[1], rest[2:]
        if rest == ["infer"]:
            return Match(Route.INFER, model, version)
        if rest == []:
            return Match(Route.MODEL_METADATA, model, version)
        if rest == ["ready"]:
            return Match(Route.MODEL_READY, model, version)
        if rest == ["feedback"] and version is None:
            return Match(Route.FEEDBACK, model)
    raise ClientError(404, f"no route {path}")


def check_method(route: Route, method: str) -> None:
    allowed = METHODS[route]
    if method not in allowed:
        raise ClientError(405, f"use {' or '.join(allowed)}",
                          headers=[(b"allow", ", ".join(allowed).encode())])

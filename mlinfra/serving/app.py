"""The endpoint server: a plain ASGI app (run by uvicorn) speaking the Open Inference
Protocol v2 and MLflow's /invocations.

This module ties the server's parts together: routing (`routes`), keys (`auth`), bodies
(`http`), inference (`inference`), hot reload (`reload`), status reports (`status`),
metrics, captures and the access log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import orjson

from mlinfra.serving import feedback, status, v2
from mlinfra.serving.access_log import AccessLog
from mlinfra.serving.auth import authorized, bearer
from mlinfra.serving.captures import Captures
from mlinfra.serving.catchall import CatchAll
from mlinfra.serving.connections import ClientNoise
from mlinfra.serving.errors import ClientError, InferenceFailed
from mlinfra.serving.http import JSON, Answer, error_answer, read_body
from mlinfra.serving.inference import Inference, pick
from mlinfra.serving.limits import Limits
from mlinfra.serving.metrics import Metrics
from mlinfra.serving.reload import ConfigReloader
from mlinfra.serving.routes import OPEN, Route, check_method, match
from mlinfra.serving.shared import SharedMetrics
from mlinfra.serving.status import STATUS_S
from mlinfra.serving.table import Table, read_config

Scope = dict[str, Any]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlinfra")
    except PackageNotFoundError:
        return "unknown"


VERSION = _version().encode()
MAX_REQUEST_ID = 200  # longer ids a client sends are replaced by one of the server's


class EndpointApp:
    def __init__(self, config_path: Path) -> None:
        config = read_config(config_path)
        limits = Limits.from_environment()
        self.status_dir = Path(config["status_dir"])
        self.access_log = AccessLog(config_path.parent / "access.log", limits.access_log_bytes,
                                    limits.backups) if config.get("access_log", True) else None
        self.metrics = Metrics()
        self.shared = SharedMetrics.from_environment(self.metrics)
        self.captures = Captures(limits.captures_bytes * (limits.backups + 1),
                                 limits.captures_flush_s)
        self.reloader = ConfigReloader(config_path, self._report)
        self.inference = Inference(self.metrics, self.captures, self._spawn)
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()

    @property
    def table(self) -> Table | None:
        return self.reloader.table

    # --- lifecycle ------------------------------------------------------------------

    async def _startup(self) -> None:
        self.status_dir.mkdir(parents=True, exist_ok=True)
        await self.reloader.load()
        self._report()
        self._tasks = [asyncio.create_task(self.reloader.watch(self._spawn)),
                       asyncio.create_task(self._reports())]

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """A fire-and-forget task, referenced until done (or it may be collected)."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _reports(self) -> None:
        while True:
            await asyncio.sleep(STATUS_S)
            self._report()

    def _report(self) -> None:
        """Every STATUS_S and after each reload: flush what is buffered, then say what
        this worker serves."""
        self.captures.flush()
        if self.access_log is not None:
            self.access_log.flush()
        table = self.table
        if table is not None:
            for deployment in table.deployments.values():
                sizes, deployment.batcher.batch_sizes = deployment.batcher.batch_sizes, []
                if sizes:
                    self.metrics.observe_batches(deployment.name, sizes)
        status.write(self.status_dir, status.report(table, self.reloader.error,
                                                    self.reloader.error_generation,
                                                    self.metrics))
        self.shared.publish()

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self._startup()
                except Exception as err:
                    await send({"type": "lifespan.startup.failed", "message": str(err)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                for task in self._tasks:
                    task.cancel()
                self.captures.close()
                if self.access_log is not None:
                    self.access_log.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    # --- ASGI -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        request_id = request_id_of(scope["headers"])
        try:
            answer = await self._answer(scope, receive, request_id)
        except ClientError as err:
            answer = error_answer(err)
        except InferenceFailed as err:
            answer = Answer(500, orjson.dumps({"error": f"inference failed: {err}"[:500]}),
                            JSON, [], err.deployment)
        await send({"type": "http.response.start", "status": answer.status,
                    "headers": [(b"content-type", answer.content_type),
                                (b"content-length", b"%d" % len(answer.body)),
                                *answer.headers, (b"x-request-id", request_id.encode())]})
        await send({"type": "http.response.body", "body": answer.body})
        elapsed = time.perf_counter() - started
        if answer.deployment != "-":
            self.metrics.observe(answer.deployment, answer.status, elapsed)
        if self.access_log is not None:
            self.access_log.record(scope["method"], scope["path"], answer.status,
                                   answer.deployment, elapsed)

    async def _answer(self, scope: Scope, receive: Any, request_id: str) -> Answer:
        found = match(scope["path"])
        route = found.route
        check_method(route, scope["method"])
        table = self.table
        if route is Route.LIVE:
            return Answer(200, b'{"live":true}')
        if route is Route.READY or route is Route.PING:
            ready = table is not None and bool(table.deployments)
            if route is Route.PING:  # MLflow's answer: a newline
                return Answer(200 if ready else 503, b"\n")
            return Answer(200 if ready else 503, orjson.dumps({"ready": ready}))
        if route is Route.VERSION:
            return Answer(200, VERSION, b"text/plain")
        if table is None:
            raise ClientError(503, "the endpoint is starting")
        headers = dict(scope["headers"])
        if route not in OPEN and not authorized(table.key_hashes,
                                                bearer(headers.get(b"authorization"))):
            raise ClientError(401, "a valid key is required: Authorization: Bearer KEY")
        pinned_raw = headers.get(b"mlinfra-deployment")
        pinned = pinned_raw.decode("latin-1") if pinned_raw else None
        if route is Route.METRICS:
            return Answer(200, self.shared.view().render(table.endpoint).encode(),
                          b"text/plain; version=0.0.4")
        if route is Route.SERVER_METADATA:
            return Answer(200, orjson.dumps({"name": "mlinfra", "version": VERSION.decode(),
                                             "extensions": ["binary_tensor_data"]}))
        if route is Route.INVOCATIONS:
            deployment = pick(table, pinned)
            body = await read_body(receive, headers, table.max_request_bytes)
            return await self.inference.answer(table, deployment, body, headers,
                                               invocations=True, request_id=request_id)
        if found.model != table.endpoint:
            raise ClientError(404, f"no model '{found.model}': this endpoint serves "
                              f"'{table.endpoint}'")
        deployment = pick(table, pinned, found.version)
        if route is Route.INFER:
            body = await read_body(receive, headers, table.max_request_bytes)
            return await self.inference.answer(table, deployment, body, headers,
                                               invocations=False, request_id=request_id)
        if route is Route.FEEDBACK:
            body = await read_body(receive, headers, table.max_request_bytes)
            return self._feedback(table, body)
        if route is Route.MODEL_READY:
            return Answer(200, orjson.dumps({"name": table.endpoint, "ready": True}))
        return Answer(200, orjson.dumps(v2.metadata(table, deployment.model)))


    def _feedback(self, table: Table, body: bytes) -> Answer:
        if not table.collect_path:
            raise ClientError(409, f"endpoint {table.endpoint} captures no requests (it has "
                              "no collect:), so there is nothing to label")
        ids, rows, labels = feedback.decode(body)
        self.captures.feedback(table, ids, rows, labels)
        return Answer(200, orjson.dumps({"accepted": len(labels)}))


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's own `x-request-id` when it sends a usable one, else a new one."""
    for name, value in headers:
        if name == b"x-request-id":
            text = value.decode("latin-1").strip()
            if 0 < len(text) <= MAX_REQUEST_ID and text.isprintable():
                return text
            break
    return uuid.uuid4().hex


def create_app() -> CatchAll:
    """uvicorn's factory, in each worker: the config file comes from
    MLINFRA_ENDPOINT_CONFIG."""
    logging.getLogger("uvicorn.error").addFilter(ClientNoise())
    return CatchAll(EndpointApp(Path(os.environ["MLINFRA_ENDPOINT_CONFIG"])))

"""The endpoint server: a plain ASGI app (run by uvicorn) speaking the Open Inference
Protocol v2 and MLflow's /invocations.

Each worker process holds a routing table built from the endpoint's config file and
swaps in a new one, built and warmed up aside, when the file changes: deployments
change without a restart and without a failed request.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlinfra.serving import status
from mlinfra.serving.metrics import Metrics
from mlinfra.serving.protocol import (
    ONNX_TO_V2,
    ClientError,
    check_inputs,
    decode_invocations,
    decode_v2,
    encode_invocations,
    encode_v2,
    parse_json,
)
from mlinfra.serving.table import Deployment, Table, build, read_config, retired

Scope = dict[str, Any]
JSON = b"application/json"
_RELOAD_S = 0.1
_STATUS_S = 0.25
_MAX_PENDING = 1024  # requests waiting per deployment before 503


class InferenceFailed(Exception):
    """The model failed on a request that passed every check: a 500 of `deployment`."""

    def __init__(self, deployment: str, error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.deployment = deployment


class EndpointApp:
    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.table: Table | None = None
        self.metrics = Metrics()
        self.captures = Captures()
        self.error = ""
        self.error_generation: int | None = None
        self._version = (0, 0)  # (inode, mtime) of the config file this worker last read
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        config = read_config(config_path)
        self.status_dir = Path(config["status_dir"])
        self.access_log = bool(config.get("access_log", True))

    # --- lifecycle ------------------------------------------------------------------

    async def _startup(self) -> None:
        self._version = _file_version(self.config_path)
        self.status_dir.mkdir(parents=True, exist_ok=True)
        config = read_config(self.config_path)
        try:
            self.table = await asyncio.to_thread(build, config)
        except Exception as err:  # reported for the generation that caused it, then fatal
            self.error, self.error_generation = f"{type(err).__name__}: {err}", \
                config.get("generation")
            self._write_status()
            raise
        self._write_status()
        self._tasks = [asyncio.create_task(self._watch()), asyncio.create_task(self._report())]

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_RELOAD_S)
            try:
                version = _file_version(self.config_path)
            except OSError:
                continue
            if version == self._version:
                continue
            self._version = version
            config: dict[str, Any] = {}
            try:
                config = read_config(self.config_path)
                if self.table is not None and config["generation"] == self.table.generation:
                    continue
                new = await asyncio.to_thread(build, config, self.table)
            except Exception as err:  # a bad new config keeps the current table serving
                self.error = f"{type(err).__name__}: {err}"
                self.error_generation = config.get("generation")
                self._write_status()
                continue
            old, self.table, self.error, self.error_generation = self.table, new, "", None
            self._write_status()
            if old is not None:
                for deployment in retired(old, new):
                    self._spawn(self._retire(deployment))

    def _spawn(self, coroutine: Any) -> None:
        """A fire-and-forget task, referenced until done (or it may be collected)."""
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @staticmethod
    async def _retire(deployment: Deployment) -> None:
        """Free a replaced session once the requests it is answering are done."""
        while deployment.batcher.in_flight:
            await asyncio.sleep(0.05)
        await asyncio.to_thread(deployment.batcher.close)

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(_STATUS_S)
            self._write_status()

    def _write_status(self) -> None:
        self.captures.flush()
        table = self.table
        if table is not None:
            for deployment in table.deployments.values():
                sizes, deployment.batcher.batch_sizes = deployment.batcher.batch_sizes, []
                if sizes:
                    self.metrics.observe_batches(deployment.name, sizes)
        status.write(self.status_dir, status.report(table, self.error, self.error_generation,
                                                    self.metrics))

    # --- ASGI -----------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        status, label = 500, "-"
        try:
            status, label, body, ctype, extra = await self._route(scope, receive)
        except ClientError as err:
            status, body, ctype, extra = err.status, orjson.dumps({"error": err.message}), \
                JSON, []
            label = err.deployment or "-"
            if status == 401:
                extra = [(b"www-authenticate", b"Bearer")]
            elif status == 503:
                extra = [(b"retry-after", b"1")]
        except InferenceFailed as err:
            status, body, ctype, extra = 500, orjson.dumps(
                {"error": f"inference failed: {err}"[:500]}), JSON, []
            label = err.deployment
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", ctype),
                                (b"content-length", b"%d" % len(body)), *extra]})
        await send({"type": "http.response.body", "body": body})
        elapsed = time.perf_counter() - started
        if label != "-":
            self.metrics.observe(label, status, elapsed)
        if self.access_log:
            sys.stdout.buffer.write(orjson.dumps(  # round() costs more than the rest
                {"ts": int(time.time() * 1000) / 1000, "method": scope["method"],
                 "path": scope["path"], "status": status, "deployment": label,
                 "ms": int(elapsed * 1_000_000) / 1000}, option=orjson.OPT_APPEND_NEWLINE))

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
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _route(self, scope: Scope, receive: Any
                     ) -> tuple[int, str, bytes, bytes, list[tuple[bytes, bytes]]]:
        path, method = scope["path"], scope["method"]
        table = self.table
        if path == "/v2/health/live":
            return 200, "-", b'{"live":true}', JSON, []
        if path == "/v2/health/ready":
            ready = table is not None and bool(table.deployments)
            return (200 if ready else 503), "-", orjson.dumps({"ready": ready}), JSON, []
        if table is None:
            raise ClientError(503, "the endpoint is starting")
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else None
        if not table.authorized(token):
            raise ClientError(401, "a valid key is required: Authorization: Bearer KEY")
        pinned_raw = headers.get(b"mlinfra-deployment")
        pinned = pinned_raw.decode("latin-1") if pinned_raw else None
        if path == "/metrics":
            return 200, "-", self.metrics.render(table.endpoint).encode(), \
                b"text/plain; version=0.0.4", []
        if path == "/v2":
            return 200, "-", orjson.dumps({"name": "mlinfra", "extensions": []}), JSON, []
        if path == "/invocations":
            self._method(method, "POST")
            return await self._infer(table, pinned, receive, headers, invocations=True)
        parts = path.strip("/").split("/")
        if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
            if parts[2] != table.endpoint:
                raise ClientError(404, f"no model '{parts[2]}': this endpoint serves "
                                  f"'{table.endpoint}'")
            rest = parts[3:]
            if len(rest) >= 2 and rest[0] == "versions":
                rest = rest[2:]  # a version in the path: the traffic split still decides
            if rest == ["infer"]:
                self._method(method, "POST")
                return await self._infer(table, pinned, receive, headers, invocations=False)
            if rest in ([], ["ready"]):
                deployment = self._pick(table, pinned)
                if rest == ["ready"]:
                    return 200, "-", orjson.dumps({"name": table.endpoint, "ready": True}), \
                        JSON, []
                return 200, "-", orjson.dumps(_metadata(table, deployment)), JSON, []
        raise ClientError(404, f"no route {method} {path}")

    @staticmethod
    def _method(method: str, expected: str) -> None:
        if method != expected:
            raise ClientError(405, f"use {expected}")

    @staticmethod
    def _pick(table: Table, pinned: str | None) -> Deployment:
        deployment = table.pick(pinned)
        if deployment is None:
            if pinned is not None:
                raise ClientError(404, f"no deployment '{pinned}'; deployments: "
                                  f"{', '.join(table.deployments)}")
            raise ClientError(503, "no deployment takes traffic")
        return deployment

    async def _infer(self, table: Table, pinned: str | None, receive: Any,
                     headers: dict[bytes, bytes], invocations: bool
                     ) -> tuple[int, str, bytes, bytes, list[tuple[bytes, bytes]]]:
        body = await _read_body(receive, headers, table.max_request_bytes)
        data = parse_json(body)
        deployment = self._pick(table, pinned)
        model = deployment.model
        try:
            feeds = (decode_invocations(data, model.inputs) if invocations
                     else decode_v2(data))
            feeds = check_inputs(feeds, model.inputs)
            batcher = deployment.batcher
            if batcher.in_flight >= _MAX_PENDING:
                raise ClientError(503, "overloaded: retry shortly")
            if batcher.inline:  # scored on the loop within max_batch_delay_ms; no timeout
                outputs = await batcher.infer(feeds)  # could interrupt it there anyway
            else:
                async with asyncio.timeout(deployment.timeout_s):
                    outputs = await batcher.infer(feeds)
        except ClientError as err:
            err.deployment = deployment.name
            raise
        except TimeoutError:
            raise ClientError(504, f"inference took longer than "
                              f"{deployment.timeout_s * 1000:g} ms", deployment.name) from None
        except Exception as err:
            raise InferenceFailed(deployment.name, err) from err
        for name, share in table.mirror.items():
            shadow = table.deployments.get(name)
            if shadow is not None and shadow is not deployment and random.random() * 100 < share:
                self._spawn(self._shadow(shadow, feeds, outputs))
        if table.collect_path and random.random() < table.collect_sample:
            self.captures.write(table.collect_path, deployment, feeds, outputs)
        names = model.output_names
        if invocations:
            payload = encode_invocations(names, outputs)
        else:
            request_id = data.get("id") if isinstance(data, dict) else None
            payload = encode_v2(table.endpoint, str(model.version), names, outputs,
                                str(request_id) if request_id is not None else None)
        return 200, deployment.name, payload, JSON, deployment.headers

    async def _shadow(self, shadow: Deployment, feeds: dict[str, np.ndarray],
                      answer: list[np.ndarray]) -> None:
        """Score a copy on a mirrored deployment; record agreement, answer no one."""
        try:
            async with asyncio.timeout(shadow.timeout_s):
                got = await shadow.batcher.infer(feeds)
            same = len(got) == len(answer) and all(
                g.shape == a.shape and np.allclose(g, a, rtol=1e-4, atol=1e-6)
                for g, a in zip(got, answer, strict=True))
            outcome = "agree" if same else "differ"
        except Exception:
            outcome = "error"
        self.metrics.mirror[(shadow.name, outcome)] += 1


def _file_version(path: Path) -> tuple[int, int]:
    """A new config replaces the file (a new inode), even within one mtime tick."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


async def _read_body(receive: Any, headers: dict[bytes, bytes], limit: int) -> bytes:
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"the body is larger than {limit} bytes")
    message = await receive()
    body: bytes = message.get("body", b"")
    chunks, size = [body], len(body)
    while message.get("more_body") and size <= limit:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise ClientError(413, f"the body is larger than {limit} bytes")
    return body if len(chunks) == 1 else b"".join(chunks)


def _metadata(table: Table, deployment: Deployment) -> dict[str, Any]:
    def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": i["name"], "datatype": ONNX_TO_V2.get(i["type"], "BYTES"),
                 "shape": [-1 if d is None else d for d in i["shape"]]} for i in items]

    return {"name": table.endpoint, "versions": [str(deployment.model.version)],
            "platform": "onnxruntime_onnx", "inputs": tensors(deployment.model.inputs),
            "outputs": tensors(deployment.model.outputs)}


class Captures:
    """Sampled requests and answers, as JSON lines in this worker's file next to `path`.
    The file stays open and is flushed with each status report (every 0.25 s) and at
    shutdown, rather than opened for each request."""

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}

    def write(self, path: str, deployment: Deployment, feeds: dict[str, np.ndarray],
              outputs: list[np.ndarray]) -> None:
        record = {"ts": time.time(), "deployment": deployment.name,
                  "model": deployment.label,
                  "inputs": {k: v.tolist() for k, v in feeds.items()},
                  "outputs": {n: o.tolist() for n, o in zip(deployment.model.output_names,
                                                            outputs, strict=True)}}
        with contextlib.suppress(OSError):
            file = self._files.get(path)
            if file is None:
                target = Path(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                name = target.with_suffix(f".{os.getpid()}.jsonl")
                file = self._files[path] = open(name, "ab")  # noqa: SIM115 (kept open)
            file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        for file in self._files.values():
            with contextlib.suppress(OSError):
                file.flush()

    def close(self) -> None:
        self.flush()
        for file in self._files.values():
            with contextlib.suppress(OSError):
                file.close()
        self._files.clear()


def create_app() -> EndpointApp:
    """uvicorn's factory: the config file comes from MLINFRA_ENDPOINT_CONFIG."""
    return EndpointApp(Path(os.environ["MLINFRA_ENDPOINT_CONFIG"]))

"""An endpoint app in this process, driven through ASGI as uvicorn would: requests sent
together are scored together, so batching can be tested without a server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import orjson


def write_config(folder: Path, model: bytes, max_batch: int = 32,
                 delay_ms: float = 2.0) -> Path:
    path = folder / "m.onnx"
    path.write_bytes(model)
    config = {"endpoint": "api", "generation": 1, "status_dir": str(folder / "status"),
              "access_log": False, "traffic": {"blue": 100},
              "deployments": {"blue": {"model": "m", "version": 1, "path": str(path),
                                       "sha256": hashlib.sha256(model).hexdigest(),
                                       "max_batch_size": max_batch,
                                       "max_batch_delay_ms": delay_ms,
                                       "timeout_ms": 5000}}}
    config_path = folder / "config.json"
    config_path.write_text(json.dumps(config))
    return config_path


class InProcess:
    """The app of `config_path`, started (lifespan) and stopped by `async with`."""

    def __init__(self, config_path: Path) -> None:
        from mlinfra.serving.app import create_app

        saved = os.environ.get("MLINFRA_ENDPOINT_CONFIG")
        os.environ["MLINFRA_ENDPOINT_CONFIG"] = str(config_path)
        try:
            self.app = create_app()  # as uvicorn makes it, in each worker
        finally:
            if saved is None:
                del os.environ["MLINFRA_ENDPOINT_CONFIG"]
            else:
                os.environ["MLINFRA_ENDPOINT_CONFIG"] = saved

    async def __aenter__(self) -> InProcess:
        await self._lifespan("startup")
        return self

    async def __aexit__(self, *_: object) -> None:
        await self._lifespan("shutdown")

    async def _lifespan(self, phase: str) -> None:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        await queue.put({"type": f"lifespan.{phase}"})
        done = asyncio.Event()
        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            done.set()

        task = asyncio.create_task(self.app({"type": "lifespan"}, queue.get, send))
        await done.wait()
        assert sent[0]["type"].endswith("complete"), sent
        if phase == "shutdown":
            await task
        else:
            self._lifespan_task = task

    async def request(self, method: str, path: str, body: Any = None
                      ) -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else orjson.dumps(body) if body else b""
        messages = [{"type": "http.request", "body": raw, "more_body": False}]
        answer: dict[str, Any] = {}

        async def receive() -> dict[str, Any]:
            return messages.pop(0) if messages else {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
            else:
                answer["body"] = answer.get("body", b"") + message.get("body", b"")

        scope = {"type": "http", "method": method, "path": path,
                 "headers": [(b"content-type", b"application/json"),
                             (b"content-length", b"%d" % len(raw))]}
        await self.app(scope, receive, send)
        text = answer.get("body", b"")
        try:
            return answer["status"], orjson.loads(text)
        except orjson.JSONDecodeError:
            return answer["status"], text


def v2(inputs: dict[str, tuple[str, list[int], Any]]) -> dict[str, Any]:
    return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}
                       for name, (datatype, shape, data) in inputs.items()]}

"""A deployment's loaded model, and the dynamic batcher in front of it.

Inference runs on one thread per deployment, never on the event loop, so health
checks and other deployments keep answering while a slow model computes. Requests
that arrive together are concatenated and scored in one onnxruntime call, which
also pays the thread hand-off once per batch rather than once per request.
"""

from __future__ import annotations

import asyncio
import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlinfra.serving.protocol import ONNX_TO_V2, V2_TYPES


class ModelLoadError(Exception):
    pass


def load_session(path: Path, sha256: str | None = None) -> Any:
    import onnxruntime as ort

    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ModelLoadError(f"{path} does not match its sha256 {sha256[:12]}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _describe(items: Any) -> list[dict[str, Any]]:
    return [{"name": i.name, "type": i.type,
             "shape": [d if isinstance(d, int) else None for d in i.shape]} for i in items]


@dataclass
class LoadedModel:
    """An onnxruntime session with its signature. Invariant: warmed up (answered one
    request) before any traffic reaches it."""

    name: str
    version: int
    sha256: str
    session: Any
    inputs: list[dict[str, Any]] = field(default_factory=list)
    outputs: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, name: str, version: int, path: Path, sha256: str) -> LoadedModel:
        session = load_session(path, sha256)
        model = cls(name, version, sha256, session, _describe(session.get_inputs()),
                    _describe(session.get_outputs()))
        model.warm_up()
        return model

    @property
    def output_names(self) -> list[str]:
        return [o["name"] for o in self.outputs]

    def warm_up(self) -> None:
        feeds: dict[str, np.ndarray] = {}
        for item in self.inputs:
            shape = [d if d is not None else 1 for d in item["shape"]]
            dtype = V2_TYPES[ONNX_TO_V2.get(item["type"], "FP32")]
            feeds[item["name"]] = np.zeros(shape, dtype=dtype)
        self.run(feeds)

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(None, feeds))

    def batchable(self) -> bool:
        """Concatenating along the first axis is sound when every input and output is
        batch-major with fixed other dimensions."""
        return all(len(i["shape"]) >= 1 and i["shape"][0] is None
                   and all(d is not None for d in i["shape"][1:])
                   for i in self.inputs + self.outputs)


class Batcher:
    """Collects requests for up to `max_delay_s` or `max_batch` requests, then scores
    them in one call on the deployment's own thread."""

    def __init__(self, model: LoadedModel, max_batch: int, max_delay_s: float) -> None:
        self.model = model
        self.max_batch = max(1, max_batch) if model.batchable() else 1
        self.max_delay_s = max_delay_s
        self.executor = ThreadPoolExecutor(max_workers=1,
                                           thread_name_prefix=f"infer-{model.name}")
        self.pending: list[tuple[dict[str, np.ndarray], asyncio.Future[list[np.ndarray]]]] = []
        self.in_flight = 0
        self.batch_sizes: list[int] = []
        self._timer: asyncio.TimerHandle | None = None

    async def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        self.in_flight += 1
        try:
            if self.max_batch == 1:
                self.batch_sizes.append(1)
                return await loop.run_in_executor(self.executor, self.model.run, feeds)
            future: asyncio.Future[list[np.ndarray]] = loop.create_future()
            self.pending.append((feeds, future))
            if len(self.pending) >= self.max_batch:
                self._flush()
            elif self._timer is None:
                self._timer = loop.call_later(self.max_delay_s, self._flush)
            return await future
        finally:
            self.in_flight -= 1

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self.pending = self.pending, []
        if not batch:
            return
        self.batch_sizes.append(len(batch))
        loop = asyncio.get_running_loop()
        task = loop.run_in_executor(self.executor, self._run_batch, [f for f, _ in batch])
        task.add_done_callback(lambda done: self._deliver(batch, done))

    def _run_batch(self, requests: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
        if len(requests) == 1:
            return [self.model.run(requests[0])]
        names = list(requests[0])
        joined = {n: np.concatenate([r[n] for r in requests]) for n in names}
        outputs = self.model.run(joined)
        sizes = [len(r[names[0]]) for r in requests]
        bounds = np.cumsum(sizes)[:-1]
        split = [np.split(o, bounds) for o in outputs]
        return [[parts[i] for parts in split] for i in range(len(requests))]

    @staticmethod
    def _deliver(batch: list[tuple[Any, asyncio.Future[list[np.ndarray]]]],
                 done: asyncio.Future[list[list[np.ndarray]]]) -> None:
        error = done.exception()
        for index, (_, future) in enumerate(batch):
            if future.done():
                continue  # its caller timed out
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result()[index])

    def close(self) -> None:
        self.executor.shutdown(wait=True)

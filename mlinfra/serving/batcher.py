"""The dynamic batcher in front of a deployment's model.

A model slower than half a millisecond runs on its deployment's own thread, so health
checks and other deployments keep answering while it computes; a faster one runs on
the event loop, where a thread hand-off would cost more than its inference. Requests
that arrive together, with inputs of the same shapes past their first axis, are
concatenated and scored in one onnxruntime call; each gets back its own rows.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mlinfra.serving.model import LoadedModel

Outcome = list[np.ndarray] | Exception  # a request's outputs, or why the model failed it
Waiting = tuple[dict[str, np.ndarray], "asyncio.Future[list[np.ndarray]]"]


def _shapes(feeds: dict[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """What requests scored together share: each input's name, dimensions past the first
    and dtype."""
    return tuple((name, array.shape[1:], array.dtype.str) for name, array in feeds.items())


class Batcher:
    """Scores the requests that arrived together in one call.

    No request waits on a timer. A batch keeps filling for as long as requests join
    it, one turn of the event loop at a time: it is scored after the first turn in
    which none joined, when it holds `max_batch` requests, or once its first request
    has waited `max_delay_s`. While a batch runs on the deployment's own thread the next
    one fills, and health checks and other deployments keep answering.

    A model faster than `INLINE_S` (measured at warm-up) is scored on the event loop:
    a thread hand-off costs more than its inference. Measured here with the quickstart's
    model (server CPU per request at 8 and 64 connections): scoring each request alone
    cost about 45% and 100% more than this, and scoring each batch on the turn after
    its first request, without waiting for a turn with no newcomers, 20% and 10% more.
    """

    INLINE_S = 0.0005

    def __init__(self, model: LoadedModel, max_batch: int, max_delay_s: float = 0.002) -> None:
        self.model = model
        self.max_batch = max(1, max_batch) if model.batchable() else 1
        self.max_delay_s = max_delay_s
        self.inline = model.latency_s < self.INLINE_S
        self.executor = ThreadPoolExecutor(max_workers=1,
                                           thread_name_prefix=f"infer-{model.name}")
        self.pending: list[tuple[dict[str, np.ndarray], asyncio.Future[list[np.ndarray]]]] = []
        self.in_flight = 0
        self.batch_sizes: list[int] = []
        self._scheduled = False
        self._busy = False
        self._first_at = 0.0  # when the oldest pending request came
        self._joined = 0  # pending requests at the last look

    async def infer(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[np.ndarray]] = loop.create_future()
        if not self.pending:
            self._first_at = time.monotonic()
        self.pending.append((feeds, future))
        self.in_flight += 1
        if len(self.pending) >= self.max_batch and not self._busy:
            self._flush()
        elif not self._scheduled and not self._busy:
            self._scheduled = True
            loop.call_soon(self._flush)
        try:
            return await future
        finally:
            self.in_flight -= 1

    def _flush(self) -> None:
        self._scheduled = False
        if self._busy or not self.pending:
            return
        waiting = len(self.pending)
        if (self._joined < waiting < self.max_batch
                and time.monotonic() - self._first_at < self.max_delay_s):
            self._joined = waiting  # some joined in the last turn: more may be coming
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
            return
        self._joined = 0
        batch = self._take()
        self.batch_sizes.append(len(batch))
        requests = [f for f, _ in batch]
        if self.inline:
            self._deliver_results(batch, self._run_batch(requests))
            if self.pending:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
            return
        self._busy = True
        loop = asyncio.get_running_loop()
        task = loop.run_in_executor(self.executor, self._run_batch, requests)
        task.add_done_callback(lambda done: self._deliver(batch, done))

    def _take(self) -> list[Waiting]:
        """The oldest pending request and, up to `max_batch`, the later ones whose inputs
        have its shapes past the first axis and its dtypes; the others keep waiting, in
        order."""
        if self.max_batch == 1:
            first, self.pending = self.pending[:1], self.pending[1:]
            return first
        key = _shapes(self.pending[0][0])
        batch: list[Waiting] = []
        rest: list[Waiting] = []
        for entry in self.pending:
            if len(batch) < self.max_batch and _shapes(entry[0]) == key:
                batch.append(entry)
            else:
                rest.append(entry)
        self.pending = rest
        return batch

    def _run_batch(self, requests: list[dict[str, np.ndarray]]) -> list[Outcome]:
        """Each request's outputs, or the error that scoring it raised. A batch the model
        fails on (or answers with other rows than it was given) is scored again one
        request at a time, so a request that makes the model fail fails alone."""
        if len(requests) == 1:
            return [self._run_alone(requests[0])]
        names = list(requests[0])
        rows = [len(r[names[0]]) for r in requests]
        total = sum(rows)
        try:
            outputs = self.model.run({n: np.concatenate([r[n] for r in requests])
                                      for n in names})
        except Exception:
            return [self._run_alone(r) for r in requests]
        if any(o.ndim == 0 or len(o) != total for o in outputs):
            return [self._run_alone(r) for r in requests]
        answers: list[Outcome] = []
        start = 0
        for count in rows:
            answers.append([o[start:start + count] for o in outputs])
            start += count
        return answers

    def _run_alone(self, feeds: dict[str, np.ndarray]) -> Outcome:
        try:
            return self.model.run(feeds)
        except Exception as err:
            return err

    @staticmethod
    def _deliver_results(batch: list[tuple[Any, asyncio.Future[list[np.ndarray]]]],
                         results: list[Outcome]) -> None:
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():
                continue  # its caller timed out
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _deliver(self, batch: list[tuple[Any, asyncio.Future[list[np.ndarray]]]],
                 done: asyncio.Future[list[Outcome]]) -> None:
        self._busy = False
        error = done.exception()
        if error is not None:
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
        else:
            self._deliver_results(batch, done.result())
        if self.pending:
            self._flush()  # the requests that arrived meanwhile

    def close(self) -> None:
        self.executor.shutdown(wait=True)

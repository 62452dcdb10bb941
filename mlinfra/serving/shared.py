"""One view of an endpoint's metrics across the worker processes of its server.

Each worker keeps its counts in memory (nothing shared on a request's path) and writes
a snapshot of them to its own file in the server's metrics folder with every status
report (STATUS_S). A scrape, whichever worker answers it, adds this worker's live
counts to every other file, including those of workers that exited: counters never
seem to reset while the server runs. The folder belongs to one server instance (the
supervisor names it after its pid and removes it when it stops)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import orjson

from mlinfra.serving.metrics import Metrics

METRICS_DIR = "MLINFRA_METRICS_DIR"


class SharedMetrics:
    def __init__(self, metrics: Metrics, folder: Path | None) -> None:
        self.metrics = metrics
        self.folder = folder
        self._mine = folder / f"{os.getpid()}.json" if folder else None

    @classmethod
    def from_environment(cls, metrics: Metrics) -> SharedMetrics:
        folder = os.environ.get(METRICS_DIR)
        return cls(metrics, Path(folder) if folder else None)

    def publish(self) -> None:
        """Replace this worker's snapshot in one step."""
        if self._mine is None:
            return
        tmp = self._mine.with_suffix(".tmp")
        with contextlib.suppress(OSError):
            tmp.write_bytes(orjson.dumps(self.metrics.snapshot()))
            os.replace(tmp, self._mine)

    def view(self) -> Metrics:
        """Every worker's counts: this one's as they are now, the others' as of their
        last snapshot (at most STATUS_S old)."""
        total = Metrics()
        total.add(self.metrics.snapshot())
        if self.folder is None:
            return total
        for path in self.folder.glob("*.json"):
            if path == self._mine:
                continue
            with contextlib.suppress(OSError, ValueError, TypeError):
                total.add(orjson.loads(path.read_bytes()))
        return total

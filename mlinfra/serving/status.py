"""Status reports: each worker writes what it serves (generation, load error, request
statistics) to its own file in the endpoint's status folder, which apply and rollouts
read to know when a new generation is served and how a deployment is doing."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import orjson

from mlinfra.serving.metrics import Metrics
from mlinfra.serving.table import Table

STATUS_S = 0.25


def write_status(status_dir: Path, table: Table | None, error: str, metrics: Metrics) -> None:
    """Replace this worker's status file in one step (never a half-written file)."""
    status = {"pid": os.getpid(), "generation": table.generation if table else None,
              "error": error, "at": time.time(), "stats": metrics.summary()}
    path = status_dir / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(OSError):
        tmp.write_bytes(orjson.dumps(status))
        os.replace(tmp, path)

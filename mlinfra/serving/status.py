"""A worker's status report: the file through which mlinfra knows what a worker serves.

Each worker writes `<status_dir>/<pid>.json` (atomically) every 0.25 s and after each
change of its routing table. mlinfra reads these files to wait for a generation, to
compare what every worker really serves with its state (drift), and to judge rollouts
on the requests of one hold window. The fields:

- `pid`, `at`: who wrote it, and when (time.time());
- `generation`: the config generation this worker serves (None while it starts);
- `serves`: per deployment, the model (`name:version`) and its sha256;
- `traffic`: per deployment with traffic, its share as served;
- `key_hashes`: the sorted SHA-256 hashes of the keys it accepts;
- `error`, `error_generation`: the last config this worker failed to load, and why;
  an error belongs to that generation only, never to a later one;
- `stats`: per deployment, cumulative since the worker started: `requests`, `errors`
  (5xx), `p99_ms`, and `latency` (`bounds` in seconds and a count per bucket, the last
  one past every bound), so that a window's p99 is the quantile of two reports'
  difference.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

from mlinfra.serving.metrics import Metrics
from mlinfra.serving.table import Table


def report(table: Table | None, error: str, error_generation: int | None,
           metrics: Metrics) -> dict[str, Any]:
    serves: dict[str, dict[str, Any]] = {}
    traffic: dict[str, float] = {}
    key_hashes: list[str] = []
    if table is not None:
        serves = {name: {"model": d.label, "sha256": d.model.sha256}
                  for name, d in table.deployments.items()}
        below = 0.0
        for name, cumulative in table.weights:
            traffic[name] = round(cumulative - below, 6)
            below = cumulative
        key_hashes = sorted(h.hex() for h in table.key_hashes)
    stats: dict[str, dict[str, Any]] = {}
    for name, summary in metrics.summary().items():
        hist = metrics.latency.get(name)
        stats[name] = {**summary, "latency": {
            "bounds": list(hist.buckets) if hist else [],
            "counts": list(hist.counts) if hist else []}}
    return {"pid": os.getpid(), "at": time.time(),
            "generation": table.generation if table is not None else None,
            "serves": serves, "traffic": traffic, "key_hashes": key_hashes,
            "error": error, "error_generation": error_generation, "stats": stats}


def write(status_dir: Path, status: dict[str, Any]) -> None:
    path = status_dir / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    with contextlib.suppress(OSError):
        tmp.write_bytes(orjson.dumps(status))
        os.replace(tmp, path)

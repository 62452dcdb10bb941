"""/metrics is one view of the endpoint, whichever worker answers
the scrape, and its counters do not reset when a worker is replaced."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Result, onnx_model
from tests.endpoint_client import Client, applied, call, endpoint_files

ENDPOINT = """\
kind: Model
name: fraud
from: {path: models/fraud.onnx}
---
kind: Endpoint
name: api
workers: 2
deployments: [{name: blue, model: fraud}]
traffic: {blue: 100}
"""
COUNTER = 'mlinfra_requests_total{endpoint="api",deployment="blue",code="200"}'


def scraped(url: str, key: str) -> int:
    status, text, _ = call(url, key, "GET", "/metrics")
    assert status == 200
    lines = [line for line in text.splitlines() if line.startswith(COUNTER)]
    return int(lines[0].split()[-1]) if lines else 0


def per_worker() -> dict[str, int]:
    """Requests answered by each worker, from the snapshots in its metrics folder."""
    counts = {}
    for path in endpoint_files("metrics/*/*.json"):
        snapshot = json.loads(path.read_text())
        counts[path.stem] = sum(n for _, _, n in snapshot["requests"])
    return counts


def test_every_scrape_counts_every_worker(project: Callable[..., Path],
                                          cli: Callable[..., Result]) -> None:
    project({"models/fraud.onnx": onnx_model(), "serving.yaml": ENDPOINT})
    with applied(cli) as (url, key):
        total = 0
        for _ in range(40):  # a connection each: the kernel spreads them over the workers
            with Client(url, key) as client:
                for _ in range(5):
                    assert client.request("POST", "/invocations", {"inputs": [[1, 2]]})[0] == 200
                    total += 1
        time.sleep(0.6)  # every worker has written its snapshot since
        assert [scraped(url, key) for _ in range(10)] == [total] * 10
        workers = per_worker()
        assert len([n for n in workers.values() if n]) == 2, workers  # both answered some
        victim = int(max(workers, key=lambda pid: workers[pid]))
        os.kill(victim, signal.SIGKILL)  # uvicorn starts another worker in its place
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(per_worker()) < 3:
            time.sleep(0.1)
        assert len(per_worker()) == 3
        assert [scraped(url, key) for _ in range(10)] == [total] * 10

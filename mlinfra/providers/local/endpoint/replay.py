"""Shadow traffic for a quiet endpoint: captured requests sent again to one deployment.

An endpoint with `collect:` keeps a sample of its requests as Parquet files under the
config's `collect.path` (`mlinfra.serving.captures`). When a rollout's hold sees no request at
all, those requests are replayed, pinned to the deployment being rolled out, so that a
quiet endpoint is judged on requests its clients really sent. The answers are read and
dropped: the caller judges the deployment by the server's own counters.
"""

from __future__ import annotations

import http.client
import json
import random
import threading
import time
from pathlib import Path
from typing import Any

SAMPLE = 500  # captured requests kept for a replay, chosen uniformly
MAX_RATE = 400.0  # requests per second, at most


def captured_requests(collect_path: str | None, limit: int = SAMPLE,
                      seed: int = 0, storage: dict[str, Any] | None = None) -> list[bytes]:
    """Up to `limit` captured requests as MLflow `/invocations` bodies (a table of the
    request's feature columns), a uniform sample (reservoir) of every capture file."""
    if not collect_path:
        return []
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlinfra.monitoring.captures import REQUESTS, Folder, RemoteFolder, files, source

    root: Folder = Path(collect_path)
    if "://" in collect_path:  # on the stack's object-storage artifacts (`storage`: how)
        from mlinfra.data.objects import location_of

        root = RemoteFolder(location_of(collect_path, storage, "captures"))

    rng = random.Random(seed)
    kept: list[bytes] = []
    seen = 0
    for path in files(root, REQUESTS):
        try:
            table = pq.read_table(source(path))
        except (OSError, pa.ArrowException):
            continue  # a damaged file: the others still replay
        meta = table.schema.metadata or {}
        features = [c for c in meta.get(b"mlinfra.features", b"").decode().split(",")
                    if c in table.column_names]
        if not features:
            continue
        ids = table.column("request_id").to_pylist()
        columns = [table.column(c).to_pylist() for c in features]
        requests: dict[str, list[list[object]]] = {}
        for index, rid in enumerate(ids):
            requests.setdefault(str(rid), []).append([c[index] for c in columns])
        for rows in requests.values():
            seen += 1
            body = json.dumps({"dataframe_split": {"columns": features, "data": rows}}
                              ).encode()
            if len(kept) < limit:
                kept.append(body)
            else:
                slot = rng.randrange(seen)
                if slot < limit:
                    kept[slot] = body
    return kept


class ShadowReplay:
    """Sends `bodies` in a loop to `deployment` of the endpoint at `port`, `rate` a
    second, from `start()` until `stop()`."""

    def __init__(self, port: int, key: str | None, deployment: str, bodies: list[bytes],
                 rate: float) -> None:
        self.port, self.key, self.deployment = port, key, deployment
        self.bodies = bodies
        self.interval = 1.0 / min(max(rate, 1.0), MAX_RATE)
        self.sent = 0
        self.statuses: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Start replaying; False when there is nothing to replay."""
        if not self.bodies:
            return False
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="shadow-replay",
                                            daemon=True)
            self._thread.start()
        return True

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _headers(self) -> dict[str, str]:
        headers = {"content-type": "application/json", "mlinfra-deployment": self.deployment}
        if self.key:
            headers["authorization"] = f"Bearer {self.key}"
        return headers

    def _run(self) -> None:
        conn: Any = None
        index = 0
        next_at = time.monotonic()
        while not self._stop.is_set():
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            body = self.bodies[index % len(self.bodies)]
            index += 1
            try:
                conn.request("POST", "/invocations", body=body, headers=self._headers())
                response = conn.getresponse()
                response.read()
                self.statuses[response.status] = self.statuses.get(response.status, 0) + 1
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = None
                self.statuses[0] = self.statuses.get(0, 0) + 1
            self.sent += 1
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        if conn is not None:
            conn.close()

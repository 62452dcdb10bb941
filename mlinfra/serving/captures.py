"""Request capture for drift monitoring: a sample of requests and their answers, as
JSON lines in the collect path (requests.jsonl), rotated by size (`Limits`)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import orjson

from mlinfra.serving.rotating import RotatingFile
from mlinfra.serving.table import Deployment


class Captures:
    """Buffered, and written out with each status report (every 0.25 s) and at
    shutdown, rather than for each request."""

    def __init__(self, max_bytes: int, backups: int) -> None:
        self.max_bytes = max_bytes
        self.backups = backups
        self._files: dict[str, RotatingFile] = {}

    def write(self, path: str, deployment: Deployment, feeds: dict[str, np.ndarray],
              outputs: list[np.ndarray]) -> None:
        record = {"ts": time.time(), "deployment": deployment.name,
                  "model": deployment.label,
                  "inputs": {k: v.tolist() for k, v in feeds.items()},
                  "outputs": {n: o.tolist() for n, o in zip(deployment.model.output_names,
                                                            outputs, strict=True)}}
        file = self._files.get(path)
        if file is None:
            file = self._files[path] = RotatingFile(Path(path), self.max_bytes, self.backups)
        file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        for file in self._files.values():
            file.flush()

    def close(self) -> None:
        for file in self._files.values():
            file.flush()
            file.close()
        self._files.clear()

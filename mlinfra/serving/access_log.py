"""The access log: one JSON line per request in the endpoint's access.log, next to its
config file, rotated by size (`Limits`)."""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from mlinfra.serving.rotating import RotatingFile


class AccessLog:
    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        self.file = RotatingFile(path, max_bytes, backups)

    def record(self, method: str, path: str, status: int, deployment: str,
               elapsed_s: float) -> None:
        self.file.write(orjson.dumps(  # round() costs more than the rest
            {"ts": int(time.time() * 1000) / 1000, "method": method, "path": path,
             "status": status, "deployment": deployment,
             "ms": int(elapsed_s * 1_000_000) / 1000}, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.flush()
        self.file.close()

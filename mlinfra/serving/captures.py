"""Request capture for drift monitoring: a sample of requests and their answers."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from mlinfra.serving.table import Deployment


class Captures:
    """Sampled requests and answers, as JSON lines in this worker's file next to `path`.
    The file stays open and is flushed with each status report (every 0.25 s) and at
    shutdown, rather than opened for each request."""

    def __init__(self) -> None:
        self._files: dict[str, Any] = {}

    def write(self, path: str, deployment: Deployment, feeds: dict[str, np.ndarray],
              outputs: list[np.ndarray]) -> None:
        record = {"ts": time.time(), "deployment": deployment.name,
                  "model": deployment.label,
                  "inputs": {k: v.tolist() for k, v in feeds.items()},
                  "outputs": {n: o.tolist() for n, o in zip(deployment.model.output_names,
                                                            outputs, strict=True)}}
        with contextlib.suppress(OSError):
            file = self._files.get(path)
            if file is None:
                target = Path(path)
                target.parent.mkdir(parents=True, exist_ok=True)
                name = target.with_suffix(f".{os.getpid()}.jsonl")
                file = self._files[path] = open(name, "ab")  # noqa: SIM115 (kept open)
            file.write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))

    def flush(self) -> None:
        for file in self._files.values():
            with contextlib.suppress(OSError):
                file.flush()

    def close(self) -> None:
        self.flush()
        for file in self._files.values():
            with contextlib.suppress(OSError):
                file.close()
        self._files.clear()

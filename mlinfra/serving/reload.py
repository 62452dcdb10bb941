"""Hot reload: each worker watches the endpoint's config file and swaps in the routing
table of a new generation, built and warmed up aside, without a restart and without a
failed request. A config that fails to build leaves the current table serving."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from mlinfra.serving.table import Deployment, Table, build, read_config, retired

RELOAD_S = 0.1

Spawn = Callable[[Coroutine[Any, Any, None]], None]


class ConfigReloader:
    """`table` is what this worker serves; `error` why the last config did not load
    ("" once a config loaded). `on_change` runs after each swap or failure."""

    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self.path = path
        self.table: Table | None = None
        self.error = ""
        self._on_change = on_change
        self._mtime = 0

    async def load(self) -> None:
        """The first table: a worker takes no traffic before it."""
        self._mtime = self.path.stat().st_mtime_ns
        self.table = await asyncio.to_thread(build, read_config(self.path))

    async def watch(self, spawn: Spawn) -> None:
        while True:
            await asyncio.sleep(RELOAD_S)
            try:
                mtime = self.path.stat().st_mtime_ns
            except OSError:
                continue
            if mtime == self._mtime:
                continue
            self._mtime = mtime
            try:
                config = read_config(self.path)
                if self.table is not None and config["generation"] == self.table.generation:
                    continue
                new = await asyncio.to_thread(build, config, self.table)
            except Exception as err:  # a bad new config keeps the current table serving
                self.error = f"{type(err).__name__}: {err}"
                self._on_change()
                continue
            old, self.table, self.error = self.table, new, ""
            self._on_change()
            if old is not None:
                for deployment in retired(old, new):
                    spawn(_retire(deployment))


async def _retire(deployment: Deployment) -> None:
    """Free a replaced session once the requests it is answering are done."""
    while deployment.batcher.in_flight:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(deployment.batcher.close)

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
    ("" once a config loaded) and `error_generation` that config's generation: an error
    belongs to the generation that caused it, never to a later one. `on_change` runs
    after each swap or failure."""

    def __init__(self, path: Path, on_change: Callable[[], None]) -> None:
        self.path = path
        self.table: Table | None = None
        self.error = ""
        self.error_generation: int | None = None
        self._on_change = on_change
        self._version = (0, 0)  # (inode, mtime) of the config file last read

    async def load(self) -> None:
        """The first table: a worker takes no traffic before it. A failure is reported
        for its generation, then raised (the worker cannot serve)."""
        self._version = _file_version(self.path)
        config = read_config(self.path)
        try:
            self.table = await asyncio.to_thread(build, config)
        except Exception as err:
            self.error = f"{type(err).__name__}: {err}"
            self.error_generation = config.get("generation")
            self._on_change()
            raise

    async def watch(self, spawn: Spawn) -> None:
        while True:
            await asyncio.sleep(RELOAD_S)
            try:
                version = _file_version(self.path)
            except OSError:
                continue
            if version == self._version:
                continue
            self._version = version
            config: dict[str, Any] = {}
            try:
                config = read_config(self.path)
                if self.table is not None and config["generation"] == self.table.generation:
                    continue
                new = await asyncio.to_thread(build, config, self.table)
            except Exception as err:  # a bad new config keeps the current table serving
                self.error = f"{type(err).__name__}: {err}"
                self.error_generation = config.get("generation")
                self._on_change()
                continue
            old, self.table, self.error, self.error_generation = self.table, new, "", None
            self._on_change()
            if old is not None:
                for deployment in retired(old, new):
                    spawn(_retire(deployment))


def _file_version(path: Path) -> tuple[int, int]:
    """A config replaced by another file (os.replace) within one mtime tick is still a
    new version: its inode differs."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


async def _retire(deployment: Deployment) -> None:
    """Free a replaced session once the requests it is answering are done."""
    while deployment.batcher.in_flight:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(deployment.batcher.close)

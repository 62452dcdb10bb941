"""A scoring job's folder: its manifest, its lock, and one file per scored shard.

A shard's file is written beside its place and renamed into it, so it is whole or
absent: the shards present are exactly the mini-batches scored, and a job killed at
any instant resumes by scoring the others. A shard that failed all its attempts has a
`.failed.json` record instead, which a resumed job tries again.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa

from mlinfra.errors import MlinfraError


class JobBusy(MlinfraError):
    """Another process is scoring the same job."""


def write_json(path: Path, data: Any) -> None:
    """`data` as JSON at `path`, put in place whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


class JobFolder:
    """Invariant: shards/NNNNNNNN.arrow exists only once shard N was scored in full."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.shards = root / "shards"
        self.manifest = root / "job.json"
        self.summary = root / "summary.json"
        self.errors = root / "errors.jsonl"

    def create(self) -> None:
        self.shards.mkdir(parents=True, exist_ok=True)
        # writes cut short by a kill: a shard's, the output's, a manifest's
        for stale in [*self.shards.glob(".*.tmp"), *self.root.glob(".*.tmp")]:
            stale.unlink(missing_ok=True)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One scorer per job: the lock is the kernel's, so a killed scorer frees it."""
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / "lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = read_json(self.manifest).get("pid", "?")
                raise JobBusy(f"batch job {self.root.name} is being scored by another "
                              f"process (pid {holder}); wait for it, or stop it and run "
                              "again to resume") from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def shard(self, index: int) -> Path:
        return self.shards / f"{index:08d}.arrow"

    def failed_record(self, index: int) -> Path:
        return self.shards / f"{index:08d}.failed.json"

    def scored(self) -> set[int]:
        if not self.shards.is_dir():
            return set()
        return {int(p.name[:8]) for p in self.shards.glob("*.arrow")}

    def write_shard(self, index: int, table: pa.Table) -> None:
        target = self.shard(index)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        os.replace(tmp, target)

    def read_shard(self, index: int) -> pa.Table:
        with pa.memory_map(str(self.shard(index)), "r") as source:
            return pa.ipc.open_file(source).read_all()

    def forget_failures(self) -> None:
        for record in self.shards.glob("*.failed.json"):
            record.unlink(missing_ok=True)

    def remove_shards(self) -> None:
        for path in self.shards.iterdir():
            path.unlink(missing_ok=True)
        self.shards.rmdir()

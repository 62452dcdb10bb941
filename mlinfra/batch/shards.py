"""A scoring job's folder: its manifest, its lock, and one file per scored shard.

A shard's file is written beside its place and renamed into it, so it is whole or
absent: the shards present are exactly the mini-batches scored, and a job killed at
any instant resumes by scoring the others. A shard that failed all its attempts has a
`.failed.json` record instead, which a resumed job tries again.

A shard of a CSV or JSON lines output holds that output's own bytes for its rows (no
header), so the output is the shards' bytes one after the other: the workers encode
it, side by side, and the scorer only appends. A Parquet output's shards are Arrow
files, read back and written as row groups.
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


def encode(table: pa.Table, fmt: str) -> bytes:
    """`table`'s rows as CSV (quoted where needed, no header) or JSON lines."""
    if fmt == "csv":
        import pyarrow.csv as pcsv

        sink = pa.BufferOutputStream()
        pcsv.write_csv(table, sink, pcsv.WriteOptions(include_header=False,
                                                      quoting_style="needed"))
        return bytes(sink.getvalue())
    import orjson

    return b"".join(orjson.dumps(row, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"
                    for row in table.to_pylist())


def csv_header(schema: pa.Schema) -> bytes:
    """The header line pyarrow writes for `schema`. (From a writer of the schema, not
    of an empty table: making a table asks whether pandas is there, and importing it
    costs a second.)"""
    import pyarrow.csv as pcsv

    sink = pa.BufferOutputStream()
    pcsv.CSVWriter(sink, schema, write_options=pcsv.WriteOptions(
        include_header=True, quoting_style="needed")).close()
    return bytes(sink.getvalue())


class JobFolder:
    """Invariant: shards/NNNNNNNN.SUFFIX exists only once shard N was scored in full.

    SUFFIX is the output's format for CSV and JSON lines (the shard is those bytes),
    `arrow` for Parquet and for a summary only."""

    def __init__(self, root: Path, output_format: str = "parquet") -> None:
        self.root = root
        self.suffix = output_format if output_format in ("csv", "jsonl") else "arrow"
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
        return self.shards / f"{index:08d}.{self.suffix}"

    def failed_record(self, index: int) -> Path:
        return self.shards / f"{index:08d}.failed.json"

    def scored(self) -> set[int]:
        if not self.shards.is_dir():
            return set()
        return {int(p.name[:8]) for p in self.shards.glob(f"*.{self.suffix}")}

    def write_shard(self, index: int, table: pa.Table) -> None:
        target = self.shard(index)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        if self.suffix == "arrow":
            with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(
                    sink, table.schema) as writer:
                writer.write_table(table)
        else:
            tmp.write_bytes(encode(table, self.suffix))
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

"""Data versions: content hashes of files and folders, numbered per asset."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlinfra.data.hashes import machine_hashes
from mlinfra.state.store import Cursor, row_json
from mlinfra.state.work import Writer

_CHUNK = 1 << 20


@dataclass(frozen=True)
class DataVersion:
    name: str
    version: int
    sha256: str
    created_at: float
    metadata: dict[str, Any]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class DataVersions:
    """The registry of data versions, in the state store."""

    def __init__(self, writer: Writer) -> None:
        self.writer, self.store = writer, writer.store

    def _cached_sha256(self, path: Path) -> str:
        """sha256 of a file, remembered on this machine while the file's identity
        (inode, size, mtime, ctime) is unchanged."""
        return machine_hashes().sha256(path, file_sha256)

    def forget(self, path: Path) -> None:
        """Hash `path` (a file or folder) from its bytes next time: what it holds now
        is not what was remembered."""
        machine_hashes().forget(path)

    def content_sha256(self, path: Path, fresh: bool = False) -> str:
        """A file's sha256, or for a folder the sha256 of its files' paths and hashes.
        `fresh`: read from the bytes, whatever this machine remembers (a version about
        to be registered)."""
        if fresh:
            self.forget(path)
        if path.is_file():
            return self._cached_sha256(path)
        digest = hashlib.sha256()
        for folder, dirs, files in os.walk(path):
            dirs.sort()
            for name in sorted(files):
                file = Path(folder) / name
                digest.update(f"{file.relative_to(path).as_posix()}\0"
                              f"{self._cached_sha256(file)}\n".encode())
        return digest.hexdigest()

    def find(self, name: str, sha256: str) -> int | None:
        """The version of this content: registered, or staged by this unit of work."""
        staged = getattr(self.writer, "staged_number", None)
        found = staged("data_versions", name, sha256) if staged is not None else None
        return found if found is not None else self.store.numbered("data_versions", name,
                                                                   sha256)

    def next_version(self, name: str) -> int:
        """The number new content would take (numbers are never reused)."""
        return self.store._max_number("data_versions", name) + 1

    def register(self, name: str, sha256: str, metadata: dict[str, Any]) -> int:
        """The version of this content: the existing one, or the next number."""
        version, created = self.writer.number("data_versions", name, sha256)
        if created:
            at = time.time()

            def insert(cur: Cursor) -> None:
                cur.execute("INSERT INTO data_versions VALUES (?, ?, ?, ?, ?) "
                            "ON CONFLICT DO NOTHING",
                            (name, version, sha256, at, json.dumps(metadata)))
                self.store.keep_number(cur, "data_versions", name, version)

            self.writer.write(insert)
            self.writer.emit("data.version_created", f"data.{name}",
                             {"data": name, "version": version, "sha256": sha256})
        return version

    def list(self, name: str) -> list[DataVersion]:
        rows = self.store.query("SELECT name, version, sha256, created_at, metadata FROM "
                                "data_versions WHERE name=? ORDER BY version", (name,))
        return [DataVersion(r[0], r[1], r[2], r[3], row_json(r[4], f"data version {r[0]}:{r[1]}"))
                for r in rows]

    def get(self, name: str, version: int | None = None) -> DataVersion | None:
        versions = self.list(name)
        if version is None:
            return versions[-1] if versions else None
        return next((v for v in versions if v.version == version), None)


def describe(path: Path, fmt: str) -> dict[str, Any]:
    """Size, and for csv / jsonl files the rows and columns, without loading them. A csv
    file is read as csv (a quoted field may hold a comma or a line break)."""
    if path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
        return {"bytes": sum(p.stat().st_size for p in files), "files": len(files)}
    meta: dict[str, Any] = {"bytes": path.stat().st_size}
    if fmt == "csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            records = (row for row in csv.reader(f) if any(cell.strip() for cell in row))
            try:
                header = next(records, None)
                meta["columns"] = [c.strip() for c in header] if header else []
                meta["rows"] = sum(1 for _ in records)
            except csv.Error as err:  # describing is a courtesy: the checks judge the data
                meta.pop("columns", None)
                meta["unreadable"] = f"not read as csv: {err}"
    elif fmt == "jsonl":
        with open(path, "rb") as f:
            meta["rows"] = sum(1 for line in f if line.strip())
    return meta

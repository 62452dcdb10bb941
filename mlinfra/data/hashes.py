"""The file hashes this machine already computed, so a plan does not read every byte of
every data file again.

An entry is trusted only while the file's identity is the one it was taken from, as
git's index and DVC's state do: device, inode, size, mtime and ctime. A tool that keeps
the size and sets the mtime back (`rsync -a`, `cp -p`, `tar x`, a restore) still writes
a new inode or moves the ctime, which no tool sets. The cache is per machine (a SQLite
file under the cache folder), never in a shared state: another machine's inodes and
clocks say nothing about this one's files.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mlinfra import cache_dir

# A file changed within this long of being hashed may change again within the same
# timestamp tick unseen ("racily clean" in git's words): its hash is not kept.
_RACY_NS = 2_000_000_000

_SCHEMA = """CREATE TABLE IF NOT EXISTS file_hashes (
  path TEXT PRIMARY KEY, dev INTEGER NOT NULL, ino INTEGER NOT NULL,
  size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
  sha256 TEXT NOT NULL)"""


def _identity(stat: os.stat_result) -> tuple[int, int, int, int, int]:
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


class FileHashes:
    """sha256 of files, remembered by file identity on this machine. Invariant: an entry
    is returned only for a file whose (dev, inode, size, mtime, ctime) is the one its
    hash was read under. Without a writable cache folder it hashes every time."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else cache_dir() / "file-hashes.db"
        self._conn: sqlite3.Connection | None = None
        self._broken = False
        self._lock = threading.Lock()

    def _db(self) -> sqlite3.Connection | None:
        if self._conn is None and not self._broken:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=10, isolation_level=None,
                                       check_same_thread=False)
                conn.execute(_SCHEMA)
                self._conn = conn
            except (OSError, sqlite3.Error):
                self._broken = True  # a read-only home: hashing still works
        return self._conn

    def sha256(self, path: Path, compute: Callable[[Path], str]) -> str:
        stat = path.stat()
        key = str(path.resolve())
        identity = _identity(stat)
        with self._lock:
            db = self._db()
            if db is not None:
                try:
                    row = db.execute("SELECT dev, ino, size, mtime_ns, ctime_ns, sha256 FROM "
                                     "file_hashes WHERE path=?", (key,)).fetchone()
                except sqlite3.Error:
                    row = None
                if row is not None and tuple(row[:5]) == identity:
                    return str(row[5])
        sha = compute(path)
        if path.stat().st_ctime_ns != stat.st_ctime_ns:
            return sha  # written while it was read: keep nothing
        if time.time_ns() - max(stat.st_mtime_ns, stat.st_ctime_ns) < _RACY_NS:
            return sha
        with self._lock:
            db = self._db()
            if db is not None:
                # a cache: losing an entry costs one more read
                with contextlib.suppress(sqlite3.Error):
                    db.execute("INSERT OR REPLACE INTO file_hashes VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (key, *identity, sha))
        return sha

    def forget(self, path: Path) -> None:
        """Drop what is remembered of `path` and of the files under it (a run found its
        content different from the plan's: the next plan reads it again)."""
        key = str(path.resolve())
        with self._lock:
            db = self._db()
            if db is None:
                return
            with contextlib.suppress(sqlite3.Error):
                db.execute("DELETE FROM file_hashes WHERE path=? OR path LIKE ? ESCAPE '\\'",
                           (key, _like_prefix(key + os.sep)))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


_OPEN: dict[Path, FileHashes] = {}


def machine_hashes() -> FileHashes:
    """This machine's cache (one per cache folder and process)."""
    path = cache_dir() / "file-hashes.db"
    found = _OPEN.get(path)
    if found is None:
        found = _OPEN[path] = FileHashes(path)
    return found

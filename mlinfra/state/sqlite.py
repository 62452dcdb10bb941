"""The state on disk: one SQLite file per stack, in WAL mode.

Every change is one transaction (resource row, serial, journal, audit), so saving
costs O(change), never O(state), and a process killed at any instant leaves either
the state before the change or the state after it.
"""

from __future__ import annotations

import getpass
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.state.model import JournalEntry, ResourceState, StateVersion

FORMAT_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS resources (
  address TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
  attributes TEXT NOT NULL, inputs_hash TEXT NOT NULL, outputs TEXT NOT NULL,
  provider_id TEXT NOT NULL, dependencies TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS journal (
  id INTEGER PRIMARY KEY AUTOINCREMENT, address TEXT NOT NULL, action TEXT NOT NULL,
  pid INTEGER NOT NULL, host TEXT NOT NULL, started_at REAL NOT NULL,
  finished_at REAL, status TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS journal_status ON journal(status);
CREATE TABLE IF NOT EXISTS audit (
  id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, user TEXT NOT NULL,
  host TEXT NOT NULL, command TEXT NOT NULL, address TEXT NOT NULL, action TEXT NOT NULL,
  serial INTEGER NOT NULL, detail TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS locks (
  stack TEXT PRIMARY KEY, id TEXT NOT NULL, owner TEXT NOT NULL, host TEXT NOT NULL,
  pid INTEGER NOT NULL, command TEXT NOT NULL, created_at REAL NOT NULL);
"""


_SELECT_RESOURCES = ("SELECT address, kind, name, attributes, inputs_hash, outputs, "
                     "provider_id, dependencies, updated_at FROM resources")


class StateCorrupted(MlinfraError):
    """The state file cannot be read as a database."""


HOST = os.uname().nodename


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


class SqliteStore:
    """The state of one stack. Thread-safe: writers are serialised by one lock.

    Invariants: `lineage` is fixed when the file is created; `serial` grows by one
    with every committed change; a journal entry is `pending` from just before a
    provider call until the change is committed (`done`) or has `failed`.
    """

    def __init__(self, path: Path, command: str = "") -> None:
        self.path = path
        self.command = command
        self._lock = threading.RLock()
        self._schemas: set[str] = set()
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists() and path.stat().st_size > 0
        try:
            self.conn = sqlite3.connect(path, timeout=30, isolation_level=None,
                                        check_same_thread=False)
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            if existed:
                row = self.conn.execute("PRAGMA quick_check").fetchone()
                if row is None or row[0] != "ok":
                    raise sqlite3.DatabaseError(str(row[0] if row else "no answer"))
            self.conn.executescript(_SCHEMA)
            self._init_meta()
        except sqlite3.DatabaseError as err:
            raise StateCorrupted(self._corrupted_message(err)) from None

    def _corrupted_message(self, err: Exception) -> str:
        backup = self.backup_path
        message = f"the state file {self.path} is damaged ({err})."
        if backup.exists():
            message += (f" The last good copy is {backup}: look at it, then restore it "
                        f"with\n  cp {backup} {self.path}")
        else:
            message += " There is no backup copy; mlinfra leaves the file untouched."
        return message

    @property
    def backup_path(self) -> Path:
        return self.path.with_name(self.path.name + ".backup")

    def _init_meta(self) -> None:
        rows = self.query("SELECT value FROM meta WHERE key='format_version'")
        if not rows:
            self._create_meta()
            rows = self.query("SELECT value FROM meta WHERE key='format_version'")
        if int(rows[0][0]) > FORMAT_VERSION:
            raise MlinfraError(f"the state file {self.path} was written by a newer mlinfra "
                               f"(format {rows[0][0]}); upgrade mlinfra to use it")

    def _create_meta(self) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT OR IGNORE INTO meta VALUES ('lineage', ?)", (_new_lineage(),))
            cur.execute("INSERT OR IGNORE INTO meta VALUES ('serial', '0')")
            cur.execute("INSERT OR IGNORE INTO meta VALUES ('format_version', ?)",
                        (str(FORMAT_VERSION),))

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def backup(self) -> None:
        """Copy the (checked) state aside before a session that writes to it."""
        with self._lock:
            tmp = self.backup_path.with_name(self.backup_path.name + ".tmp")
            dest = sqlite3.connect(tmp)
            try:
                self.conn.backup(dest)
            finally:
                dest.close()
            os.replace(tmp, self.backup_path)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            cur = self.conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            else:
                cur.execute("COMMIT")
            finally:
                cur.close()

    def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.conn.execute(sql, args).fetchall()

    def ensure_schema(self, ddl: str) -> None:
        """Create tables another module keeps in the same store (registry, data); once
        per connection, however often the module is used."""
        with self._lock:
            if ddl not in self._schemas:
                self.conn.executescript(ddl)
                self._schemas.add(ddl)

    # --- state ---------------------------------------------------------------------

    def version(self) -> StateVersion:
        rows = dict(self.query("SELECT key, value FROM meta WHERE key IN ('lineage','serial')"))
        return StateVersion(lineage=rows["lineage"], serial=int(rows["serial"]))

    def resources(self) -> dict[str, ResourceState]:
        rows = self.query(_SELECT_RESOURCES)
        # The JSON columns of every row in one parse: a third of the time of one each.
        values = json.loads("[" + ",".join(f"[{r[3]},{r[5]},{r[7]}]" for r in rows) + "]")
        return {r[0]: ResourceState(r[0], r[1], r[2], v[0], r[4], v[1], r[6], v[2], r[8])
                for r, v in zip(rows, values, strict=True)}

    def get(self, address: str) -> ResourceState | None:
        rows = self.query(_SELECT_RESOURCES + " WHERE address=?", (address,))
        return _resource(rows[0]) if rows else None

    # --- journal and changes -------------------------------------------------------

    def begin_operation(self, address: str, action: str) -> int:
        with self.transaction() as cur:
            cur.execute("INSERT INTO journal (address, action, pid, host, started_at, status) "
                        "VALUES (?, ?, ?, ?, ?, 'pending')",
                        (address, action, os.getpid(), HOST, time.time()))
            return int(cur.lastrowid or 0)

    def fail_operation(self, journal_id: int, detail: str) -> None:
        with self.transaction() as cur:
            cur.execute("UPDATE journal SET status='failed', finished_at=?, detail=? WHERE id=?",
                        (time.time(), detail[:2000], journal_id))

    def commit_change(self, journal_id: int | None, address: str, action: str,
                      new: ResourceState | None, detail: str = "") -> int:
        """Record the outcome of one change in one transaction; returns the new serial.
        `new` None removes the resource."""
        with self.transaction() as cur:
            if new is None:
                cur.execute("DELETE FROM resources WHERE address=?", (address,))
            else:
                cur.execute(
                    "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (new.address, new.kind, new.name, json.dumps(new.attributes),
                     new.inputs_hash, json.dumps(new.outputs), new.provider_id,
                     json.dumps(new.dependencies), time.time()))
            cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='serial'")
            serial = int(cur.execute("SELECT value FROM meta WHERE key='serial'").fetchone()[0])
            if journal_id is not None:
                cur.execute("UPDATE journal SET status='done', finished_at=? WHERE id=?",
                            (time.time(), journal_id))
            cur.execute("INSERT INTO audit (at, user, host, command, address, action, serial, "
                        "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                        (time.time(), current_user(), HOST, self.command, address, action,
                         serial, detail[:2000]))
        return serial

    def interrupted_operations(self) -> list[JournalEntry]:
        """Pending entries whose process is gone: the operation was cut short."""
        rows = self.query("SELECT id, address, action, pid, host, started_at, status, detail "
                          "FROM journal WHERE status='pending'")
        entries = [JournalEntry(*row) for row in rows]
        return [e for e in entries if not (e.host == HOST and pid_alive(e.pid))]

    def close_interrupted(self, entries: list[JournalEntry]) -> None:
        with self.transaction() as cur:
            cur.executemany("UPDATE journal SET status='interrupted', finished_at=? WHERE id=?",
                            [(time.time(), e.id) for e in entries])

    def audit_log(self, limit: int = 50) -> list[tuple[Any, ...]]:
        return self.query("SELECT at, user, host, command, address, action, serial, detail "
                          "FROM audit ORDER BY id DESC LIMIT ?", (limit,))


def _new_lineage() -> str:
    import uuid

    return str(uuid.uuid4())


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not _zombie(pid)


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _resource(row: tuple[Any, ...]) -> ResourceState:
    return ResourceState(address=row[0], kind=row[1], name=row[2],
                         attributes=json.loads(row[3]), inputs_hash=row[4],
                         outputs=json.loads(row[5]), provider_id=row[6],
                         dependencies=json.loads(row[7]), updated_at=row[8])

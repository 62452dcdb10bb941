"""The interface of a state backend, and what every backend shares.

A `StateStore` is the state of one stack: resources, the journal, serial and lineage,
the audit log, the stack's lock, and the tables the registry, runs and data versions
keep beside them. `SqliteStore` (the default, one file) and `PostgresStore` (a schema
on a server, for teams) implement it; nothing outside `mlinfra.state` knows which one
it has. The layers above write SQL that both run: `?` placeholders, `upsert()` rather
than INSERT OR REPLACE, and no rowid.
"""

from __future__ import annotations

import getpass
import json
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

from mlinfra.errors import MlinfraError
from mlinfra.state.model import JournalEntry, LockInfo, ResourceState, StateVersion
from mlinfra.state.schema import WORKSPACE_TABLES

_SELECT_RESOURCES = ("SELECT address, kind, name, attributes, inputs_hash, outputs, "
                     "provider_id, dependencies, updated_at FROM resources")
_RESOURCE_COLUMNS = ("address", "kind", "name", "attributes", "inputs_hash", "outputs",
                     "provider_id", "dependencies", "updated_at")


class StateCorrupted(MlinfraError):
    """The state cannot be read as an mlinfra state."""


class StateMissing(MlinfraError):
    """The state file is gone but its backup is beside it: taking that for a new stack
    would forget everything the stack made."""


class StateUnavailable(MlinfraError):
    """The state's server cannot be reached, or refused the connection."""


HOST = os.uname().nodename


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


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


def row_json(text: str, where: str) -> Any:
    """A JSON column of a state row; a damaged one is a damaged state, not a crash."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as err:
        raise StateCorrupted(f"the state is damaged: {where} holds invalid JSON ({err}). "
                             "Restore the backup copy (state.db.backup, or the database's "
                             "own backup) or remove the row with mlinfra state rm.") from None


def upsert(table: str, columns: Sequence[str], key: Sequence[str]) -> str:
    """INSERT of one row that replaces the row with the same `key`, in SQL both
    backends run (SQLite 3.24+, PostgreSQL 9.5+)."""
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns if c not in key)
    return (f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
            f"({', '.join('?' * len(columns))}) ON CONFLICT ({', '.join(key)}) "
            + (f"DO UPDATE SET {updates}" if updates else "DO NOTHING"))


class Cursor(Protocol):
    """What a transaction gives: sqlite3's cursor, or PostgreSQL's behind `?`."""

    @property
    def rowcount(self) -> int:
        """The rows the last statement changed."""

    def execute(self, sql: str, args: Sequence[Any] = ..., /) -> Cursor: ...

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> Cursor: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class StateStore(ABC):
    """The state of one stack.

    Invariants: `lineage` is fixed when the state is created; `serial` grows by one
    with every committed change; a journal entry is `pending` from just before a
    provider call until the change is committed (`done`) or has `failed`. Every change
    is one transaction. A read-only store (plan, output, the listings) never creates
    nor changes the state: a missing state reads as empty with lineage "", and an
    older schema is read from an upgraded copy in memory. Thread-safe.
    """

    # "sqlite" or "postgresql": which SQL `schema.ddl` writes for it.
    dialect: ClassVar[str]

    def __init__(self, location: str, command: str, readonly: bool) -> None:
        self.location = location  # for messages: a path, or a URL without its password
        self.command = command
        self.readonly = readonly

    # --- what each backend provides ----------------------------------------------

    @abstractmethod
    def transaction(self) -> AbstractContextManager[Cursor]:
        """One write transaction; writers are serialised."""

    @abstractmethod
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """The rows of one SELECT."""

    @abstractmethod
    def close(self) -> None: ...

    @abstractmethod
    def backup(self) -> str | None:
        """Keep a copy of the state before a session writes to it; returns where it
        is, or None when the database's own backups are the copy."""

    @abstractmethod
    def _insert_id(self, cur: Cursor, sql: str, args: Sequence[Any]) -> int:
        """Run an INSERT into a numbered table; returns the new row's id."""

    @abstractmethod
    def try_lock(self, stack: str, command: str) -> tuple[str | None, LockInfo | None]:
        """Take the stack's lock if free: (lock id, None); else (None, the holder)."""

    @abstractmethod
    def release_lock(self, stack: str, lock_id: str) -> None: ...

    @abstractmethod
    def lock_holder(self, stack: str) -> LockInfo | None:
        """Who holds the stack's lock now (a lock of a process that is gone is none)."""

    @abstractmethod
    def break_lock(self, stack: str, info: LockInfo) -> None:
        """Take the lock away from its holder (`state unlock`)."""

    # --- the state ---------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.query("SELECT key, value FROM meta")}

    def version(self) -> StateVersion:
        rows = dict(self.query("SELECT key, value FROM meta WHERE key IN ('lineage','serial')"))
        return StateVersion(lineage=rows["lineage"], serial=int(rows["serial"]))

    def resources(self) -> dict[str, ResourceState]:
        rows = self.query(_SELECT_RESOURCES)
        # The JSON columns of every row in one parse: a third of the time of one each.
        try:
            values = json.loads("[" + ",".join(f"[{r[3]},{r[5]},{r[7]}]" for r in rows) + "]")
        except ValueError:
            for row in rows:  # name the damaged row
                _resource(row)
            raise
        return {r[0]: ResourceState(r[0], r[1], r[2], v[0], r[4], v[1], r[6], v[2], r[8])
                for r, v in zip(rows, values, strict=True)}

    def get(self, address: str) -> ResourceState | None:
        rows = self.query(_SELECT_RESOURCES + " WHERE address=?", (address,))
        return _resource(rows[0]) if rows else None

    # --- journal and changes -----------------------------------------------------

    def begin_operation(self, address: str, action: str) -> int:
        with self.transaction() as cur:
            return self._insert_id(
                cur, "INSERT INTO journal (address, action, pid, host, started_at, status) "
                "VALUES (?, ?, ?, ?, ?, 'pending')",
                (address, action, os.getpid(), HOST, time.time()))

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
                cur.execute(upsert("resources", _RESOURCE_COLUMNS, ("address",)),
                            (new.address, new.kind, new.name, json.dumps(new.attributes),
                             new.inputs_hash, json.dumps(new.outputs), new.provider_id,
                             json.dumps(new.dependencies), time.time()))
            if journal_id is not None:
                cur.execute("UPDATE journal SET status='done', finished_at=? WHERE id=?",
                            (time.time(), journal_id))
            serial = self.advance(cur, address, action, detail)
        return serial

    def advance(self, cur: Cursor, address: str, action: str, detail: str) -> int:
        """Within a transaction: the state changed (a resource, an alias, a tag), so its
        serial grows and the audit log says who did what; returns the new serial."""
        cur.execute("UPDATE meta SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT) "
                    "WHERE key='serial'")
        serial = int(cur.execute("SELECT value FROM meta WHERE key='serial'").fetchone()[0])
        cur.execute("INSERT INTO audit (at, username, host, command, address, action, serial, "
                    "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (time.time(), current_user(), HOST, self.command, address, action,
                     serial, detail[:2000]))
        return serial

    def empty_workspace(self) -> None:
        """Forget what the workspace held: runs, metrics, model versions, aliases and
        data versions (the workspace is being destroyed)."""
        with self.transaction() as cur:
            for table in WORKSPACE_TABLES:
                cur.execute(f"DELETE FROM {table}")

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
        return self.query("SELECT at, username, host, command, address, action, serial, "
                          "detail FROM audit ORDER BY id DESC LIMIT ?", (limit,))

    # --- copying a whole state (mlinfra state migrate) ---------------------------

    def moved(self) -> dict[str, Any] | None:
        """Where, when and by whom this state was moved (`mark_moved`), if it was."""
        rows = self.query("SELECT value FROM meta WHERE key='moved_to'")
        return dict(row_json(str(rows[0][0]), f"{self.location}: meta moved_to")) \
            if rows else None

    def mark_moved(self, location: str) -> None:
        """`state migrate` verified a copy at `location`: this state is kept as it was,
        and every session but `state list`/`show` is refused from now on, so that no one
        applies or destroys from a stack file that still names it."""
        moved = {"to": location, "at": time.time(), "by": f"{current_user()}@{HOST}"}
        with self.transaction() as cur:
            cur.execute(upsert("meta", ("key", "value"), ("key",)),
                        ("moved_to", json.dumps(moved)))
            self.advance(cur, "(state)", "moved", f"to {location}")

    def columns(self, table: str) -> list[str]:
        """The table's columns, in their order."""
        return [str(name) for name in self._columns(table)]

    @abstractmethod
    def _columns(self, table: str) -> Iterator[str]: ...

    def load_rows(self, cur: Cursor, table: str, columns: Sequence[str],
                  rows: list[tuple[Any, ...]]) -> None:
        """Within a transaction: put copied rows, ids included, into an emptied table."""
        if rows:
            cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
                            f"({', '.join('?' * len(columns))})", rows)


def _resource(row: tuple[Any, ...]) -> ResourceState:
    where = f"resource {row[0]}"
    return ResourceState(address=row[0], kind=row[1], name=row[2],
                         attributes=row_json(row[3], where), inputs_hash=row[4],
                         outputs=row_json(row[5], where), provider_id=row[6],
                         dependencies=row_json(row[7], where), updated_at=row[8])


def new_lineage() -> str:
    import uuid

    return str(uuid.uuid4())

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
from mlinfra.state.schema import (
    FORMAT_VERSION,
    TABLES,
    WORKSPACE_TABLES,
    create_tables,
    missing_tables,
    needs_upgrade,
    upgrade,
)

_SELECT_RESOURCES = ("SELECT address, kind, name, attributes, inputs_hash, outputs, "
                     "provider_id, dependencies, updated_at FROM resources")


class StateCorrupted(MlinfraError):
    """The state file cannot be read as an mlinfra state."""


HOST = os.uname().nodename


def current_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def row_json(text: str, where: str) -> Any:
    """A JSON column of a state row; a damaged one is a damaged state, not a crash."""
    try:
        return json.loads(text)
    except (TypeError, ValueError) as err:
        raise StateCorrupted(f"the state is damaged: {where} holds invalid JSON ({err}). "
                             "Restore the backup copy (state.db.backup) or remove the row "
                             "with mlinfra state rm.") from None


class SqliteStore:
    """The state of one stack. Thread-safe: writers are serialised by one lock.

    Invariants: `lineage` is fixed when the file is created; `serial` grows by one
    with every committed change; a journal entry is `pending` from just before a
    provider call until the change is committed (`done`) or has `failed`.
    A read-only store (`readonly=True`, for plan and the read commands) never creates
    nor changes the file: a stack with no state file reads as an empty state with no
    lineage yet, and an older state is read through a copy upgraded in memory. A file
    mlinfra did not write (empty, not SQLite, no lineage) is refused as damaged, never
    taken for a new stack.
    """

    def __init__(self, path: Path, command: str = "", readonly: bool = False) -> None:
        self.path = path
        self.command = command
        self.readonly = readonly
        self._lock = threading.RLock()
        self.exists = path.exists()
        try:
            if not self.exists and readonly:
                self.conn = _memory()
                create_tables(self.conn, list(TABLES))
                _write_meta(self.conn, lineage="")
                return
            if not self.exists:
                _create(path)
            elif path.stat().st_size == 0:
                raise sqlite3.DatabaseError("the file is empty")
            self.conn = self._open()
            self._check()
            if not readonly:
                upgrade(self.conn)
            elif needs_upgrade(self.conn):
                # NOTE: an older state is read through an upgraded copy in memory: the
                # file itself changes only in a write session.
                copy = _memory()
                self.conn.backup(copy)
                self.conn.close()
                self.conn = copy
                upgrade(self.conn)
        except sqlite3.DatabaseError as err:
            raise StateCorrupted(self._corrupted_message(err)) from None

    def _open(self) -> sqlite3.Connection:
        if self.readonly:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                   timeout=30, isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _check(self) -> None:
        row = self.conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(str(row[0] if row else "no answer"))
        meta = dict(self.conn.execute("SELECT key, value FROM meta WHERE key IN "
                                      "('lineage', 'serial', 'format_version')").fetchall()
                    ) if "meta" not in missing_tables(self.conn) else {}
        if len(meta) != 3 or not meta["lineage"]:
            raise sqlite3.DatabaseError("it is not an mlinfra state: it has no lineage, "
                                        "serial or format version")
        if int(meta["format_version"]) > FORMAT_VERSION:
            raise MlinfraError(f"the state file {self.path} was written by a newer mlinfra "
                               f"(format {meta['format_version']}); upgrade mlinfra to use it")

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

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def backup(self) -> None:
        """Copy the (checked) state aside before a session that writes to it. A backup
        of another lineage or of a later serial is never overwritten by this state: it
        is kept aside as `state.db.backup.LINEAGE-SERIAL`."""
        with self._lock:
            previous = _version_of(self.backup_path)
            mine = self.version()
            if previous is not None and (previous.lineage != mine.lineage
                                         or previous.serial > mine.serial):
                os.replace(self.backup_path, self.backup_path.with_name(
                    f"{self.backup_path.name}.{previous.lineage[:8]}-{previous.serial}"))
            tmp = self.backup_path.with_name(self.backup_path.name + ".tmp")
            dest = sqlite3.connect(tmp)
            try:
                self.conn.backup(dest)
                dest.execute("PRAGMA journal_mode=DELETE")  # one file, no -wal beside it
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

    # --- state ---------------------------------------------------------------------

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
            if journal_id is not None:
                cur.execute("UPDATE journal SET status='done', finished_at=? WHERE id=?",
                            (time.time(), journal_id))
            serial = self.advance(cur, address, action, detail)
        return serial

    def advance(self, cur: sqlite3.Cursor, address: str, action: str, detail: str) -> int:
        """Within a transaction: the state changed (a resource, an alias, a tag), so its
        serial grows and the audit log says who did what; returns the new serial."""
        cur.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='serial'")
        serial = int(cur.execute("SELECT value FROM meta WHERE key='serial'").fetchone()[0])
        cur.execute("INSERT INTO audit (at, user, host, command, address, action, serial, "
                    "detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (time.time(), current_user(), HOST, self.command, address, action,
                     serial, detail[:2000]))
        return serial

    def forget_legacy_secret_key(self) -> None:
        """Earlier versions kept an HMAC key for secrets beside the hashes it made; a
        plan shows those fields changed (they have no salt) and the apply that stores
        their scrypt hashes drops the key."""
        with self.transaction() as cur:
            cur.execute("DELETE FROM meta WHERE key='secret_key'")

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
    where = f"resource {row[0]}"
    return ResourceState(address=row[0], kind=row[1], name=row[2],
                         attributes=row_json(row[3], where), inputs_hash=row[4],
                         outputs=row_json(row[5], where), provider_id=row[6],
                         dependencies=row_json(row[7], where), updated_at=row[8])


def _memory() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)


def _write_meta(conn: sqlite3.Connection, lineage: str) -> None:
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("lineage", lineage), ("serial", "0"), ("format_version", str(FORMAT_VERSION))])


def _create(path: Path) -> None:
    """A new state with every table and its lineage, put in place whole: a process
    killed meanwhile leaves no state file, never an empty one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        create_tables(conn, list(TABLES))
        _write_meta(conn, _new_lineage())
    finally:
        conn.close()
    try:
        os.link(tmp, path)  # never replaces a state another process created meanwhile
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)


def _version_of(path: Path) -> StateVersion | None:
    """The lineage and serial of a state file, or None if it cannot be read."""
    if not path.exists():
        return None
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
        try:
            rows = dict(conn.execute("SELECT key, value FROM meta WHERE key IN "
                                     "('lineage', 'serial')").fetchall())
        finally:
            conn.close()
        return StateVersion(str(rows["lineage"]), int(rows["serial"]))
    except (sqlite3.DatabaseError, KeyError, ValueError):
        return None

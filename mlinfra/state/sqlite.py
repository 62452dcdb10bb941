"""The default backend: one SQLite file per stack, in WAL mode.

Every change is one transaction (resource row, serial, journal, audit), so saving
costs O(change), never O(state), and a process killed at any instant leaves either
the state before the change or the state after it. The lock is a row naming its
holder; a lock of a process gone from this host is taken over.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.state.model import LockInfo, StateVersion
from mlinfra.state.schema import (
    BASE_VERSION,
    FORMAT_1,
    FORMAT_1_ADDED_COLUMNS,
    INDEXES,
    TABLES,
    create_tables,
    latest_version,
    upgrade,
)
from mlinfra.state.store import (
    HOST,
    Cursor,
    StateCorrupted,
    StateMissing,
    StateStore,
    current_user,
    new_lineage,
    on_this_machine,
    pid_alive,
)

_LOCK_COLUMNS = "id, owner, host, pid, command, created_at, backend_pid"
# ON CONFLICT ... DO UPDATE (3.24) and RENAME COLUMN (3.25, the format 1 upgrade).
_OLDEST = (3, 25)


class SqliteStore(StateStore):
    """The state of one stack in a SQLite file. Writers are serialised by one lock.

    A read-only store never creates nor changes the file; one of an older schema reads
    an upgraded copy in memory (sqlite3's backup API). A file mlinfra did not write
    (empty, not SQLite, no lineage) is refused as damaged, never taken for a new stack.
    """

    dialect = "sqlite"

    def __init__(self, path: Path, command: str = "", readonly: bool = False,
                 new_state: bool = False) -> None:
        super().__init__(str(path), command, readonly)
        if sqlite3.sqlite_version_info < _OLDEST:
            raise MlinfraError(f"mlinfra needs SQLite {'.'.join(map(str, _OLDEST))} or newer; "
                               f"this Python uses SQLite {sqlite3.sqlite_version}")
        self.path = path
        self._lock = threading.RLock()
        self._backed_up_at: tuple[str, int] | None = None
        if not path.exists() and not new_state and self.backup_path.exists():
            raise StateMissing(self._missing_message())
        try:
            if not path.exists() and readonly:
                self.conn = _memory()
                _initialise(self.conn, lineage="")
                return
            if not path.exists():
                _create(path)
            elif path.stat().st_size == 0:
                raise sqlite3.DatabaseError("the file is empty")
            self.conn = self._open()
            version = self._check()
            if not readonly:  # only once it is known to be a state this mlinfra reads
                self.conn.execute("PRAGMA journal_mode=WAL")
            if version < latest_version():
                self._upgrade(version)
        except sqlite3.DatabaseError as err:
            raise StateCorrupted(self._corrupted_message(err), file=str(self.path)) from err

    @classmethod
    def in_memory(cls, location: str, command: str, version: int | None = None,
                  lineage: str = "") -> SqliteStore:
        """An empty state in memory (schema `version`, default the latest): what a
        read-only session sees of a state that does not exist yet, or the copy of an
        older one that is upgraded there."""
        store = cls.__new__(cls)
        StateStore.__init__(store, location, command, readonly=True)
        store.path = Path(":memory:")
        store._lock = threading.RLock()
        store.conn = _memory()
        _initialise(store.conn, lineage, version)
        return store

    def _open(self) -> sqlite3.Connection:
        if self.readonly:
            conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True,
                                   timeout=30, isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                   check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    def _check(self) -> int:
        """The file's schema version, once it is known to be an mlinfra state that
        this mlinfra can read."""
        row = self.conn.execute("PRAGMA quick_check").fetchone()
        if row is None or row[0] != "ok":
            raise sqlite3.DatabaseError(str(row[0] if row else "no answer"))
        has_meta = self.conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND "
                                     "name='meta'").fetchone()
        meta = dict(self.conn.execute("SELECT key, value FROM meta WHERE key IN "
                                      "('lineage', 'serial', 'format_version')").fetchall()
                    ) if has_meta else {}
        if len(meta) != 3 or not meta["lineage"]:
            raise sqlite3.DatabaseError("it is not an mlinfra state: it has no lineage, "
                                        "serial or format version")
        for key in ("serial", "format_version"):
            if not str(meta[key]).isdigit():
                raise sqlite3.DatabaseError(f"its {key} is {str(meta[key])[:40]!r}, not a "
                                            "number")
        version = int(meta["format_version"])
        if version > latest_version():
            raise MlinfraError(f"the state file {self.path} has schema version {version}; "
                               f"this mlinfra reads up to version {latest_version()}: "
                               f"upgrade mlinfra to use it")
        return version

    def _upgrade(self, version: int) -> None:
        """Bring an older schema to the latest: in the file for a session that writes
        (after a backup copy), in a copy in memory for one that only reads."""
        if self.readonly:
            memory = _memory()
            self.conn.backup(memory)
            self.conn.close()
            self.conn = memory
        else:
            self.backup()
        with self.transaction() as cur:
            # Another process may have upgraded it since it was opened.
            version = int(cur.execute("SELECT value FROM meta WHERE key='format_version'"
                                      ).fetchone()[0])
            if version == FORMAT_1:
                _format_1_to_2(cur)
                version = BASE_VERSION
            upgrade(cur, self.dialect, version)

    def _missing_message(self) -> str:
        backup = self.backup_path
        kept = _version_of(backup)
        what = (f" (lineage {kept.lineage[:8]}, serial {kept.serial}, saved "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(backup.stat().st_mtime))})"
                if kept is not None else "")
        return (f"the state {self.path} is missing, but its backup {backup} is beside it"
                f"{what}. Restore it with\n  cp {backup} {self.path}\nor, to start this "
                "stack over with a new, empty state, run the command again with --new-state")

    def _corrupted_message(self, err: Exception) -> str:
        backup = self.backup_path
        message = f"the state file {self.path} is damaged ({err})."
        if backup.is_file():
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

    def backup(self) -> str:
        """Copy the (checked) state aside before a session that writes to it. A backup
        of another lineage or of a later serial is never overwritten by this state: it
        is kept aside as `state.db.backup.LINEAGE-SERIAL`. A state this store already
        copied at its current serial is not copied again: the copy stays the state as the
        session found it, before an upgrade of its format too."""
        with self._lock:
            if self.backup_path.is_symlink() or (self.backup_path.exists()
                                                 and not self.backup_path.is_file()):
                raise StateCorrupted(f"{self.backup_path} is not a file: mlinfra keeps its "
                                     f"backup copy of {self.path} there. Move it away, then "
                                     "run the command again.")
            mine = self.version()
            if self._backed_up_at == (mine.lineage, mine.serial):
                return str(self.backup_path)
            previous = _version_of(self.backup_path)
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
            self._backed_up_at = (mine.lineage, mine.serial)
        return str(self.backup_path)

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        self._check_writer()
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
                self._committed()
            finally:
                cur.close()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self.conn.execute(sql, args).fetchall()

    def _insert_id(self, cur: Cursor, sql: str, args: Sequence[Any]) -> int:
        # lastrowid, not RETURNING: Python may be linked to a SQLite older than 3.35.
        return int(cur.execute(sql, args).lastrowid or 0)  # type: ignore[attr-defined]

    def _columns(self, table: str) -> Iterator[str]:
        return (row[1] for row in self.query(f"PRAGMA table_info({table})"))

    # --- the lock ----------------------------------------------------------------

    def try_lock(self, stack: str, command: str) -> tuple[str | None, LockInfo | None]:
        with self.transaction() as cur:
            row = cur.execute(f"SELECT {_LOCK_COLUMNS} FROM locks WHERE stack=?",
                              (stack,)).fetchone()
            if row is not None:
                info = LockInfo(*row)
                if not _is_stale(info):
                    return None, info
                cur.execute("DELETE FROM locks WHERE stack=?", (stack,))
            lock_id = os.urandom(6).hex()
            cur.execute("INSERT INTO locks (stack, id, owner, host, pid, command, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (stack, lock_id, current_user(), HOST, os.getpid(), command,
                         time.time()))
            return lock_id, None

    def release_lock(self, stack: str, lock_id: str) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM locks WHERE stack=? AND id=?", (stack, lock_id))

    def lock_holder(self, stack: str) -> LockInfo | None:
        """The lock's row, also of a process that is gone (until it is taken over)."""
        rows = self.query(f"SELECT {_LOCK_COLUMNS} FROM locks WHERE stack=?", (stack,))
        return LockInfo(*rows[0]) if rows else None

    def break_lock(self, stack: str, info: LockInfo) -> None:
        self.release_lock(stack, info.id)


def _is_stale(info: LockInfo) -> bool:
    """A lock taken on this host by a process that no longer runs."""
    return on_this_machine(info.host) and not pid_alive(info.pid)


def _memory() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)


def _initialise(conn: sqlite3.Connection, lineage: str, version: int | None = None) -> None:
    """Every table, and meta's rows: a state with `lineage` at serial 0."""
    written = create_tables(conn, "sqlite", version)
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("lineage", lineage), ("serial", "0"), ("format_version", str(written))])


def _create(path: Path) -> None:
    """A new state with every table and its lineage, put in place whole: a process
    killed meanwhile leaves no state file, never an empty one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    conn = sqlite3.connect(tmp, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        _initialise(conn, new_lineage())
    finally:
        conn.close()
    try:
        os.link(tmp, path)  # never replaces a state another process created meanwhile
    except FileExistsError:
        pass
    except OSError:
        _place_without_link(tmp, path)  # vfat, some SMB and FUSE mounts: no hard links
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _place_without_link(tmp: Path, path: Path) -> None:
    """Put `tmp` at `path` unless a state is there already, where hard links cannot be
    made: under an exclusive lock beside it, which every creator takes."""
    with open(path.with_name(f".{path.name}.create.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when closed
        if not path.exists():
            os.rename(tmp, path)


def _format_1_to_2(cur: Cursor) -> None:
    """Format 1, the SQLite schema before migrations, to version 2: audit's `user`
    (reserved in PostgreSQL) becomes `username`; metrics gets an `id`, the order they
    were logged in (SQLite's rowid, which PostgreSQL lacks); locks gets `backend_pid`;
    a table or column that an older mlinfra did not create yet is created; and the HMAC
    key secrets were hashed with goes (a plan shows those fields changed: they have no
    salt, and the next apply stores their scrypt hashes)."""
    def columns(table: str) -> list[str]:
        return [row[1] for row in cur.execute(f"PRAGMA table_info({table})").fetchall()]

    present = {row[0] for row in cur.execute(
        "SELECT name FROM sqlite_master WHERE type='table'").fetchall()}
    created = [name for name in TABLES if name not in present]
    for name in created:
        cur.execute(TABLES[name])
    if "user" in columns("audit"):
        cur.execute('ALTER TABLE audit RENAME COLUMN "user" TO username')
    if "id" not in columns("metrics"):
        cur.execute(TABLES["metrics"].replace("TABLE metrics", "TABLE metrics_2"))
        cur.execute("INSERT INTO metrics_2 (id, run_id, key, value, step, at) "
                    "SELECT rowid, run_id, key, value, step, at FROM metrics ORDER BY rowid")
        cur.execute("DROP TABLE metrics")
        cur.execute("ALTER TABLE metrics_2 RENAME TO metrics")
        created.append("metrics")
    if "backend_pid" not in columns("locks"):
        cur.execute("ALTER TABLE locks ADD COLUMN backend_pid INTEGER")
    for table, column, kind in FORMAT_1_ADDED_COLUMNS:
        if table not in created and column not in columns(table):
            cur.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    for statement in INDEXES:
        match = re.search(r" ON (\w+)\(", statement)
        if match and match.group(1) in created:
            cur.execute(statement)
    cur.execute("DELETE FROM meta WHERE key='secret_key'")
    cur.execute(f"UPDATE meta SET value='{BASE_VERSION}' WHERE key='format_version'")


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

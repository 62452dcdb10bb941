"""The interface of a state backend, and what every backend shares.

A `StateStore` is the state of one stack: resources, the journal, serial and lineage,
the audit log, the stack's lock, and the tables the registry, runs and data versions
keep beside them. `SqliteStore` (the default, one file) and `PostgresStore` (a schema
on a server, for teams) implement it; nothing outside `mlinfra.state` knows which one
it has. The layers above write SQL that both run: `?` placeholders, `upsert()` rather
than INSERT OR REPLACE, and no rowid.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, TypeVar

from mlinfra.errors import MlinfraError
from mlinfra.state.model import (
    JournalEntry,
    LockInfo,
    OutboxEvent,
    ResourceState,
    StateVersion,
)
from mlinfra.state.schema import WORKSPACE_TABLES

if TYPE_CHECKING:
    from mlinfra.state.work import Event, Step, UnitOfWork

T = TypeVar("T")
# TEST ONLY: `MLINFRA_TEST_KILL_AFTER_COMMIT=N` makes this process SIGKILL itself right
# after its N-th committed write transaction, as SQLite and FoundationDB test their
# crash paths. The crash tests loop N over every commit of an apply; never set it
# otherwise.
KILL_AFTER_COMMIT = "MLINFRA_TEST_KILL_AFTER_COMMIT"
_KILL_AFTER = int(os.environ.get(KILL_AFTER_COMMIT) or 0)
_COMMITS = [0]  # this process' committed write transactions, every store's
_COMMITS_LOCK = threading.Lock()
# The tables a store numbers versions in (`number`): name, then content.
NUMBERED_BY_CONTENT = {"models": "sha256", "data_versions": "sha256"}

_SELECT_RESOURCES = ("SELECT address, kind, name, attributes, inputs_hash, outputs, "
                     "provider_id, dependencies, updated_at FROM resources")
_RESOURCE_COLUMNS = ("address", "kind", "name", "attributes", "inputs_hash", "outputs",
                     "provider_id", "dependencies", "updated_at")


# TEST ONLY: `MLINFRA_TEST_KILL_AT=NAME` makes this process SIGKILL itself at the
# fault point NAME inside a provider call ("popen": right after a job's process
# started; "published": right after a server got a new config).
KILL_AT = "MLINFRA_TEST_KILL_AT"


def fault_point(name: str) -> None:
    """A place where the crash tests kill mlinfra (`KILL_AT`); nothing otherwise."""
    if os.environ.get(KILL_AT) == name:
        os.kill(os.getpid(), signal.SIGKILL)


class StateWriteRefused(MlinfraError):
    """A write that did not come through the engine, on a store that takes only the
    engine's (`engine_only`, the handler tests' mode)."""


_ENGINE = threading.local()


@contextlib.contextmanager
def engine_writing() -> Iterator[None]:
    """The writes made in this thread inside it are the engine's own."""
    before = getattr(_ENGINE, "active", False)
    _ENGINE.active = True
    try:
        yield
    finally:
        _ENGINE.active = before


class StateCorrupted(MlinfraError):
    """The state cannot be read as an mlinfra state."""


class StateMissing(MlinfraError):
    """The state file is gone but its backup is beside it: taking that for a new stack
    would forget everything the stack made."""


class StateUnavailable(MlinfraError):
    """The state's server cannot be reached, or refused the connection."""


def machine_id() -> str:
    """This machine's persistent identity: systemd's /etc/machine-id (or D-Bus's copy),
    else an id made once and kept in mlinfra's cache. Never the host name, which two
    machines (containers, CI runners) may share and which changes with the network."""
    for path in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if len(text) >= 16 and text.isalnum():
            return text.lower()
    from mlinfra import cache_dir

    kept = cache_dir() / "machine-id"
    try:
        text = kept.read_text().strip()
        if len(text) >= 16 and text.isalnum():
            return text
    except OSError:
        pass
    made = os.urandom(16).hex()
    tmp = kept.with_name(f".machine-id.{os.getpid()}")
    try:
        kept.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(made + "\n")
        os.link(tmp, kept)  # the first one made wins
    except FileExistsError:
        return kept.read_text().strip()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()
    return made


MACHINE = machine_id()[:12]
# How runs, locks and journal entries name the machine they belong to: its name for
# people, and after `~` its identity, which decides.
HOST = f"{os.uname().nodename}~{MACHINE}"


def on_this_machine(host: str | None) -> bool:
    """Whether `host` (as HOST was recorded) is this machine. A row written before
    machines had an identity names only the host name."""
    if not host:
        return False
    if "~" in host:
        return host.rsplit("~", 1)[1] == MACHINE
    return host == os.uname().nodename


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


RESTORE = ("Restore the backup copy (state.db.backup, or the database's own backup) or "
           "remove the row with mlinfra state rm.")


def row_json(text: str, where: str, kind: type | None = None) -> Any:
    """A JSON column of a state row, of `kind` (dict, list) when given; a damaged one is
    a damaged state, not a crash."""
    try:
        value = json.loads(text)
    except (TypeError, ValueError) as err:
        raise StateCorrupted(f"the state is damaged: {where} holds invalid JSON ({err}). "
                             + RESTORE, where=where) from err
    if kind is not None and not isinstance(value, kind):
        raise StateCorrupted(f"the state is damaged: {where} holds {type(value).__name__} "
                             f"JSON where {'an object' if kind is dict else 'a list'} "
                             "belongs. " + RESTORE, where=where)
    return value


def meta_int(value: Any, key: str, location: str) -> int:
    """A number kept in the meta table (serial, format_version)."""
    try:
        return int(value)
    except (TypeError, ValueError) as err:
        raise StateCorrupted(f"the state {location} is damaged: its {key} is "
                             f"{str(value)[:40]!r}, not a number. " + RESTORE,
                             field=key) from err


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
        # Refuse every write that is not the engine's (handler tests set it).
        self.engine_only = False
        # Who and what the events written through this store name: project, stack,
        # actor, the project's folder (for its commit); the session fills them in.
        self.origin: dict[str, Any] = {}
        self._reserved: dict[tuple[str, str], set[int]] = {}
        self._reserved_lock = threading.Lock()

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

    # --- who writes ----------------------------------------------------------------

    def _check_writer(self) -> None:
        """Called as a backend opens a write transaction."""
        if self.engine_only and not getattr(_ENGINE, "active", False):
            raise StateWriteRefused(f"{self.location}: a write outside the engine's unit of "
                                    "work was refused (this store takes only the engine's)")

    def _committed(self) -> None:
        """Called by a backend right after a write transaction committed."""
        if not _KILL_AFTER:
            return
        with _COMMITS_LOCK:
            _COMMITS[0] += 1
            if _COMMITS[0] == _KILL_AFTER:
                os.kill(os.getpid(), signal.SIGKILL)

    @property
    def store(self) -> StateStore:
        """A store is a `Writer` that writes at once (outside apply)."""
        return self

    def write(self, fn: Callable[[Cursor], Any]) -> None:
        with self.transaction() as cur:
            fn(cur)

    def now(self, fn: Callable[[Cursor], T]) -> T:
        with self.transaction() as cur:
            return fn(cur)

    def emit(self, type: str, subject: str, data: dict[str, Any]) -> None:
        from mlinfra.state.work import Event

        with self.transaction() as cur:
            self.record_events(cur, [Event(type, subject, dict(data), time.time())])

    def number(self, table: str, name: str, content: str) -> tuple[int, bool]:
        found = self.numbered(table, name, content)
        if found is not None:
            return found, False
        return self._max_number(table, name) + 1, True

    def write_now(self, fn: Callable[[Cursor], T]) -> T:
        """The engine's write of what must be visible at once (a run's process)."""
        with engine_writing(), self.transaction() as cur:
            return fn(cur)

    def cache_write(self, fn: Callable[[Cursor], Any]) -> None:
        """A write to a cache kept in the store (file hashes, data check verdicts by
        content): not the state, so anyone may write it, at any time."""
        with engine_writing(), self.transaction() as cur:
            fn(cur)

    # --- version numbers --------------------------------------------------------

    def numbered(self, table: str, name: str, content: str) -> int | None:
        """The version of `content` for `name` in `table`, if it has one."""
        column = NUMBERED_BY_CONTENT[table]
        rows = self.query(f"SELECT version FROM {table} WHERE name=? AND {column}=?",
                          (name, content))
        return int(rows[0][0]) if rows else None

    def _max_number(self, table: str, name: str) -> int:
        rows = self.query(f"SELECT MAX(version) FROM {table} WHERE name=?", (name,))
        used = int(rows[0][0] or 0) if rows else 0
        rows = self.query("SELECT value FROM meta WHERE key=?", (f"last:{table}:{name}",))
        return max(used, int(rows[0][0]) if rows else 0)

    def reserve_number(self, table: str, name: str) -> int:
        """The next version number for `name`, kept for a unit of work until it commits
        or is discarded. Numbers are never reused: the highest ever given is kept in
        meta (`last:TABLE:NAME`), beyond a destroy of the workspace."""
        with self._reserved_lock:
            taken = self._reserved.setdefault((table, name), set())
            number = max([self._max_number(table, name), *taken]) + 1
            taken.add(number)
            return number

    def release_numbers(self, table: str, name: str, numbers: set[int]) -> None:
        with self._reserved_lock:
            self._reserved.get((table, name), set()).difference_update(numbers)

    def keep_number(self, cur: Cursor, table: str, name: str, number: int) -> None:
        """Within a transaction: remember `number` as given, so that it is never given
        again, even once its rows are gone."""
        key = f"last:{table}:{name}"
        row = cur.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        if row is None or int(row[0]) < number:
            cur.execute(upsert("meta", ("key", "value"), ("key",)), (key, str(number)))

    # --- events and operations ----------------------------------------------------

    def record_events(self, cur: Cursor, events: Sequence[Event]) -> None:
        """Within a transaction: keep `events` for delivery. The one place events are
        written: each gets its CloudEvents envelope and joins the outbox, so an event is
        kept exactly when its change is (a transactional outbox), and delivered after
        the commit (`mlinfra.events`)."""
        from mlinfra.state.cloudevents import outbox_row

        self.add_events(cur, [outbox_row(self.origin, e) for e in events])

    def add_events(self, cur: Cursor, events: Sequence[OutboxEvent]) -> None:
        """Within a transaction: rows of the outbox, envelopes made."""
        if events:
            cur.executemany("INSERT INTO outbox (event_id, type, subject, at, envelope) "
                            "VALUES (?, ?, ?, ?, ?)", [tuple(e) for e in events])

    def add_step(self, journal_id: int, name: str, data: dict[str, Any],
                 also: Callable[[Cursor], Any] | None = None) -> None:
        """The next step of the operation journaled as `journal_id`, committed at once
        with `also` (the state as the step left it)."""
        with engine_writing(), self.transaction() as cur:
            row = cur.execute("SELECT MAX(seq) FROM journal_steps WHERE journal_id=?",
                              (journal_id,)).fetchone()
            cur.execute("INSERT INTO journal_steps (journal_id, seq, name, data, at) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (journal_id, int(row[0] or 0) + 1, name,
                         json.dumps(data, sort_keys=True, default=str), time.time()))
            if also is not None:
                also(cur)

    def steps(self, journal_id: int) -> list[Step]:
        """The steps of an operation, in order."""
        from mlinfra.state.work import Step

        return [Step(int(seq), str(name), row_json(data, f"journal step {journal_id}.{seq}"),
                     float(at))
                for seq, name, data, at in self.query(
                    "SELECT seq, name, data, at FROM journal_steps WHERE journal_id=? "
                    "ORDER BY seq", (journal_id,))]

    def operations(self, address: str, action: str, status: str = "interrupted"
                   ) -> list[JournalEntry]:
        """The journaled operations of `action` on `address` with `status`, oldest first."""
        rows = self.query("SELECT id, address, action, pid, host, started_at, status, detail "
                          "FROM journal WHERE address=? AND action=? AND status=? ORDER BY id",
                          (address, action, status))
        return [JournalEntry(*row) for row in rows]

    def settle_operation(self, journal_id: int, status: str, detail: str = "") -> None:
        """An interrupted operation that recovery resumed or undid."""
        with engine_writing(), self.transaction() as cur:
            cur.execute("UPDATE journal SET status=?, detail=? WHERE id=?",
                        (status, detail[:2000], journal_id))

    # --- the state ---------------------------------------------------------------

    def meta(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.query("SELECT key, value FROM meta")}

    def version(self) -> StateVersion:
        rows = dict(self.query("SELECT key, value FROM meta WHERE key IN ('lineage','serial')"))
        if "lineage" not in rows or "serial" not in rows:
            raise StateCorrupted(f"the state {self.location} is damaged: its meta table has "
                                 f"no {'lineage' if 'lineage' not in rows else 'serial'}. "
                                 + RESTORE)
        return StateVersion(lineage=str(rows["lineage"]),
                            serial=meta_int(rows["serial"], "serial", self.location))

    def resources(self) -> dict[str, ResourceState]:
        # NOTE: each JSON column is parsed on its own: a damaged value parsed with its
        # neighbours could be read as other columns.
        return {row[0]: _resource(row) for row in self.query(_SELECT_RESOURCES)}

    def get(self, address: str) -> ResourceState | None:
        rows = self.query(_SELECT_RESOURCES + " WHERE address=?", (address,))
        return _resource(rows[0]) if rows else None

    # --- journal and changes -----------------------------------------------------

    def begin_operation(self, address: str, action: str) -> int:
        with engine_writing(), self.transaction() as cur:
            return self._insert_id(
                cur, "INSERT INTO journal (address, action, pid, host, started_at, status) "
                "VALUES (?, ?, ?, ?, ?, 'pending')",
                (address, action, os.getpid(), HOST, time.time()))

    def fail_operation(self, journal_id: int, detail: str,
                       work: UnitOfWork | None = None) -> None:
        """The change failed: its journal entry says why, in one transaction with what
        its unit of work staged to be kept even then (`UnitOfWork.always`)."""
        with engine_writing(), self.transaction() as cur:
            if work is not None:
                work.commit(cur, failed=True)
            cur.execute("UPDATE journal SET status='failed', finished_at=?, detail=? WHERE id=?",
                        (time.time(), detail[:2000], journal_id))

    def commit_change(self, journal_id: int | None, address: str, action: str,
                      new: ResourceState | None, detail: str = "",
                      work: UnitOfWork | None = None) -> int:
        """Record the outcome of one change in one transaction, with what its unit of
        work staged; returns the new serial. `new` None removes the resource."""
        with engine_writing(), self.transaction() as cur:
            if work is not None:
                work.commit(cur)
            if journal_id is not None:
                cur.execute("UPDATE journal SET status='done', finished_at=? WHERE id=?",
                            (time.time(), journal_id))
            serial = self.put_resource(cur, address, action, new, detail)
        return serial

    def put_resource(self, cur: Cursor, address: str, action: str,
                     new: ResourceState | None, detail: str = "") -> int:
        """Within a transaction: the resource as it is now (None: gone); the serial
        grows and the audit log says so. Returns the new serial."""
        if new is None:
            cur.execute("DELETE FROM resources WHERE address=?", (address,))
        else:
            cur.execute(upsert("resources", _RESOURCE_COLUMNS, ("address",)),
                        (new.address, new.kind, new.name, json.dumps(new.attributes),
                         new.inputs_hash, json.dumps(new.outputs), new.provider_id,
                         json.dumps(new.dependencies), time.time()))
        return self.advance(cur, address, action, detail)

    def commit_operation(self, journal_id: int, work: UnitOfWork, detail: str = "",
                         status: str = "done") -> None:
        """Commit an operation outside apply (no resource changes): what its unit of
        work staged, and its journal entry, in one transaction."""
        with engine_writing(), self.transaction() as cur:
            work.commit(cur)
            cur.execute("UPDATE journal SET status=?, finished_at=?, detail=? WHERE id=?",
                        (status, time.time(), detail[:2000], journal_id))

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

    def empty_workspace(self, cur: Cursor) -> None:
        """Within a transaction: forget what the workspace held: runs, metrics, model
        and data versions, aliases (the workspace is being destroyed). The numbers
        they had are kept, never given again."""
        for table in NUMBERED_BY_CONTENT:
            for name, number in cur.execute(f"SELECT name, MAX(version) FROM {table} "
                                            "GROUP BY name").fetchall():
                self.keep_number(cur, table, str(name), int(number))
        for table in WORKSPACE_TABLES:
            cur.execute(f"DELETE FROM {table}")

    def interrupted_operations(self) -> list[JournalEntry]:
        """Pending entries whose process is gone: the operation was cut short."""
        rows = self.query("SELECT id, address, action, pid, host, started_at, status, detail "
                          "FROM journal WHERE status='pending'")
        entries = [JournalEntry(*row) for row in rows]
        return [e for e in entries if not (on_this_machine(e.host) and pid_alive(e.pid))]

    def close_interrupted(self, entries: list[JournalEntry]) -> None:
        with engine_writing(), self.transaction() as cur:
            cur.executemany("UPDATE journal SET status='interrupted', finished_at=? WHERE id=? "
                            "AND status='pending'", [(time.time(), e.id) for e in entries])

    def audit_log(self, limit: int = 50) -> list[tuple[Any, ...]]:
        return self.query("SELECT at, username, host, command, address, action, serial, "
                          "detail FROM audit WHERE action <> 'event' ORDER BY id DESC "
                          "LIMIT ?", (limit,))

    def events(self, after: int = 0) -> list[tuple[int, Event]]:
        """The events recorded (`record_events`) with a sequence number past `after`,
        oldest first."""
        from mlinfra.state.work import Event

        out = []
        for row_id, kind, subject, at, envelope in self.query(
                "SELECT id, type, subject, at, envelope FROM outbox WHERE id>? ORDER BY id",
                (after,)):
            item = row_json(envelope, f"outbox event {row_id}")
            out.append((int(row_id), Event(str(kind), str(subject), dict(item["data"]),
                                           float(at))))
        return out

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
        with engine_writing(), self.transaction() as cur:
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
                         attributes=row_json(row[3], f"{where} attributes", dict),
                         inputs_hash=row[4], outputs=row_json(row[5], f"{where} outputs", dict),
                         provider_id=row[6],
                         dependencies=row_json(row[7], f"{where} dependencies", list),
                         updated_at=row[8])


def new_lineage() -> str:
    import uuid

    return str(uuid.uuid4())

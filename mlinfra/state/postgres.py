"""The team backend: a stack's state in a schema of a PostgreSQL database (psycopg 3).

`state: postgresql://USER@HOST[:PORT]/DB[?schema=NAME]`. The password comes from the
URL (`${secret.X}`, resolved by the engine), or from libpq's own variables (PGPASSWORD,
~/.pgpass), as do any parts the URL leaves out (PGHOST, PGUSER, PGDATABASE...). Each
project/stack has a schema of its own (`mlinfra_<project>_<stack>` unless `?schema=`
names one), holding the same tables as a SQLite state.

Every change is one transaction, and write transactions take a transaction-level
advisory lock, so writers are serialised as SQLite's BEGIN IMMEDIATE serialises them.
The stack's lock is a session-level `pg_try_advisory_lock` held on a connection of its
own: the server releases it the moment that session ends, so a holder killed with -9
frees it at once. Who holds it (user, host, pid, command, since, backend pid) is a row
of `locks`, so a second apply names the holder.

A session that only reads (plan, output, the listings) goes through libpq directly
(`libpq.py`): it needs no psycopg, whose import alone costs more than a whole plan.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from mlinfra.errors import MlinfraError
from mlinfra.state import libpq
from mlinfra.state.model import LockInfo
from mlinfra.state.schema import NUMBERED_TABLES, create_tables, latest_version, upgrade
from mlinfra.state.store import (
    HOST,
    Cursor,
    StateCorrupted,
    StateStore,
    StateUnavailable,
    current_user,
    new_lineage,
    upsert,
)

if TYPE_CHECKING:
    import psycopg

_SCHEMA = re.compile(r"^[a-z_][a-z0-9_]{0,62}\Z")
_LOCK_COLUMNS = ("stack", "id", "owner", "host", "pid", "command", "created_at", "backend_pid")
# How long a second apply waits for the holder's row to appear (it is written just
# after the advisory lock is taken) before naming the holder by its session alone.
_HOLDER_ROW_WAIT_S = 1.0


def default_schema(project: str, stack: str) -> str:
    """`mlinfra_<project>_<stack>`, within PostgreSQL's 63 characters."""
    name = f"mlinfra_{project}_{stack}".replace("-", "_")
    if len(name) > 63:
        name = f"{name[:54]}_{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return name


class PostgresLocation:
    """A state URL taken apart: what libpq connects with, the schema, and how the URL
    is shown (without its password)."""

    def __init__(self, url: str, project: str, stack: str) -> None:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        named = [value for key, value in query if key == "schema"]
        if len(named) > 1:
            raise MlinfraError(f"state: ?schema= is given {len(named)} times; give it once")
        self.schema = named[-1] if named else default_schema(project, stack)
        # `validate` checks the URL as written: a ${var.X} in it is filled in later.
        if "${" not in self.schema and not _SCHEMA.match(self.schema):
            raise MlinfraError(f"state: schema '{self.schema}' is not a plain PostgreSQL "
                               "name: use lowercase letters, digits and _ (at most 63), "
                               "e.g. ?schema=mlinfra_fraud_prod")
        self.options = " ".join(value for key, value in query if key == "options")
        rest = [(key, value) for key, value in query if key not in ("schema", "options")]
        if not any(key == "connect_timeout" for key, _ in rest) and \
                "PGCONNECT_TIMEOUT" not in os.environ:
            rest.append(("connect_timeout", "10"))
        self.conninfo = _unsplit(parts._replace(query=urlencode(rest)))
        netloc = parts.netloc
        if parts.password is not None:
            netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
        self.display = _unsplit(parts._replace(netloc=netloc, query=urlencode(
            [(k, "***" if k == "password" else v) for k, v in query if k != "options"],
            safe="*")))
        if not named:
            self.display += ("&" if parts.query else "?") + f"schema={self.schema}"


def _unsplit(parts: SplitResult) -> str:
    """The URL again, with its `//` even when it names no host (`postgresql:///db`:
    libpq takes the host from PGHOST), which urlunsplit drops for unknown schemes."""
    url = urlunsplit(parts._replace(scheme="http"))
    return parts.scheme + url[len("http"):]


def _key(text: str) -> int:
    """A signed 64-bit advisory lock key."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big", signed=True)


@lru_cache(maxsize=512)
def _translate(sql: str, with_args: bool) -> str:
    """`?` placeholders (outside quoted strings) as psycopg's `%s`; psycopg reads every
    other % as one too, even in a quoted string, so each is doubled."""
    if not with_args:
        return sql
    parts = sql.replace("%", "%%").split("'")
    for i in range(0, len(parts), 2):
        parts[i] = parts[i].replace("?", "%s")
    return "'".join(parts)


@lru_cache(maxsize=512)
def _numbered(sql: str) -> str:
    """`?` placeholders (outside quoted strings) as libpq's `$1`, `$2`..."""
    parts, count = sql.split("'"), 0
    for i in range(0, len(parts), 2):
        pieces = parts[i].split("?")
        for j in range(1, len(pieces)):
            count += 1
            pieces[j] = f"${count}{pieces[j]}"
        parts[i] = "".join(pieces)
    return "'".join(parts)


class _PgCursor:
    """A psycopg cursor that takes the `?` placeholders the layers above write."""

    __slots__ = ("_cur",)

    def __init__(self, cur: psycopg.Cursor[Any]) -> None:
        self._cur = cur

    def execute(self, sql: str, args: Sequence[Any] = (), /) -> _PgCursor:
        self._cur.execute(_translate(sql, bool(args)), args or None)
        return self

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]], /) -> _PgCursor:
        self._cur.executemany(_translate(sql, True), rows)
        return self

    @property
    def rowcount(self) -> int:
        return self._cur.rowcount

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()


class _PostgresSession(StateStore):
    """What reading and writing sessions share: where the state is, and how the
    lock's holder is found."""

    dialect = "postgresql"

    def __init__(self, where: PostgresLocation, command: str, readonly: bool) -> None:
        super().__init__(where.display, command, readonly)
        self.where = where
        self.schema = where.schema
        self._lock = threading.RLock()

    def _options(self) -> str:
        options = f"-c search_path={self.schema}"
        if self.readonly:
            options += " -c default_transaction_read_only=on"
        if self.where.options:
            options += " " + self.where.options
        return options

    @abc.abstractmethod
    def inspect(self) -> tuple[dict[str, str] | None, int]:
        """(meta of the state, or None if there is none yet; how many tables the
        schema holds, when there is none)."""

    def _count_tables(self) -> int:
        row = self.query("SELECT count(*) FROM pg_tables WHERE schemaname = ?", (self.schema,))
        return int(row[0][0]) if row else 0

    def backup(self) -> None:
        """None: on PostgreSQL the server's own backups (pg_dump -n SCHEMA, continuous
        archiving) are the copy; a write session keeps none of its own."""
        return None

    def _insert_id(self, cur: Cursor, sql: str, args: Sequence[Any]) -> int:
        return int(cur.execute(sql + " RETURNING id", args).fetchone()[0])

    def _columns(self, table: str) -> Iterator[str]:
        return (row[0] for row in self.query(
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? "
            "AND table_name = ? ORDER BY ordinal_position", (self.schema, table)))

    def _lock_key(self, stack: str) -> int:
        return _key(f"mlinfra lock {self.schema} {stack}")

    def _holder(self, stack: str, key: int) -> LockInfo | None:
        """The session holding the advisory lock now, as its row names it; a session
        that has not written its row yet is named by its backend pid."""
        sessions = self.query(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
            "database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid::bigint = ? AND objid::bigint = ? AND objsubid = 1",
            ((key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF))
        if not sessions:
            return None
        backend = int(sessions[0][0])
        rows = self.query(f"SELECT {', '.join(_LOCK_COLUMNS[1:])} FROM locks WHERE stack=? "
                          "AND backend_pid=?", (stack, backend))
        if rows:
            return LockInfo(*rows[0])
        return LockInfo(f"session-{backend}", "(not known)", "(unknown host)", 0,
                        "(unknown)", time.time(), backend)

    def lock_holder(self, stack: str) -> LockInfo | None:
        return self._holder(stack, self._lock_key(stack))


class _Refused(MlinfraError):
    def __init__(self, message: str, sqlstate: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class PostgresReader(_PostgresSession):
    """A read-only session, on libpq itself (see libpq.py)."""

    def __init__(self, where: PostgresLocation, command: str) -> None:
        super().__init__(where, command, readonly=True)
        try:
            self.conn = libpq.Connection(where.conninfo, options=self._options(),
                                         application_name="mlinfra state")
        except libpq.PgError as err:
            raise StateUnavailable(f"cannot open the state at {self.location}: {err}") from err

    def inspect(self) -> tuple[dict[str, str] | None, int]:
        try:
            return self.meta(), 0
        except _Refused as err:
            if err.sqlstate != "42P01":  # undefined_table: no state here yet
                raise
            return None, self._count_tables()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return self.conn.execute(_numbered(sql) if args else sql, args)
            except libpq.PgError as err:
                if err.sqlstate[:2] in ("", "08", "57"):  # connection lost, shutdown
                    raise StateUnavailable(f"the PostgreSQL state {self.location} failed: "
                                           f"{err}") from err
                raise _Refused(f"the PostgreSQL state {self.location} refused: {err}",
                               err.sqlstate) from err

    def transaction(self) -> AbstractContextManager[Cursor]:
        raise MlinfraError(f"the state {self.location} was opened only to read")

    def close(self) -> None:
        with self._lock:
            self.conn.close()

    def try_lock(self, stack: str, command: str) -> tuple[str | None, LockInfo | None]:
        raise MlinfraError(f"the state {self.location} was opened only to read")

    def release_lock(self, stack: str, lock_id: str) -> None:
        return None  # a reader never holds the lock

    def break_lock(self, stack: str, info: LockInfo) -> None:
        raise MlinfraError(f"the state {self.location} was opened only to read")


class PostgresStore(_PostgresSession):
    """The state of one stack in its own schema of a PostgreSQL database, on psycopg.

    Open it with `open_postgres`, which also decides what a read-only session of a
    missing or older state reads instead."""

    def __init__(self, where: PostgresLocation, command: str, readonly: bool) -> None:
        super().__init__(where, command, readonly)
        import psycopg  # only for a stack whose state is on PostgreSQL

        self._psycopg = psycopg
        self._write_key = _key(f"mlinfra write {self.schema}")
        self._lock_conn: psycopg.Connection[Any] | None = None
        self.conn = self._connect("state")

    def _connect(self, purpose: str) -> psycopg.Connection[Any]:
        try:
            return self._psycopg.connect(self.where.conninfo, autocommit=True,
                                         options=self._options(),
                                         application_name=f"mlinfra {purpose}")
        except self._psycopg.Error as err:
            raise StateUnavailable(f"cannot open the state at {self.location}: "
                                   f"{_reason(err)}") from err

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """The server's refusals (connection lost, permission denied) as messages."""
        errors = self._psycopg.errors
        try:
            yield
        except errors.AdminShutdown as err:
            raise StateUnavailable(f"the PostgreSQL state {self.location} ended this "
                                   f"session ({_reason(err)}): another process ran mlinfra "
                                   "state unlock, or the server restarted") from err
        except self._psycopg.OperationalError as err:
            raise StateUnavailable(f"the PostgreSQL state {self.location} failed: "
                                   f"{_reason(err)}") from err
        except (errors.InsufficientPrivilege, errors.ReadOnlySqlTransaction) as err:
            raise MlinfraError(f"the PostgreSQL state {self.location} refused: "
                               f"{_reason(err)}") from err

    # --- opening -------------------------------------------------------------------

    def inspect(self) -> tuple[dict[str, str] | None, int]:
        with self._lock, self._errors():
            try:  # one round trip for a state that exists, as most do
                return self.meta(), 0
            except self._psycopg.errors.UndefinedTable:
                return None, self._count_tables()

    def create(self) -> dict[str, str]:
        """Create the schema (unless it exists) and every table, with a new lineage;
        returns meta. Two processes creating at once: the second finds it created."""
        with self._lock, self._errors(), self.transaction() as cur:
            if cur.execute("SELECT to_regclass(?) IS NOT NULL",
                           (f"{self.schema}.meta",)).fetchone()[0]:
                return self.meta()
            if not cur.execute("SELECT 1 FROM pg_namespace WHERE nspname = ?",
                               (self.schema,)).fetchall():
                cur.execute(f'CREATE SCHEMA "{self.schema}"')
            version = create_tables(cur, self.dialect)
            cur.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("lineage", new_lineage()), ("serial", "0"), ("format_version", str(version))])
        return self.meta()

    def upgrade(self) -> None:
        """Run the migrations after the state's version, in one transaction."""
        with self._lock, self._errors(), self.transaction() as cur:
            version = int(cur.execute("SELECT value FROM meta WHERE key='format_version'"
                                      ).fetchone()[0])
            upgrade(cur, self.dialect, version)

    # --- the StateStore interface --------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[Cursor]:
        self._check_writer()
        with self._lock, self._errors():
            with self.conn.transaction():
                cur = self.conn.cursor()
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._write_key,))
                yield _PgCursor(cur)
            self._committed()

    def query(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        with self._lock, self._errors():
            return self.conn.execute(_translate(sql, bool(args)),
                                     args or None).fetchall()

    def close(self) -> None:
        with self._lock:
            if self._lock_conn is not None:
                self._lock_conn.close()
            self.conn.close()

    def load_rows(self, cur: Cursor, table: str, columns: Sequence[str],
                  rows: list[tuple[Any, ...]]) -> None:
        super().load_rows(cur, table, columns, rows)
        if table in NUMBERED_TABLES:  # new ids follow the copied ones
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                        f"COALESCE(MAX(id), 0) + 1, false) FROM {table}")

    # --- the lock ------------------------------------------------------------------

    def try_lock(self, stack: str, command: str) -> tuple[str | None, LockInfo | None]:
        key = self._lock_key(stack)
        with self._lock, self._errors():
            if self._lock_conn is None:
                self._lock_conn = self._connect("lock")
            row = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
            if not (row and row[0]):
                deadline = time.monotonic() + _HOLDER_ROW_WAIT_S
                while True:
                    info = self._holder(stack, key)
                    if info is None or info.pid or time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
                if info is None:  # released meanwhile: try again
                    return self.try_lock(stack, command)
                return None, info
            lock_id = os.urandom(6).hex()
            # Both sessions carry the lock's ID, so `state unlock` can end them.
            for conn in (self._lock_conn, self.conn):
                conn.execute("SELECT set_config('application_name', %s, false)",
                             (f"mlinfra lock {lock_id}",))
            with self.transaction() as cur:
                cur.execute(upsert("locks", _LOCK_COLUMNS, ("stack",)),
                            (stack, lock_id, current_user(), HOST, os.getpid(), command,
                             time.time(), self._lock_conn.info.backend_pid))
        return lock_id, None

    def release_lock(self, stack: str, lock_id: str) -> None:
        with self._lock:
            lock_conn, self._lock_conn = self._lock_conn, None
            # A session that is gone (`state unlock` ended it, or the server went away)
            # took the lock with it, and a row names no holder once no session holds
            # the lock: nothing is left to undo then.
            with contextlib.suppress(MlinfraError, self._psycopg.Error):
                with self.transaction() as cur:
                    cur.execute("DELETE FROM locks WHERE stack=? AND id=?", (stack, lock_id))
                self.conn.execute("SELECT set_config('application_name', 'mlinfra state', "
                                  "false)")
            if lock_conn is not None:
                # Unlocked now, not once the server notices that the session closed.
                with contextlib.suppress(self._psycopg.Error):
                    lock_conn.execute("SELECT pg_advisory_unlock(%s)", (self._lock_key(stack),))
                lock_conn.close()

    def break_lock(self, stack: str, info: LockInfo) -> None:
        """End the holder's sessions (its lock's and its state's): the server releases
        the lock, and the holder can no longer write without it."""
        key = self._lock_key(stack)
        with self._errors():
            self.query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                       "datname = current_database() AND (application_name = ? OR pid = ?)",
                       (f"mlinfra lock {info.id}", info.backend_pid or 0))
        deadline = time.monotonic() + 10
        while self._holder(stack, key) is not None:
            if time.monotonic() > deadline:
                raise MlinfraError(f"the session holding the lock of stack '{stack}' "
                                   f"(PostgreSQL backend {info.backend_pid}) did not end; "
                                   f"ask the database's administrator to end it")
            time.sleep(0.05)
        with self.transaction() as cur:
            cur.execute("DELETE FROM locks WHERE stack=? AND id=?", (stack, info.id))


def _reason(err: Exception) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def open_postgres(url: str, *, project: str, stack: str, command: str,
                  readonly: bool) -> StateStore:
    """The stack's state on PostgreSQL. A session that writes creates the schema and
    tables on first use and upgrades an older schema; a read-only one of a state that
    does not exist yet reads an empty state, and one of an older schema reads an
    upgraded copy in memory, so neither changes the database."""
    where = PostgresLocation(url, project, stack)
    store = (PostgresReader(where, command) if readonly and libpq.load()
             else PostgresStore(where, command, readonly))
    try:
        meta, tables = store.inspect()
        if meta is None and tables:
            held = f"{tables} table{'s' if tables > 1 else ''}"
            raise StateCorrupted(f"the schema '{store.schema}' of {where.display} holds "
                                 f"{held} but no mlinfra state: name another schema with "
                                 "?schema=NAME in the stack's state URL")
        if meta is None and readonly:
            from mlinfra.state.sqlite import SqliteStore

            store.close()
            return SqliteStore.in_memory(where.display, command)
        if meta is None and isinstance(store, PostgresStore):
            meta = store.create()
        version = _format_version(meta or {}, store)
        if version < latest_version() and readonly:
            from mlinfra.state.transfer import upgraded_copy

            copy = upgraded_copy(store, version)
            store.close()
            return copy
        if version < latest_version() and isinstance(store, PostgresStore):
            store.upgrade()
        return store
    except BaseException:
        store.close()
        raise


def _format_version(meta: dict[str, str], store: _PostgresSession) -> int:
    if not meta.get("lineage") or "format_version" not in meta:
        raise StateCorrupted(f"the schema '{store.schema}' of {store.location} is not an "
                             "mlinfra state: it has no lineage or format version")
    version = int(meta["format_version"])
    if version > latest_version():
        raise MlinfraError(f"the state {store.location} has schema version {version}; "
                           f"this mlinfra reads up to version {latest_version()}: "
                           "upgrade mlinfra to use it")
    return version

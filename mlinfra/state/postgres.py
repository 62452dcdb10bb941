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

A session that only reads (plan, output, the listings) is a psycopg session too, whose
transactions the server keeps read-only (`default_transaction_read_only`).
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
from urllib.parse import SplitResult, parse_qsl, quote, urlencode, urlsplit, urlunsplit

from mlinfra.errors import MlinfraError
from mlinfra.state.model import LockInfo
from mlinfra.state.schema import NUMBERED_TABLES, create_tables, latest_version, upgrade
from mlinfra.state.store import (
    HOST,
    Cursor,
    StateCorrupted,
    StateStore,
    StateUnavailable,
    current_user,
    meta_int,
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
KEEPALIVES = {"keepalives": "1", "keepalives_idle": "15", "keepalives_interval": "5",
              "keepalives_count": "3", "tcp_user_timeout": "30000"}


class LockLost(MlinfraError):
    """The session holding the stack's lock ended (the server restarted, the network
    went away, `state unlock`): nothing more is committed without the lock."""


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
        scheme, user, password, rest = _credentials(url)
        # What is shown of the URL never holds its password, whatever it holds.
        masked = f"{scheme}://{user}{':***' if password is not None else ''}" \
                 f"{'@' if user or password is not None else ''}"
        try:
            parts = urlsplit(f"{scheme}://{user}{'@' if user else ''}{rest}")
            parts.port  # noqa: B018 (a port that is not a number raises here)
        except ValueError as err:
            raise MlinfraError(f"state: the URL {masked}{rest} is malformed ({err}): "
                               "postgresql://USER@HOST[:PORT]/DB, an IPv6 host in "
                               "brackets ([::1])") from None
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
        rest_query = [(key, value) for key, value in query if key not in ("schema", "options")]
        if not any(key == "connect_timeout" for key, _ in rest_query) and \
                "PGCONNECT_TIMEOUT" not in os.environ:
            rest_query.append(("connect_timeout", "10"))
        netloc = parts.netloc
        if password is not None:  # percent-encoded, so #, / and @ in it reach libpq whole
            netloc = f"{user}:{quote(password, safe=_PASSWORD_SAFE)}@{parts.netloc[len(user) + 1:]}"
        self.conninfo = _unsplit(parts._replace(netloc=netloc, query=urlencode(rest_query)))
        hidden = f"{user}:***@{parts.netloc[len(user) + 1:]}" if password is not None \
            else parts.netloc
        self.display = _unsplit(parts._replace(netloc=hidden, query=urlencode(
            [(k, "***" if k == "password" else v) for k, v in query if k != "options"],
            safe="*")))
        if not named:
            self.display += ("&" if parts.query else "?") + f"schema={self.schema}"


# NOTE: `%` stays as written: a password may already be percent-encoded, as RFC 3986
# asks; whatever else it holds is encoded here.
_PASSWORD_SAFE = "%!$&'()*+,;=~-._"


def _credentials(url: str) -> tuple[str, str, str | None, str]:
    """(scheme, user, password or None, the rest) of a URL whose password may hold any
    character, `#`, `/` and `@` included: the credentials end at the URL's last `@`."""
    scheme, _, remainder = url.partition("://")
    if "@" not in remainder:
        return scheme, "", None, remainder
    userinfo, _, rest = remainder.rpartition("@")
    user, colon, password = userinfo.partition(":")
    return scheme, user, password if colon else None, rest


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


class PostgresStore(_PostgresSession):
    """The state of one stack in its own schema of a PostgreSQL database, on psycopg.
    A read-only store's session cannot write (the server refuses it) and takes no lock.

    Open it with `open_postgres`, which also decides what a read-only session of a
    missing or older state reads instead."""

    def __init__(self, where: PostgresLocation, command: str, readonly: bool) -> None:
        super().__init__(where, command, readonly)
        import psycopg  # only for a stack whose state is on PostgreSQL

        self._psycopg = psycopg
        self._write_key = _key(f"mlinfra write {self.schema}")
        self._lock_conn: psycopg.Connection[Any] | None = None
        self._held: tuple[str, int, int] | None = None  # stack, lock key, backend pid
        self.conn = self._connect("state")

    def _connect(self, purpose: str) -> psycopg.Connection[Any]:
        # TCP keepalives: a server or network that went away is noticed within a minute
        # on an idle session (the lock's is idle for a whole apply), not hours later.
        from psycopg.conninfo import make_conninfo

        try:
            conninfo = make_conninfo(self.where.conninfo, options=self._options(),
                                     application_name=f"mlinfra {purpose}",
                                     **({} if "keepalives" in self.where.conninfo
                                        else KEEPALIVES))
            return self._psycopg.connect(conninfo, autocommit=True)
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

    def _writes(self) -> None:
        if self.readonly:
            raise MlinfraError(f"the state {self.location} was opened only to read")

    def transaction(self) -> AbstractContextManager[Cursor]:
        self._writes()
        return self._transaction()

    @contextmanager
    def _transaction(self) -> Iterator[Cursor]:
        self._check_writer()
        with self._lock, self._errors():
            with self.conn.transaction():
                cur = self.conn.cursor()
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (self._write_key,))
                if self._held is not None:
                    self._check_held(cur)
                yield _PgCursor(cur)
            self._committed()

    def _check_held(self, cur: psycopg.Cursor[Any]) -> None:
        """Within the transaction about to commit: the stack's lock is still held by
        the session that took it, or nothing is committed."""
        assert self._held is not None
        stack, key, backend = self._held
        cur.execute("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                    "pid = %s AND classid::bigint = %s AND objid::bigint = %s AND "
                    "objsubid = 1", (backend, (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF))
        if cur.fetchone() is None:
            raise LockLost(f"the lock of stack '{stack}' was lost: its PostgreSQL session "
                           f"(backend {backend}) ended (the server restarted, the network "
                           "went away, or mlinfra state unlock ended it), so another apply "
                           "may hold it now. Nothing more is committed: run the command "
                           "again.")

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
        self._writes()
        key = self._lock_key(stack)
        with self._lock, self._errors():
            if self._lock_conn is None:
                self._lock_conn = self._connect("lock")
            row = self._lock_conn.execute("SELECT pg_try_advisory_lock(%s), pg_backend_pid()",
                                          (key,)).fetchone()
            if row and row[0]:
                self._refuse_pooling(key, int(row[1]))
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
            backend = int(row[1])
            with self.transaction() as cur:
                cur.execute(upsert("locks", _LOCK_COLUMNS, ("stack",)),
                            (stack, lock_id, current_user(), HOST, os.getpid(), command,
                             time.time(), backend))
            self._held = (stack, key, backend)
        return lock_id, None

    def _refuse_pooling(self, key: int, backend: int) -> None:
        """A session-level lock needs a session: through a transaction pooler (PgBouncer's
        pool_mode=transaction or statement) each statement may run on another server
        session, which another client shares. Seen as a lock session whose backend or
        settings do not last from one statement to the next, or whose backend is the
        state session's."""
        assert self._lock_conn is not None
        lock_conn = self._lock_conn
        lock_conn.execute("SELECT set_config('mlinfra.session', %s, false)", (str(backend),))
        again = lock_conn.execute("SELECT pg_backend_pid(), current_setting('mlinfra.session', "
                                  "true)").fetchone()
        state = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        if again is not None and state is not None and int(again[0]) == backend and \
                again[1] == str(backend) and int(state[0]) != backend:
            return
        with contextlib.suppress(self._psycopg.Error):
            lock_conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
        self._lock_conn = None
        if lock_conn is not self.conn:
            lock_conn.close()
        raise MlinfraError(
            f"the state {self.location} is reached through a transaction pooler (PgBouncer "
            "with pool_mode=transaction or statement): its server sessions are shared "
            "between clients, so the stack's lock, held by a session, would not keep two "
            "applies apart. Connect to PostgreSQL directly, or through a pool in "
            "pool_mode=session.")

    def release_lock(self, stack: str, lock_id: str) -> None:
        with self._lock:
            lock_conn, self._lock_conn, self._held = self._lock_conn, None, None
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
        self._writes()
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
    store = PostgresStore(where, command, readonly)
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
        if meta is None:
            meta = store.create()
        version = _format_version(meta or {}, store)
        if version < latest_version() and readonly:
            from mlinfra.state.transfer import upgraded_copy

            copy = upgraded_copy(store, version)
            store.close()
            return copy
        if version < latest_version():
            store.upgrade()
        return store
    except BaseException:
        store.close()
        raise


def _format_version(meta: dict[str, str], store: _PostgresSession) -> int:
    if not meta.get("lineage") or "format_version" not in meta:
        raise StateCorrupted(f"the schema '{store.schema}' of {store.location} is not an "
                             "mlinfra state: it has no lineage or format version")
    meta_int(meta.get("serial"), "serial", store.location)
    version = meta_int(meta["format_version"], "format_version", store.location)
    if version > latest_version():
        raise MlinfraError(f"the state {store.location} has schema version {version}; "
                           f"this mlinfra reads up to version {latest_version()}: "
                           "upgrade mlinfra to use it")
    return version

"""Reading a PostgreSQL state through libpq itself, for the sessions that only read.

A no-change plan of 1,000 resources takes 0.06 s on SQLite; importing psycopg alone
takes 0.1 s (asyncio, logging, its type system), so a plan on PostgreSQL was three
times slower for work that needs four libpq calls: connect, run a query with its
parameters, read text back, close. Read-only sessions (plan, output, the listings) use
this; a session that writes (the lock, transactions) uses psycopg. libpq is the
system's (Debian's libpq5, Homebrew's libpq), or the copy psycopg-binary installs;
without either, read-only sessions use psycopg too.
"""

from __future__ import annotations

import ctypes
import importlib.util
import sys
from collections.abc import Callable, Sequence
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any

_CONNECTION_OK = 0
_TUPLES_OK, _COMMAND_OK = 2, 1
_SQLSTATE = ord("C")
_TEXT_OIDS: dict[int, Callable[[str], Any]] = {
    16: lambda v: v == "t",                       # bool
    20: int, 21: int, 23: int, 26: int,           # int8, int2, int4, oid
    700: float, 701: float,                       # float4, float8
    1700: Decimal,                                # numeric (sum of bigint, say)
}
# The type each Python value is sent as (as psycopg sends them); 0 lets the server
# infer it, as psycopg does for str.
_INT8, _FLOAT8, _BOOL, _NUMERIC = 20, 701, 16, 1700


class PgError(Exception):
    """The server's or libpq's refusal, with its SQLSTATE ("" for a connection's)."""

    def __init__(self, message: str, sqlstate: str = "") -> None:
        super().__init__(" ".join(message.split()))
        self.sqlstate = sqlstate


def _candidates() -> list[str]:
    names = {"darwin": ["libpq.5.dylib", "/opt/homebrew/opt/libpq/lib/libpq.5.dylib",
                        "/usr/local/opt/libpq/lib/libpq.5.dylib"],
             "win32": ["libpq.dll"]}.get(sys.platform, ["libpq.so.5"])
    # psycopg-binary's own copy, found without importing psycopg (find_spec of a
    # top-level package only locates it).
    spec = importlib.util.find_spec("psycopg_binary")
    if spec is not None and spec.origin:
        package = Path(spec.origin).parent
        for folder in (package.parent / "psycopg_binary.libs", package / ".dylibs"):
            names += sorted(str(p) for p in folder.glob("libpq*"))
    return names


@lru_cache(maxsize=1)
def load() -> ctypes.CDLL | None:
    """libpq with the prototypes used here, or None where none loads."""
    for name in _candidates():
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        p, s, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for fn, args, result in (
                ("PQconnectdbParams", [ctypes.POINTER(s), ctypes.POINTER(s), i], p),
                ("PQstatus", [p], i), ("PQerrorMessage", [p], s), ("PQfinish", [p], None),
                ("PQbackendPID", [p], i),
                ("PQexecParams", [p, s, i, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(s),
                                  p, p, i], p),
                ("PQresultStatus", [p], i), ("PQresultErrorMessage", [p], s),
                ("PQresultErrorField", [p, i], s), ("PQclear", [p], None),
                ("PQntuples", [p], i), ("PQnfields", [p], i), ("PQftype", [p, i], ctypes.c_uint),
                ("PQgetisnull", [p, i, i], i), ("PQgetvalue", [p, i, i], s)):
            func = getattr(lib, fn)
            func.argtypes, func.restype = args, result
        return lib
    return None


def _param(value: Any) -> tuple[int, bytes | None]:
    if value is None:
        return 0, None
    if isinstance(value, bool):
        return _BOOL, b"t" if value else b"f"
    if isinstance(value, int):
        return (_INT8 if -2**63 <= value < 2**63 else _NUMERIC), str(value).encode()
    if isinstance(value, float):
        return _FLOAT8, repr(value).encode()
    return 0, str(value).encode()


class Connection:
    """One libpq connection: `execute` runs a statement and returns its rows, typed
    as psycopg types them (int, float, bool, Decimal; text as str)."""

    def __init__(self, conninfo: str, **settings: str) -> None:
        lib = load()
        if lib is None:
            raise PgError("libpq is not installed")
        self._lib = lib
        keys = ["dbname", "client_encoding", *settings]
        values = [conninfo, "UTF8", *settings.values()]
        array = ctypes.c_char_p * (len(keys) + 1)
        # expand_dbname=1: a URL in dbname is taken apart; the keywords after it win.
        self._conn = lib.PQconnectdbParams(array(*(k.encode() for k in keys), None),
                                           array(*(v.encode() for v in values), None), 1)
        if lib.PQstatus(self._conn) != _CONNECTION_OK:
            message = (lib.PQerrorMessage(self._conn) or b"").decode(errors="replace")
            self.close()
            raise PgError(message or "cannot connect")

    @property
    def backend_pid(self) -> int:
        return int(self._lib.PQbackendPID(self._conn))

    def execute(self, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        lib = self._lib
        types, values = zip(*map(_param, args), strict=True) if args else ((), ())
        result = lib.PQexecParams(self._conn, sql.encode(), len(args),
                                  (ctypes.c_uint * len(args))(*types),
                                  (ctypes.c_char_p * len(args))(*values), None, None, 0)
        if not result:
            raise PgError((lib.PQerrorMessage(self._conn) or b"").decode(errors="replace"))
        try:
            status = lib.PQresultStatus(result)
            if status not in (_TUPLES_OK, _COMMAND_OK):
                state = lib.PQresultErrorField(result, _SQLSTATE) or b""
                raise PgError(lib.PQresultErrorMessage(result).decode(errors="replace"),
                              state.decode())
            columns = range(lib.PQnfields(result))
            read = [_TEXT_OIDS.get(lib.PQftype(result, c), str) for c in columns]
            value, isnull = lib.PQgetvalue, lib.PQgetisnull
            return [tuple(None if isnull(result, r, c) else
                          read[c](value(result, r, c).decode()) for c in columns)
                    for r in range(lib.PQntuples(result))]
        finally:
            lib.PQclear(result)

    def close(self) -> None:
        if self._conn:
            self._lib.PQfinish(self._conn)
            self._conn = None

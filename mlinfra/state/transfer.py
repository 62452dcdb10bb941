"""Copying a whole state from one store to another, verified table by table.

`mlinfra state migrate --to ...` moves a stack between backends (SQLite to PostgreSQL
and back): every row of every table but the lock's, ids included, and meta with its
lineage and serial, so saved plans, audit history and run ids stay valid. The copy is
checked by the row count and a digest of each table, read back from the target.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

from mlinfra.errors import MlinfraError
from mlinfra.state.model import canonical_json
from mlinfra.state.schema import COPIED_TABLES, TABLES, upgrade
from mlinfra.state.store import StateStore


class TableCopy(NamedTuple):
    """One table copied: its rows and digest in the source, and whether the target's
    agree."""

    table: str
    rows: int
    digest: str
    verified: bool


def table_digest(store: StateStore, table: str) -> tuple[int, str]:
    """(rows, sha256 of the rows in a canonical order): equal on both backends for
    equal contents, whatever order or collation each returns them in."""
    columns = store.columns(table)
    rows = [canonical_json(list(row)) for row in store.query(
        f"SELECT {', '.join(columns)} FROM {table}")]
    rows.sort()
    digest = hashlib.sha256(canonical_json([columns, rows]).encode()).hexdigest()
    return len(rows), digest


def _rows(store: StateStore, table: str, columns: list[str]) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in store.query(f"SELECT {', '.join(columns)} FROM {table}")]


def copy_state(source: StateStore, target: StateStore, resume: bool = False
               ) -> list[TableCopy]:
    """Replace the (new, empty) target's state with the source's, in one transaction,
    then compare them table by table. Both are at the latest schema version, and the
    caller holds both stacks' locks. `resume`: an interrupted migration of this state
    to the target is being finished: a target holding a copy of this state (its
    lineage) is copied over again."""
    have = target.version()
    ours = resume and have.lineage == source.version().lineage
    if (have.serial != 0 or target.resources()) and not ours:
        raise MlinfraError(f"the state at {target.location} is not empty (serial "
                           f"{have.serial}): migrate only into a new state")
    tables = list(COPIED_TABLES)
    for table in tables:
        if source.columns(table) != target.columns(table):
            raise MlinfraError(f"table {table} differs between {source.location} and "
                               f"{target.location}: both must be at the same schema version")
    with target.transaction() as cur:
        for table in tables:
            columns = source.columns(table)
            cur.execute(f"DELETE FROM {table}")
            target.load_rows(cur, table, columns, _rows(source, table, columns))
    report = []
    for table in tables:
        rows, digest = table_digest(source, table)
        report.append(TableCopy(table, rows, digest, table_digest(target, table) ==
                                (rows, digest)))
    return report


def upgraded_copy(source: StateStore, version: int) -> StateStore:
    """What a read-only session reads of a state at an older schema `version`: a copy
    in memory, upgraded there, so the state itself is not changed."""
    from mlinfra.state.sqlite import SqliteStore

    copy = SqliteStore.in_memory(source.location, source.command, version)
    with copy.transaction() as cur:
        cur.execute("DELETE FROM meta")
        for table in TABLES:
            columns = source.columns(table)
            copy.load_rows(cur, table, columns, _rows(source, table, columns))
        upgrade(cur, copy.dialect, version)
    return copy

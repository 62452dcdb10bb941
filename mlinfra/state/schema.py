"""The tables of a state, in one place: the engine's (resources, journal, audit, locks)
and those the registry, runs and data versions keep beside them.

A state is created with every table at once. A state written by an older mlinfra
that lacks a table or a column gets it on the first write session; a read-only session
reads a copy upgraded in memory, so reading never writes the file.
"""

from __future__ import annotations

import sqlite3

FORMAT_VERSION = 1

TABLES: dict[str, str] = {
    "meta": "CREATE TABLE {t} (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "resources": """CREATE TABLE {t} (
      address TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
      attributes TEXT NOT NULL, inputs_hash TEXT NOT NULL, outputs TEXT NOT NULL,
      provider_id TEXT NOT NULL, dependencies TEXT NOT NULL, updated_at REAL NOT NULL)""",
    "journal": """CREATE TABLE {t} (
      id INTEGER PRIMARY KEY AUTOINCREMENT, address TEXT NOT NULL, action TEXT NOT NULL,
      pid INTEGER NOT NULL, host TEXT NOT NULL, started_at REAL NOT NULL,
      finished_at REAL, status TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')""",
    "audit": """CREATE TABLE {t} (
      id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, user TEXT NOT NULL,
      host TEXT NOT NULL, command TEXT NOT NULL, address TEXT NOT NULL,
      action TEXT NOT NULL, serial INTEGER NOT NULL, detail TEXT NOT NULL DEFAULT '')""",
    "locks": """CREATE TABLE {t} (
      stack TEXT PRIMARY KEY, id TEXT NOT NULL, owner TEXT NOT NULL, host TEXT NOT NULL,
      pid INTEGER NOT NULL, command TEXT NOT NULL, created_at REAL NOT NULL)""",
    "runs": """CREATE TABLE {t} (
      id TEXT PRIMARY KEY, job TEXT NOT NULL, experiment TEXT NOT NULL,
      pipeline TEXT, step TEXT, parent TEXT, run_hash TEXT NOT NULL, status TEXT NOT NULL,
      created_at REAL NOT NULL, started_at REAL, ended_at REAL, exit_code INTEGER,
      pid INTEGER, host TEXT, command TEXT NOT NULL DEFAULT '',
      params TEXT NOT NULL DEFAULT '{{}}', inputs TEXT NOT NULL DEFAULT '{{}}',
      outputs TEXT NOT NULL DEFAULT '{{}}', git TEXT NOT NULL DEFAULT '{{}}',
      environment TEXT NOT NULL DEFAULT '{{}}', run_dir TEXT NOT NULL DEFAULT '',
      error TEXT NOT NULL DEFAULT '', reused_from TEXT,
      cancel_requested INTEGER NOT NULL DEFAULT 0, pid_started REAL, owner_pid INTEGER,
      owner_started REAL)""",
    "metrics": """CREATE TABLE {t} (
      run_id TEXT NOT NULL, key TEXT NOT NULL, value REAL NOT NULL, step INTEGER,
      at REAL NOT NULL)""",
    "run_params": """CREATE TABLE {t} (
      run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
      PRIMARY KEY (run_id, key))""",
    "models": """CREATE TABLE {t} (
      name TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,
      format TEXT NOT NULL, signature TEXT NOT NULL, run_id TEXT, lineage TEXT NOT NULL,
      metrics TEXT NOT NULL, tags TEXT NOT NULL, created_at REAL NOT NULL,
      archived INTEGER NOT NULL DEFAULT 0,
      PRIMARY KEY (name, version), UNIQUE (name, sha256))""",
    "aliases": """CREATE TABLE {t} (
      name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
      updated_at REAL NOT NULL, reason TEXT NOT NULL DEFAULT '',
      PRIMARY KEY (name, alias))""",
    "data_versions": """CREATE TABLE {t} (
      name TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,
      created_at REAL NOT NULL, metadata TEXT NOT NULL,
      PRIMARY KEY (name, version), UNIQUE (name, sha256))""",
    "data_checks": """CREATE TABLE {t} (
      name TEXT NOT NULL, sha256 TEXT NOT NULL, expectations TEXT NOT NULL,
      passed INTEGER NOT NULL, results TEXT NOT NULL, checked_at REAL NOT NULL,
      PRIMARY KEY (name, sha256, expectations))""",
    "file_hashes": """CREATE TABLE {t} (
      path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
      sha256 TEXT NOT NULL)""",
}

# Columns added since a table was first shipped: (table, column, type). A state written
# before gets them on its first write session; a read-only session reads an upgraded
# copy in memory.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("runs", "pid_started", "REAL"),
    ("runs", "owner_pid", "INTEGER"),
    ("runs", "owner_started", "REAL"),
)

# (table, DDL) of each index.
INDEXES: tuple[tuple[str, str], ...] = (
    ("journal", "CREATE INDEX IF NOT EXISTS journal_status ON journal(status)"),
    ("runs", "CREATE INDEX IF NOT EXISTS runs_hash ON runs(job, run_hash, status)"),
    ("metrics", "CREATE INDEX IF NOT EXISTS metrics_run ON metrics(run_id)"),
)

# What a workspace holds besides its files: destroying the workspace empties them.
WORKSPACE_TABLES = ("runs", "metrics", "run_params", "models", "aliases", "data_versions",
                    "data_checks")


def missing_tables(conn: sqlite3.Connection) -> list[str]:
    present = {row[0] for row in conn.execute(
        "SELECT name FROM main.sqlite_master WHERE type='table'")}
    return [name for name in TABLES if name not in present]


def missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    present: dict[str, set[str]] = {}
    for table, _, _ in ADDED_COLUMNS:
        if table not in present:
            present[table] = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    return [added for added in ADDED_COLUMNS
            if present[added[0]] and added[1] not in present[added[0]]]


def create_tables(conn: sqlite3.Connection, names: list[str]) -> None:
    for name in names:
        conn.execute(TABLES[name].format(t=name))
    for table, ddl in INDEXES:
        if table in names:
            conn.execute(ddl)


def upgrade(conn: sqlite3.Connection) -> None:
    """Bring a state written by an earlier mlinfra to this schema, in one transaction."""
    tables, columns = missing_tables(conn), missing_columns(conn)
    if not tables and not columns:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        create_tables(conn, tables)
        for table, column, kind in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def needs_upgrade(conn: sqlite3.Connection) -> bool:
    return bool(missing_tables(conn) or missing_columns(conn))

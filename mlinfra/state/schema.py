"""The tables of a state, in one place: the engine's (resources, journal, audit, locks)
and those the registry, runs and data versions keep beside them.

A state is created with every table at once. A state written by an older mlinfra
that lacks a table gets it on the first write session; a read-only session sees an
empty temporary table in its place, so reading never writes the file.
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
      cancel_requested INTEGER NOT NULL DEFAULT 0)""",
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

# (table, DDL) of each index.
INDEXES: tuple[tuple[str, str], ...] = (
    ("journal", "CREATE INDEX IF NOT EXISTS {s}journal_status ON journal(status)"),
    ("runs", "CREATE INDEX IF NOT EXISTS {s}runs_hash ON runs(job, run_hash, status)"),
    ("metrics", "CREATE INDEX IF NOT EXISTS {s}metrics_run ON metrics(run_id)"),
)

# What a workspace holds besides its files: destroying the workspace empties them.
WORKSPACE_TABLES = ("runs", "metrics", "run_params", "models", "aliases", "data_versions",
                    "data_checks")


def missing_tables(conn: sqlite3.Connection) -> list[str]:
    present = {row[0] for row in conn.execute(
        "SELECT name FROM main.sqlite_master WHERE type='table'")}
    return [name for name in TABLES if name not in present]


def create_tables(conn: sqlite3.Connection, names: list[str], temporary: bool) -> None:
    """Create `names` (in the temp schema when the session only reads)."""
    for name in names:
        conn.execute(TABLES[name].format(t=f"temp.{name}" if temporary else name))
    for table, ddl in INDEXES:
        if table in names:
            conn.execute(ddl.format(s="temp." if temporary else ""))

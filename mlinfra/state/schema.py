"""The tables of a state, in one place, and the ordered steps that upgrade an older one.

`TABLES` is the schema at `BASE_VERSION`, written once in SQL that both backends run:
SQLite as it reads, PostgreSQL through `ddl()` (REAL is a 4-byte float there, so
timestamps become DOUBLE PRECISION; INTEGER becomes BIGINT, as nanosecond mtimes need).
Every later change is a `Migration` in `MIGRATIONS`, and a new state runs them too, so
the tables and their upgrades never disagree. Adding a column is one line:

    MIGRATIONS = (add_column(3, "runs", "process_started_at REAL"),)

A state records its version in meta (`format_version`, the key mlinfra has always
written, so an older mlinfra refuses a newer state). Version 1 is the SQLite format
from before migrations; `sqlite.py` upgrades it to 2, the version PostgreSQL states
begin at, so every step in `MIGRATIONS` must run on both.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Protocol

# The SQLite format written before versioned migrations.
FORMAT_1 = 1
# Columns that format-1 states written by a later mlinfra than the first have, and
# earlier ones lack: (table, column, type). The upgrade to version 2 adds the missing.
FORMAT_1_ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("runs", "pid_started", "REAL"),
    ("runs", "owner_pid", "INTEGER"),
    ("runs", "owner_started", "REAL"),
)
# The version `TABLES` describes: the first with migrations, and PostgreSQL's first.
BASE_VERSION = 2

TABLES: dict[str, str] = {
    "meta": "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "resources": """CREATE TABLE resources (
      address TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL,
      attributes TEXT NOT NULL, inputs_hash TEXT NOT NULL, outputs TEXT NOT NULL,
      provider_id TEXT NOT NULL, dependencies TEXT NOT NULL, updated_at REAL NOT NULL)""",
    "journal": """CREATE TABLE journal (
      id INTEGER PRIMARY KEY AUTOINCREMENT, address TEXT NOT NULL, action TEXT NOT NULL,
      pid INTEGER NOT NULL, host TEXT NOT NULL, started_at REAL NOT NULL,
      finished_at REAL, status TEXT NOT NULL, detail TEXT NOT NULL DEFAULT '')""",
    "audit": """CREATE TABLE audit (
      id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, username TEXT NOT NULL,
      host TEXT NOT NULL, command TEXT NOT NULL, address TEXT NOT NULL,
      action TEXT NOT NULL, serial INTEGER NOT NULL, detail TEXT NOT NULL DEFAULT '')""",
    "locks": """CREATE TABLE locks (
      stack TEXT PRIMARY KEY, id TEXT NOT NULL, owner TEXT NOT NULL, host TEXT NOT NULL,
      pid INTEGER NOT NULL, command TEXT NOT NULL, created_at REAL NOT NULL,
      backend_pid INTEGER)""",
    "runs": """CREATE TABLE runs (
      id TEXT PRIMARY KEY, job TEXT NOT NULL, experiment TEXT NOT NULL,
      pipeline TEXT, step TEXT, parent TEXT, run_hash TEXT NOT NULL, status TEXT NOT NULL,
      created_at REAL NOT NULL, started_at REAL, ended_at REAL, exit_code INTEGER,
      pid INTEGER, host TEXT, command TEXT NOT NULL DEFAULT '',
      params TEXT NOT NULL DEFAULT '{}', inputs TEXT NOT NULL DEFAULT '{}',
      outputs TEXT NOT NULL DEFAULT '{}', git TEXT NOT NULL DEFAULT '{}',
      environment TEXT NOT NULL DEFAULT '{}', run_dir TEXT NOT NULL DEFAULT '',
      error TEXT NOT NULL DEFAULT '', reused_from TEXT,
      cancel_requested INTEGER NOT NULL DEFAULT 0, pid_started REAL, owner_pid INTEGER,
      owner_started REAL)""",
    "metrics": """CREATE TABLE metrics (
      id INTEGER PRIMARY KEY AUTOINCREMENT, run_id TEXT NOT NULL, key TEXT NOT NULL,
      value REAL NOT NULL, step INTEGER, at REAL NOT NULL)""",
    "run_params": """CREATE TABLE run_params (
      run_id TEXT NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL,
      PRIMARY KEY (run_id, key))""",
    "models": """CREATE TABLE models (
      name TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,
      format TEXT NOT NULL, signature TEXT NOT NULL, run_id TEXT, lineage TEXT NOT NULL,
      metrics TEXT NOT NULL, tags TEXT NOT NULL, created_at REAL NOT NULL,
      archived INTEGER NOT NULL DEFAULT 0,
      PRIMARY KEY (name, version), UNIQUE (name, sha256))""",
    "aliases": """CREATE TABLE aliases (
      name TEXT NOT NULL, alias TEXT NOT NULL, version INTEGER NOT NULL,
      updated_at REAL NOT NULL, reason TEXT NOT NULL DEFAULT '',
      PRIMARY KEY (name, alias))""",
    "data_versions": """CREATE TABLE data_versions (
      name TEXT NOT NULL, version INTEGER NOT NULL, sha256 TEXT NOT NULL,
      created_at REAL NOT NULL, metadata TEXT NOT NULL,
      PRIMARY KEY (name, version), UNIQUE (name, sha256))""",
    "data_checks": """CREATE TABLE data_checks (
      name TEXT NOT NULL, sha256 TEXT NOT NULL, expectations TEXT NOT NULL,
      passed INTEGER NOT NULL, results TEXT NOT NULL, checked_at REAL NOT NULL,
      PRIMARY KEY (name, sha256, expectations))""",
}

INDEXES: tuple[str, ...] = (
    "CREATE INDEX journal_status ON journal(status)",
    "CREATE INDEX runs_hash ON runs(job, run_hash, status)",
    "CREATE INDEX metrics_run ON metrics(run_id)",
)

# Tables added after BASE_VERSION, each created by its migration below.
# The outbox: every event, written in the transaction of the change it announces
# (`event_id` is the CloudEvents id, `envelope` the whole event as JSON). Deliveries:
# one row per event and webhook, its tries and outcome. Webhooks: how far each webhook
# has taken events from the outbox, and whether a 410 disabled it. Schedule fires: one
# row per schedule and instant, so an instant is never run twice.
EVENT_TABLES: dict[str, str] = {
    "outbox": """CREATE TABLE outbox (
      id INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT NOT NULL UNIQUE,
      type TEXT NOT NULL, subject TEXT NOT NULL, at REAL NOT NULL,
      envelope TEXT NOT NULL)""",
    "deliveries": """CREATE TABLE deliveries (
      event_id TEXT NOT NULL, webhook TEXT NOT NULL, status TEXT NOT NULL,
      attempts INTEGER NOT NULL DEFAULT 0, first_try_at REAL, next_at REAL NOT NULL,
      lease_until REAL NOT NULL DEFAULT 0, last_status INTEGER,
      last_error TEXT NOT NULL DEFAULT '', delivered_at REAL,
      PRIMARY KEY (event_id, webhook))""",
    "webhooks": """CREATE TABLE webhooks (
      name TEXT PRIMARY KEY, taken INTEGER NOT NULL, disabled_at REAL,
      disabled_reason TEXT NOT NULL DEFAULT '')""",
    "schedule_fires": """CREATE TABLE schedule_fires (
      schedule TEXT NOT NULL, instant REAL NOT NULL, run_name TEXT NOT NULL,
      status TEXT NOT NULL, pid INTEGER, host TEXT, started_at REAL, ended_at REAL,
      detail TEXT NOT NULL DEFAULT '', PRIMARY KEY (schedule, instant))""",
}

# What a workspace holds besides its files: destroying the workspace empties them.
WORKSPACE_TABLES = ("runs", "metrics", "run_params", "models", "aliases", "data_versions",
                    "data_checks", "model_profiles", "monitor_windows", "monitor_signals")
# Tables that migrations create, in the order they do.
ADDED_TABLES = ("journal_steps", "model_profiles", "monitor_windows", "monitor_signals",
                *EVENT_TABLES)
# What `state migrate` copies: everything but who holds the lock now.
COPIED_TABLES = (*(name for name in TABLES if name != "locks"), *ADDED_TABLES)
# Tables whose `id` the database numbers (the next one follows the largest).
NUMBERED_TABLES = ("journal", "audit", "metrics", "outbox")


class Migration(NamedTuple):
    """One step from `version - 1` to `version`: portable DDL statements, run in order
    in one transaction with the new version number."""

    version: int
    what: str
    statements: tuple[str, ...]


def add_column(version: int, table: str, column: str) -> Migration:
    """A new column, e.g. add_column(3, "runs", "process_started_at REAL"). A NOT NULL
    column needs a DEFAULT, for the rows already there."""
    return Migration(version, f"{table}.{column.split()[0]}",
                     (f"ALTER TABLE {table} ADD COLUMN {column}",))


# Ordered by version, each one more than the one before, the first BASE_VERSION + 1.
MIGRATIONS: tuple[Migration, ...] = (
    # The ordered steps of a journaled operation (a promotion and its rollout, a key
    # rotation, an endpoint generation, a migration): recovery reads them.
    Migration(3, "journal_steps", (
        """CREATE TABLE IF NOT EXISTS journal_steps (
          journal_id INTEGER NOT NULL, seq INTEGER NOT NULL, name TEXT NOT NULL,
          data TEXT NOT NULL, at REAL NOT NULL, PRIMARY KEY (journal_id, seq))""",)),
    Migration(4, "monitoring: reference profiles, monitor windows and their signals", (
        """CREATE TABLE IF NOT EXISTS model_profiles (
          name TEXT NOT NULL, version INTEGER NOT NULL, source TEXT NOT NULL,
          profile TEXT NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (name, version))""",
        """CREATE TABLE IF NOT EXISTS monitor_windows (
          monitor TEXT NOT NULL, window_start REAL NOT NULL, window_end REAL NOT NULL,
          rows INTEGER NOT NULL, status TEXT NOT NULL, model TEXT NOT NULL,
          reason TEXT NOT NULL, cursor TEXT NOT NULL, computed_at REAL NOT NULL,
          PRIMARY KEY (monitor, window_start))""",
        """CREATE TABLE IF NOT EXISTS monitor_signals (
          monitor TEXT NOT NULL, window_start REAL NOT NULL, signal TEXT NOT NULL,
          feature TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
          threshold REAL NOT NULL, verdict TEXT NOT NULL, rows INTEGER NOT NULL,
          PRIMARY KEY (monitor, window_start, signal, feature, metric))""")),
    # IF NOT EXISTS: a state whose version was set back by hand may hold them already.
    Migration(5, "events: outbox, deliveries, webhooks, schedule_fires",
              (*(t.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1)
                 for t in EVENT_TABLES.values()),
               "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries(status, next_at)")),
    # File hashes are remembered per machine (mlinfra.data.hashes), never in a state
    # that other machines share.
    Migration(6, "file_hashes dropped", ("DROP TABLE IF EXISTS file_hashes",)),
)


def latest_version() -> int:
    """The version this mlinfra writes."""
    return MIGRATIONS[-1].version if MIGRATIONS else BASE_VERSION


def steps_after(version: int) -> list[Migration]:
    return [m for m in MIGRATIONS if m.version > version]


class Executes(Protocol):
    def execute(self, sql: str, /) -> object: ...


def ddl(statement: str, dialect: str) -> str:
    """A portable statement as `dialect` ("sqlite" or "postgresql") runs it."""
    if dialect == "sqlite":
        return statement
    statement = statement.replace("INTEGER PRIMARY KEY AUTOINCREMENT",
                                  "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    statement = re.sub(r"\bREAL\b", "DOUBLE PRECISION", statement)
    return re.sub(r"\bINTEGER\b", "BIGINT", statement)


def create_tables(cur: Executes, dialect: str, version: int | None = None) -> int:
    """Every table and index at `version` (default: the latest); returns the version.
    The caller writes meta's rows."""
    for statement in (*TABLES.values(), *INDEXES):
        cur.execute(ddl(statement, dialect))
    target = latest_version() if version is None else version
    for migration in steps_after(BASE_VERSION):
        if migration.version > target:
            break
        for statement in migration.statements:
            cur.execute(ddl(statement, dialect))
    return target


def upgrade(cur: Executes, dialect: str, version: int) -> list[Migration]:
    """Run every step after `version` (at least BASE_VERSION) and record the latest
    version in meta; returns the steps run. The caller holds the transaction."""
    steps = steps_after(version)
    for migration in steps:
        for statement in migration.statements:
            cur.execute(ddl(statement, dialect))
    if steps:
        cur.execute(f"UPDATE meta SET value = '{steps[-1].version}' "
                    "WHERE key = 'format_version'")
    return steps

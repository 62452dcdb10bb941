"""One conformance suite for every state backend, as Terraform's
backend.TestBackendStates and TestBackendStateLocks: each test runs against SQLite and
against a real PostgreSQL server (tests/postgres.py), through the StateStore interface
that the rest of mlinfra uses. Read-only sessions are psycopg sessions like the others."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from mlinfra.data.versions import DataVersions
from mlinfra.errors import MlinfraError
from mlinfra.registry.models import GATES_TAG, ModelRegistry
from mlinfra.runs.store import Run, RunStore
from mlinfra.state import StateCorrupted, StateStore, StateUnavailable, open_store
from mlinfra.state import schema as state_schema
from mlinfra.state.lock import LockHeld, force_unlock, locked
from mlinfra.state.model import ResourceState
from mlinfra.state.store import HOST, current_user
from mlinfra.state.transfer import copy_state, table_digest
from tests.postgres import PASSWORD, PostgresServer

PROJECT, STACK = "proj", "dev"


class Backend:
    """Where one test's state is, and a way to reach behind mlinfra's back (to damage
    it, or to look at it as it is on disk or on the server)."""

    def __init__(self, kind: str, tmp_path: Path, server: PostgresServer | None) -> None:
        self.kind, self.server = kind, server
        if server is None:
            self.path = tmp_path / "state.db"
            self.location = str(self.path)
        else:
            self.schema = server.new_schema()
            self.location = server.url(schema=self.schema, password=PASSWORD)

    def open(self, readonly: bool = False, command: str = "test") -> StateStore:
        return open_store(self.location, project=PROJECT, stack=STACK, command=command,
                          readonly=readonly)

    def exists(self) -> bool:
        if self.server is None:
            return self.path.exists()
        return bool(self.server.sql("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                                    (self.schema,)))

    def raw(self, sql: str) -> list[tuple[Any, ...]]:
        """One statement run directly on the state, outside mlinfra."""
        if self.server is None:
            conn = sqlite3.connect(self.path)
            try:
                rows = conn.execute(sql).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.server.url(password=PASSWORD), autocommit=True,
                             options=f"-c search_path={self.schema}") as conn:
            cur = conn.execute(sql)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    server = request.getfixturevalue("postgres") if request.param != "sqlite" else None
    return Backend(request.param, tmp_path, server)


@pytest.fixture
def store(backend: Backend) -> Iterator[StateStore]:
    opened = backend.open()
    yield opened
    opened.close()


def _resource(name: str, value: int = 1) -> ResourceState:
    return ResourceState(f"compute.{name}", "Compute", name, {"max_concurrency": value},
                         f"hash-{value}", outputs={"slots": value},
                         dependencies=["datastore.main"])


def _everything(store: StateStore, tmp_path: Path) -> None:
    """Some of every kind of row a state holds."""
    for i in range(3):
        journal = store.begin_operation(f"compute.c{i}", "create")
        store.commit_change(journal, f"compute.c{i}", "create", _resource(f"c{i}", i))
    failed = store.begin_operation("compute.bad", "create")
    store.fail_operation(failed, "it broke")
    runs = RunStore(store)
    run = Run(id="train-0001", job="train", experiment="train", run_hash="h1",
              status="completed", params={"C": 1.0}, outputs={"model": "ab" * 32})
    runs.save(run)
    runs.add_metrics(run.id, [{"type": "metric", "key": "loss", "value": v, "step": i}
                              for i, v in enumerate([0.9, 0.5, 0.25])]
                     + [{"type": "param", "key": "seed", "value": 7}])
    registry = ModelRegistry(store)
    registry.register("fraud", "cd" * 32, "onnx", {"inputs": []}, run.id, {"run": run.id},
                      {"auc": 0.91}, {"team": "risk"})
    registry.set_alias("fraud", "champion", 1, "first")
    data = tmp_path / "rows.csv"
    data.write_text("a,b\n1,2\n")
    versions = DataVersions(store)
    versions.register("rows", versions.content_sha256(data), {"rows": 1})


# --- resources, serial and lineage, journal, audit -------------------------------------

def test_a_new_state_has_a_lineage_and_serial_0(backend: Backend) -> None:
    reader = backend.open(readonly=True)
    assert reader.version() == ("", 0) and reader.resources() == {}
    reader.close()
    assert not backend.exists()  # reading never creates the state
    writer = backend.open()
    lineage, serial = writer.version()
    writer.close()
    assert lineage and serial == 0 and backend.exists()
    again = backend.open()
    assert again.version() == (lineage, 0)
    assert again.meta()["format_version"] == str(state_schema.latest_version())
    again.close()


def test_each_change_is_one_transaction_and_grows_the_serial(store: StateStore) -> None:
    lineage = store.version().lineage
    journal = store.begin_operation("compute.a", "create")
    assert store.commit_change(journal, "compute.a", "create", _resource("a", 1)) == 1
    assert store.commit_change(None, "compute.a", "update", _resource("a", 2)) == 2
    assert store.commit_change(None, "compute.b", "create", _resource("b", 5)) == 3
    got = store.get("compute.a")
    assert got is not None and got.attributes == {"max_concurrency": 2}
    assert got.outputs == {"slots": 2} and got.dependencies == ["datastore.main"]
    assert store.commit_change(None, "compute.b", "delete", None, "gone") == 4
    assert sorted(store.resources()) == ["compute.a"] and store.get("compute.b") is None
    assert store.version() == (lineage, 4)
    audit = store.audit_log()
    assert [(a[4], a[5], a[6]) for a in audit] == [
        ("compute.b", "delete", 4), ("compute.b", "create", 3), ("compute.a", "update", 2),
        ("compute.a", "create", 1)]
    assert {(a[1], a[2], a[3]) for a in audit} == {(current_user(), HOST, "test")}
    assert audit[0][7] == "gone"
    # a transaction that fails changes nothing
    with pytest.raises(RuntimeError), store.transaction() as cur:
        cur.execute("DELETE FROM resources")
        raise RuntimeError("stop")
    assert sorted(store.resources()) == ["compute.a"] and store.version().serial == 4


def test_the_journal_finds_interrupted_operations(store: StateStore) -> None:
    first = store.begin_operation("compute.a", "create")
    second = store.begin_operation("compute.b", "create")
    assert second > first
    assert store.interrupted_operations() == []  # pending, but this process runs
    store.fail_operation(second, "provider said no")
    with store.transaction() as cur:  # left by a process that is gone
        cur.execute("INSERT INTO journal (address, action, pid, host, started_at, status) "
                    "VALUES (?, ?, ?, ?, ?, 'pending')",
                    ("compute.c", "update", 999_999_999, HOST, time.time()))
    interrupted = store.interrupted_operations()
    assert [(e.address, e.action, e.status) for e in interrupted] == [
        ("compute.c", "update", "pending")]
    store.close_interrupted(interrupted)
    assert store.interrupted_operations() == []
    statuses = dict(store.query("SELECT address, status FROM journal"))
    assert statuses == {"compute.a": "pending", "compute.b": "failed",
                        "compute.c": "interrupted"}
    assert store.query("SELECT detail FROM journal WHERE id=?", (second,)) == [
        ("provider said no",)]


# Writes N resources; after its first, it waits for the other writer's first, so the
# two write side by side from then on.
WRITER = """
import sys, time
from mlinfra.state import open_store
from mlinfra.state.model import ResourceState
store = open_store(sys.argv[1], project="proj", stack="dev", command=sys.argv[2],
                   readonly=False)
for i in range(int(sys.argv[3])):
    address = f"compute.{sys.argv[2]}-{i}"
    journal = store.begin_operation(address, "create")
    store.commit_change(journal, address, "create",
                        ResourceState(address, "Compute", address[8:], {}, "h"))
    deadline = time.monotonic() + 60
    while i == 0 and store.get(f"compute.{sys.argv[4]}-0") is None:
        assert time.monotonic() < deadline, "the other writer never wrote"
        time.sleep(0.01)
store.close()
"""


def test_writers_in_two_processes_never_lose_a_change(backend: Backend) -> None:
    backend.open().close()
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, backend.location, name, "25",
                               other], stderr=subprocess.PIPE, text=True)
             for name, other in (("p", "q"), ("q", "p"))]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    store = backend.open(readonly=True)
    try:
        assert store.version().serial == 50 and len(store.resources()) == 50
        log = list(reversed(store.audit_log(limit=100)))
        assert sorted(a[6] for a in log) == list(range(1, 51))
        writers = [a[3] for a in log]
        # they overlapped: each wrote before the other's last write
        assert writers.index("q") < len(writers) - 1 - writers[::-1].index("p")
        assert writers.index("p") < len(writers) - 1 - writers[::-1].index("q")
    finally:
        store.close()


def test_sql_with_question_marks_and_percent_signs_in_strings(store: StateStore) -> None:
    store.commit_change(None, "compute.a", "create", _resource("a"), "100% done?")
    rows = store.query("SELECT detail, '50%?' FROM audit WHERE detail LIKE ? AND "
                       "action = 'create'", ("100%",))
    assert rows == [("100% done?", "50%?")]


def test_damaged_json_in_a_row_is_a_damaged_state(backend: Backend) -> None:
    writer = backend.open()
    writer.commit_change(None, "compute.a", "create", _resource("a"))
    writer.close()
    backend.raw("UPDATE resources SET outputs='{broken' WHERE address='compute.a'")
    reader = backend.open(readonly=True)
    try:
        for read in (reader.resources, lambda: reader.get("compute.a")):
            with pytest.raises(StateCorrupted, match=r"compute\.a outputs holds invalid JSON"):
                read()
    finally:
        reader.close()


# --- locks -----------------------------------------------------------------------------

HOLDER = """
import sys, time
from mlinfra.state import open_store
from mlinfra.state.lock import locked
store = open_store(sys.argv[1], project="proj", stack="dev", command="apply",
                   readonly=False)
with locked(store, "dev", "apply from the holder"):
    print("locked", flush=True)
    time.sleep(120)
"""


def _holder(backend: Backend) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, backend.location],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n", (
        proc.stderr.read() if proc.stderr else "")
    return proc


def test_the_lock_names_its_holder_waits_and_unlocks(backend: Backend) -> None:
    backend.open().close()
    holder = _holder(backend)
    other = backend.open(command="apply")
    try:
        with pytest.raises(LockHeld) as held, locked(other, STACK, "apply"):
            pass
        message = held.value.message
        assert f"pid {holder.pid} on {HOST}" in message and current_user() in message
        assert "'apply from the holder'" in message and "mlinfra state unlock" in message
        info = other.lock_holder(STACK)
        assert info is not None and info.pid == holder.pid
        assert (info.backend_pid is not None) == (backend.kind != "sqlite")
        started = time.monotonic()
        with pytest.raises(LockHeld, match=r"still held after waiting 0.6s"), \
                locked(other, STACK, "apply", timeout=0.6):
            pass
        assert time.monotonic() - started >= 0.6
        with pytest.raises(MlinfraError, match=f"has ID {info.id}, not wrong"):
            force_unlock(other, STACK, "wrong")
        assert force_unlock(other, STACK, info.id).pid == holder.pid
        assert other.lock_holder(STACK) is None
        with locked(other, STACK, "apply") as lock_id:
            assert lock_id != info.id
            assert other.lock_holder(STACK) is not None
        assert other.lock_holder(STACK) is None
    finally:
        holder.kill()
        holder.communicate()
        other.close()


def test_a_holder_killed_with_9_frees_the_lock_at_once(backend: Backend) -> None:
    backend.open().close()
    holder = _holder(backend)
    other = backend.open(command="apply")
    try:
        with pytest.raises(LockHeld), locked(other, STACK, "apply"):
            pass
        os.kill(holder.pid, signal.SIGKILL)
        holder.communicate()
        killed = time.monotonic()
        with locked(other, STACK, "apply", timeout=10):
            waited = time.monotonic() - killed
        assert waited < 1.0, waited
    finally:
        other.close()


def test_unlock_on_postgresql_ends_the_holders_sessions(postgres: PostgresServer,
                                                       tmp_path: Path) -> None:
    side = Backend("postgresql", tmp_path, postgres)
    holder, other = side.open(command="apply"), side.open(command="state unlock")
    try:
        with locked(holder, STACK, "apply") as lock_id:
            force_unlock(other, STACK, lock_id)
            with pytest.raises(StateUnavailable, match="ended this session"):
                holder.begin_operation("compute.a", "create")  # it may not write now
            with locked(other, STACK, "apply"):
                assert other.lock_holder(STACK) is not None
    finally:
        holder.close()
        other.close()


def test_a_holder_without_its_row_is_named_by_its_session(postgres: PostgresServer,
                                                         tmp_path: Path) -> None:
    side = Backend("postgresql", tmp_path, postgres)
    holder, other = side.open(command="apply"), side.open(command="apply")
    try:
        with locked(holder, STACK, "apply"):
            side.raw("DELETE FROM locks")  # as if it had not written its row yet
            with pytest.raises(LockHeld) as held, locked(other, STACK, "apply"):
                pass
            info = other.lock_holder(STACK)
            assert info is not None and info.backend_pid is not None
            assert f"ID session-{info.backend_pid}" in held.value.message
            force_unlock(other, STACK, f"session-{info.backend_pid}")
            assert other.lock_holder(STACK) is None
    finally:
        holder.close()
        other.close()


def test_postgresql_urls() -> None:
    from mlinfra.state.postgres import PostgresLocation

    where = PostgresLocation("postgresql://ml:p%40ss@db:5433/ml?sslmode=require", "fraud-team",
                             "prod")
    assert where.schema == "mlinfra_fraud_team_prod"
    assert where.display == ("postgresql://ml:***@db:5433/ml?sslmode=require"
                             "&schema=mlinfra_fraud_team_prod")
    assert "p%40ss" in where.conninfo and "schema" not in where.conninfo
    named = PostgresLocation("postgres://db/ml?schema=team_state&password=hunter2", "p", "s")
    assert named.schema == "team_state" and "hunter2" not in named.display
    long = PostgresLocation("postgresql://db/ml", "p" * 60, "stack")
    assert len(long.schema) == 63 and long.schema.startswith("mlinfra_ppp")
    with pytest.raises(MlinfraError, match="not a plain PostgreSQL name"):
        PostgresLocation("postgresql://db/ml?schema=Bad-Name", "p", "s")


def test_a_url_without_a_host_takes_it_from_libpq_variables(
        postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """`postgresql:///db` (no host) and `postgresql://?schema=...` (nothing at all): the
    PG* variables fill in the rest, for reading and writing sessions."""
    from tests.postgres import DATABASE, USER

    for name, value in (("PGHOST", "127.0.0.1"), ("PGPORT", str(postgres.port)),
                        ("PGUSER", USER), ("PGDATABASE", DATABASE), ("PGPASSWORD", PASSWORD)):
        monkeypatch.setenv(name, value)
    schema = postgres.new_schema()
    for url in (f"postgresql:///{DATABASE}?schema={schema}", f"postgresql://?schema={schema}"):
        for readonly in (False, True):
            opened = open_store(url, project=PROJECT, stack=STACK, command="test",
                                readonly=readonly)
            assert opened.location == url and opened.version().serial == 0
            opened.close()


def test_a_lock_taken_and_released_leaves_no_holder(store: StateStore) -> None:
    with locked(store, STACK, "apply"):
        info = store.lock_holder(STACK)
        assert info is not None and info.pid == os.getpid() and info.command == "apply"
    assert store.lock_holder(STACK) is None
    with pytest.raises(MlinfraError, match="is not locked"):
        force_unlock(store, STACK, info.id)


# --- runs and metrics, registry, data versions, workspace ------------------------------

def test_runs_metrics_and_params(store: StateStore) -> None:
    runs = RunStore(store)
    run = Run(id="train-aaaa1111", job="train", experiment="exp", run_hash="h1",
              params={"C": 0.5}, git={"commit": "abc"})
    runs.save(run)
    run.status, run.exit_code, run.outputs = "completed", 0, {"model": "ff" * 32}
    runs.save(run)  # the same run again: replaced, not added
    runs.save(Run(id="train-bbbb2222", job="train", experiment="exp", run_hash="h2",
                  status="failed", created_at=run.created_at + 1))
    got = runs.get(run.id)
    assert got is not None and got.status == "completed" and got.outputs == {"model": "ff" * 32}
    assert got.params == {"C": 0.5} and got.git == {"commit": "abc"}
    assert runs.find("train-aaaa") == got and runs.find("train-") is None
    assert runs.completed("train", "h1") == [got] and runs.completed("train", "h2") == []
    assert [r.id for r in runs.recent("exp")] == ["train-bbbb2222", run.id]
    curve = [{"type": "metric", "key": "loss", "value": v, "step": i}
             for i, v in enumerate([3.0, 1.0, 2.0, 0.5])]
    runs.add_metrics(run.id, [*curve[:2], {"type": "param", "key": "lr", "value": 0.1}])
    runs.add_metrics(run.id, [*curve[2:], {"type": "param", "key": "lr", "value": 0.2},
                              {"type": "metric", "key": "auc", "value": 0.9}])
    assert runs.metrics(run.id) == {"loss": [(0, 3.0), (1, 1.0), (2, 2.0), (3, 0.5)],
                                    "auc": [(None, 0.9)]}  # in the order logged
    assert runs.logged_params(run.id) == {"lr": 0.2}
    runs.save(Run(id="train-cccc3333", job="train", experiment="exp", run_hash="h3",
                  status="running"))
    assert [r.id for r in runs.unfinished()] == ["train-cccc3333"]
    assert runs.end_unfinished("train-cccc3333", "failed", "its mlinfra is gone")
    assert not runs.end_unfinished("train-cccc3333", "failed", "again")  # ended already
    runs.request_cancel("train-bbbb2222")
    canceled = runs.get("train-bbbb2222")
    assert canceled is not None and canceled.cancel_requested == 1


def test_registry_versions_aliases_tags(store: StateStore) -> None:
    registry = ModelRegistry(store)
    first, created = registry.register("fraud", "aa" * 32, "onnx", {"inputs": ["x"]}, "r1",
                                       {"data": "t:1"}, {"auc": 0.8}, {})
    assert created and first.version == 1
    same, created = registry.register("fraud", "aa" * 32, "onnx", {}, "r9", {}, {}, {})
    assert not created and same.version == 1 and same.run_id == "r1"
    second, _ = registry.register("fraud", "bb" * 32, "onnx", {}, "r2", {}, {"auc": 0.9}, {})
    assert second.version == 2 and registry.latest("fraud") == second
    serial = store.version().serial
    registry.set_alias("fraud", "champion", 1, "first")
    registry.set_alias("fraud", "champion", 2, "better")  # moved, not added
    registry.set_tags("fraud", 2, {GATES_TAG: "failed"})
    assert store.version().serial == serial + 3
    assert registry.aliases("fraud") == {"champion": 2}
    assert registry.latest("fraud") == registry.get("fraud", 1)  # gates failed: not latest
    registry.archive("fraud", 1, used_by=[])
    assert registry.latest("fraud") is None and store.version().serial == serial + 4
    assert registry.resolve("fraud", alias="champion").version == 2
    registry.set_metrics("fraud", 2, {"auc": 0.95})
    assert registry.versions("fraud")[1].metrics == {"auc": 0.95}
    assert [a[5] for a in store.audit_log(limit=4)] == ["archive", "tag", "alias", "alias"]


def test_data_versions_and_the_file_hash_cache(backend: Backend, tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("a\n1\n")
    writer = backend.open()
    versions = DataVersions(writer)
    sha = versions.content_sha256(data)
    assert versions.next_version("rows") == 1 and versions.find("rows", sha) is None
    assert versions.register("rows", sha, {"rows": 1}) == 1
    assert versions.register("rows", sha, {"rows": 1}) == 1  # the same content
    data.write_text("a\n1\n2\n")
    newer = versions.content_sha256(data)
    assert versions.register("rows", newer, {"rows": 2}) == 2
    assert [(v.version, v.metadata) for v in versions.list("rows")] == [
        (1, {"rows": 1}), (2, {"rows": 2})]
    got = versions.get("rows")
    assert got is not None and got.sha256 == newer
    writer.close()
    data.write_text("a\n3\n")
    reader = backend.open(readonly=True)
    assert DataVersions(reader).content_sha256(data) != newer
    reader.close()
    # hashes are remembered on this machine, not in the state other machines share
    tables = backend.raw("SELECT name FROM sqlite_master" if backend.server is None else
                         "SELECT table_name FROM information_schema.tables WHERE "
                         "table_schema = current_schema()")
    assert "file_hashes" not in {str(t[0]) for t in tables}


def test_destroying_the_workspace_empties_its_tables(store: StateStore,
                                                     tmp_path: Path) -> None:
    _everything(store, tmp_path)
    with store.transaction() as cur:
        store.empty_workspace(cur)
    for table in state_schema.WORKSPACE_TABLES:
        assert store.query(f"SELECT COUNT(*) FROM {table}") == [(0,)], table
    assert len(store.resources()) == 3 and store.audit_log()  # the history stays


# --- read-only sessions and migrations -------------------------------------------------

def test_a_read_only_session_changes_nothing(backend: Backend, tmp_path: Path) -> None:
    writer = backend.open()
    _everything(writer, tmp_path)
    before = {t: table_digest(writer, t) for t in state_schema.TABLES}
    writer.close()
    reader = backend.open(readonly=True, command="plan")
    assert reader.readonly and len(reader.resources()) == 3
    assert ModelRegistry(reader).aliases("fraud") == {"champion": 1}
    assert RunStore(reader).metrics("train-0001")["loss"][-1] == (2, 0.25)
    (tmp_path / "new.csv").write_text("x\n1\n")
    DataVersions(reader).content_sha256(tmp_path / "new.csv")
    reader.close()
    after = backend.open(readonly=True)
    assert {t: table_digest(after, t) for t in state_schema.TABLES} == before
    after.close()


def test_an_older_schema_is_read_from_a_copy_and_upgraded_on_first_write(
        backend: Backend, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = backend.open()
    _everything(writer, tmp_path)
    serial = writer.version().serial
    writer.close()
    base = state_schema.latest_version()
    monkeypatch.setattr(state_schema, "MIGRATIONS", (
        state_schema.add_column(base + 1, "runs", "note TEXT NOT NULL DEFAULT 'none'"),))

    def on_disk() -> tuple[str, bool]:
        version = backend.raw("SELECT value FROM meta WHERE key='format_version'")[0][0]
        return str(version), _has_column(backend, "runs", "note")

    reader = backend.open(readonly=True)  # an upgraded copy: the new column is there
    assert "note" in reader.columns("runs")
    assert reader.query("SELECT note FROM runs") == [("none",)]
    assert reader.version().serial == serial and len(reader.resources()) == 3
    reader.close()
    assert on_disk() == (str(base), False)  # the state itself is as it was
    upgraded = backend.open()  # the first write session upgrades it
    assert upgraded.meta()["format_version"] == str(base + 1)
    assert upgraded.query("SELECT id, note FROM runs") == [("train-0001", "none")]
    assert upgraded.version().serial == serial
    upgraded.close()
    assert on_disk() == (str(base + 1), True)
    backend.raw(f"UPDATE meta SET value='{base + 9}' WHERE key='format_version'")
    for readonly in (True, False):
        with pytest.raises(MlinfraError, match=f"schema version {base + 9}; this mlinfra "
                                               f"reads up to version {base + 1}"):
            backend.open(readonly=readonly)


def _has_column(backend: Backend, table: str, column: str) -> bool:
    if backend.kind == "sqlite":
        return column in [r[1] for r in backend.raw(f"PRAGMA table_info({table})")]
    return bool(backend.raw(f"SELECT 1 FROM information_schema.columns WHERE table_schema="
                            f"'{backend.schema}' AND table_name='{table}' AND "
                            f"column_name='{column}'"))


def test_a_new_state_has_every_migration(backend: Backend,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    base = state_schema.latest_version()
    monkeypatch.setattr(state_schema, "MIGRATIONS", (
        state_schema.add_column(base + 1, "models", "stage TEXT"),
        state_schema.add_column(base + 2, "runs", "attempt INTEGER NOT NULL DEFAULT 1")))
    store = backend.open()
    try:
        assert store.meta()["format_version"] == str(base + 2)
        assert store.columns("models")[-1] == "stage"
        assert store.columns("runs")[-1] == "attempt"
    finally:
        store.close()


# --- copying a whole state between backends ----------------------------------------------

def test_a_state_copies_to_the_other_backend_and_back(
        postgres: PostgresServer, tmp_path: Path) -> None:
    sqlite_side = Backend("sqlite", tmp_path, None)
    pg_side = Backend("postgresql", tmp_path, postgres)
    back = Backend("sqlite", tmp_path / "back", None)
    (tmp_path / "back").mkdir()
    source = sqlite_side.open()
    _everything(source, tmp_path)
    with locked(source, STACK, "state migrate"):  # the lock itself is not copied
        target = pg_side.open()
        report = copy_state(source, target)
    assert [t.table for t in report] == list(state_schema.COPIED_TABLES)
    assert all(t.verified for t in report) and "locks" not in [t.table for t in report]
    rows = {t.table: t.rows for t in report}
    assert rows["resources"] == 3 and rows["journal"] == 4 and rows["metrics"] == 3
    assert target.version() == source.version()
    assert target.meta() == source.meta()
    assert target.lock_holder(STACK) is None
    # ids go on after the copied ones
    assert target.begin_operation("compute.next", "create") == 5
    assert source.begin_operation("compute.next", "create") == 5
    returned = back.open()
    report_back = copy_state(target, returned)
    assert all(t.verified for t in report_back)
    for table in state_schema.COPIED_TABLES:
        assert table_digest(returned, table) == table_digest(target, table), table
    assert returned.version() == source.version()
    with pytest.raises(MlinfraError, match="is not empty"):
        copy_state(source, returned)
    for opened in (source, target, returned):
        opened.close()


def test_a_schema_that_is_not_a_state_is_refused(postgres: PostgresServer,
                                                 tmp_path: Path) -> None:
    side = Backend("postgresql", tmp_path, postgres)
    postgres.sql(f"CREATE SCHEMA {side.schema}")
    postgres.sql(f"CREATE TABLE {side.schema}.customers (id int)")
    for readonly in (True, False):
        with pytest.raises(StateCorrupted, match="holds 1 table but no mlinfra state"):
            side.open(readonly=readonly)
    assert postgres.sql(f"SELECT count(*) FROM pg_tables WHERE schemaname='{side.schema}'"
                        ) == [(1,)]


def test_a_read_only_session_is_psycopg_and_cannot_write(postgres: PostgresServer,
                                                         tmp_path: Path) -> None:
    """No second SQL path: a read-only session is a psycopg session whose transactions
    the server keeps read-only, with the same values and the same errors."""
    import importlib.util

    from mlinfra.state.postgres import PostgresStore

    assert importlib.util.find_spec("mlinfra.state.libpq") is None
    side = Backend("postgresql", tmp_path, postgres)
    writer = side.open()
    _everything(writer, tmp_path)
    writer.close()
    reader = side.open(readonly=True)
    assert isinstance(reader, PostgresStore) and reader.readonly
    args = (7, 2**62, 0.1, True, None, "it's ? %s 'x' é")
    sql = "SELECT " + ", ".join("?" for _ in args) + ", 'a ? in quotes'"
    assert reader.query(sql, args) == [(*args, "a ? in quotes")]
    sql = "SELECT sum(id), count(*) FROM journal WHERE status <> ?"  # numeric, bigint
    assert reader.query(sql, ("none",)) == [(Decimal(10), 4)]
    with pytest.raises(MlinfraError, match="opened only to read"):
        reader.transaction()
    with pytest.raises(MlinfraError, match="opened only to read"):
        reader.try_lock(STACK, "apply")
    with pytest.raises(MlinfraError, match="read-only transaction"):
        reader.query("DELETE FROM resources")
    reader.close()
    wrong = side.location.replace(f":{PASSWORD}@", ":wrong@")
    with pytest.raises(StateUnavailable, match=r"cannot open the state at .*password"):
        open_store(wrong, project=PROJECT, stack=STACK, command="plan", readonly=True)


def test_a_lost_lock_stops_every_commit(postgres: PostgresServer, tmp_path: Path) -> None:
    """The lock's session ends (as in a server restart) while an apply holds it: its
    next commit is refused, since another apply may hold the lock by then."""
    from mlinfra.state.postgres import LockLost

    side = Backend("postgresql", tmp_path, postgres)
    store = side.open(command="apply")
    lock_id, _ = store.try_lock(STACK, "apply")
    assert lock_id is not None
    store.commit_change(None, "compute.a", "create", _resource("a"))
    holder = store.lock_holder(STACK)
    assert holder is not None
    postgres.sql("SELECT pg_terminate_backend(%s)", (holder.backend_pid,))
    other = side.open(command="apply")
    taken, _ = other.try_lock(STACK, "apply")
    assert taken is not None  # a second apply may now take it...
    with pytest.raises(LockLost, match=f"the lock of stack '{STACK}' was lost"):
        store.commit_change(None, "compute.b", "create", _resource("b"))  # ...so no commit
    assert store.get("compute.b") is None
    other.release_lock(STACK, taken)
    store.release_lock(STACK, lock_id)
    for opened in (store, other):
        opened.close()


def test_the_lock_sessions_use_tcp_keepalives(postgres: PostgresServer,
                                              tmp_path: Path) -> None:
    side = Backend("postgresql", tmp_path, postgres)
    store = side.open(command="apply")
    lock_id, _ = store.try_lock(STACK, "apply")
    assert lock_id is not None
    from mlinfra.state.postgres import PostgresStore

    assert isinstance(store, PostgresStore) and store._lock_conn is not None
    for conn in (store.conn, store._lock_conn):
        params = conn.info.get_parameters()
        assert (params.get("keepalives"), params.get("keepalives_idle")) == ("1", "15")
    store.release_lock(STACK, lock_id)
    store.close()


def test_a_transaction_pooler_is_refused(postgres: PostgresServer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Through PgBouncer's transaction pooling two clients share a server session: made
    here by giving the lock the state's own session. The lock is refused, with why."""
    from mlinfra.state.postgres import PostgresStore

    side = Backend("postgresql", tmp_path, postgres)
    store = side.open(command="apply")
    assert isinstance(store, PostgresStore)
    monkeypatch.setattr(store, "_connect", lambda purpose: store.conn)
    with pytest.raises(MlinfraError, match=r"transaction pooler \(PgBouncer"):
        store.try_lock(STACK, "apply")
    assert postgres.sql("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == [(0,)]
    assert store.lock_holder(STACK) is None
    store.close()

"""A state written by the previous schema opens and upgrades.

tests/fixtures/format-1 holds a project and the SQLite state that mlinfra wrote for
it before versioned migrations (format 1): an apply that ran a job logging a param, a
curve and a metric, registered a model, then `models alias` and `models tag`. Reading
it never writes the file; the first write session upgrades it in place, after a
backup, to exactly the tables a new state has.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra.state.schema import latest_version
from mlinfra.state.sqlite import SqliteStore
from tests.conftest import REPO, Result

FIXTURE = REPO / "tests" / "fixtures" / "format-1"
RUN = "train-6ea6eb34"


@pytest.fixture
def legacy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "legacy"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("state.db"))
    (root / ".mlinfra" / "dev").mkdir(parents=True)
    shutil.copyfile(FIXTURE / "state.db", root / ".mlinfra" / "dev" / "state.db")
    monkeypatch.chdir(root)
    return root


def _db(root: Path) -> Path:
    return root / ".mlinfra" / "dev" / "state.db"


def _schema(db: Path) -> dict[str, object]:
    """Each table's columns (name, type, not null, default, key) and the indexes."""
    conn = sqlite3.connect(db)
    try:
        tables = [r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        out: dict[str, object] = {t: [tuple(c[1:]) for c in conn.execute(
            f"PRAGMA table_info({t})")] for t in tables}
        out["indexes"] = sorted(tuple(r) for r in conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type='index'"))
        return out
    finally:
        conn.close()


def _format_version(db: Path) -> int:
    conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT value FROM meta WHERE key='format_version'"
                                ).fetchone()[0])
    finally:
        conn.close()


def test_the_fixture_is_format_1() -> None:
    assert _format_version(FIXTURE / "state.db") == 1
    assert "user" in [c[0] for c in _schema(FIXTURE / "state.db")["audit"]]  # type: ignore[union-attr]


def test_reading_a_format_1_state_never_writes_it(legacy: Path,
                                                  cli: Callable[..., Result]) -> None:
    db = _db(legacy)
    before = db.read_bytes()
    listed = cli("state", "list")
    assert listed.code == 0 and "model.scorer" in listed.out.split(), listed.err
    models = cli("models", "list")
    assert "scorer:1" in models.out and "champion" in models.out
    shown = json.loads(cli("models", "show", "scorer@champion").out)
    assert shown["tags"] == {"team": "fraud"}
    run = json.loads(cli("runs", "show", RUN).out)
    assert run["metrics"] == {"loss": pytest.approx(1 / 3), "auc": 0.875}
    assert run["params"] == {"C": 1.0}
    assert cli("output", "model.scorer").code == 0
    assert db.read_bytes() == before
    assert sorted(p.name for p in db.parent.iterdir()) == ["state.db"]


def test_the_first_write_session_upgrades_it(legacy: Path, cli: Callable[..., Result],
                                             tmp_path: Path) -> None:
    db = _db(legacy)
    moved = cli("models", "alias", "scorer@prod", "1")
    assert moved.code == 0, moved.err
    assert _format_version(db) == latest_version()
    # the backup is the state as it was, at format 1
    assert _format_version(db.with_name("state.db.backup")) == 1
    store = SqliteStore(db, command="test", readonly=True)
    try:
        audit = store.audit_log(limit=100)
        assert len(audit) == 9 and audit[0][5] == "alias"
        assert {row[1] for row in audit[1:]} == {"root"}  # who did them, now `username`
        assert [a[6] for a in audit] == list(range(9, 0, -1))
        assert store.version().serial == 9
        points = store.query("SELECT id, key, value, step FROM metrics ORDER BY id")
        assert points == [(1, "loss", 1.0, 0), (2, "loss", 0.5, 1),
                          (3, "loss", pytest.approx(1 / 3), 2), (4, "auc", 0.875, None)]
    finally:
        store.close()
    # exactly the tables and indexes of a state created now
    fresh = SqliteStore(tmp_path / "fresh.db", command="test")
    fresh.close()
    assert _schema(db) == _schema(tmp_path / "fresh.db")
    # and it works as any state: new metrics follow the old ones, ids keep counting
    assert cli("models", "tag", "scorer:1", "stage=prod").code == 0
    assert cli("plan").code == 0


def test_a_newer_state_is_refused_with_the_version_it_needs(
        legacy: Path, cli: Callable[..., Result]) -> None:
    db = _db(legacy)
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value='99' WHERE key='format_version'")
    conn.commit()
    conn.close()
    before = db.read_bytes()
    for args in (("plan",), ("apply", "--auto-approve"), ("models", "list")):
        refused = cli(*args)
        assert refused.code == 1, (args, refused.out)
        assert "schema version 99" in refused.err, refused.err
        assert f"reads up to version {latest_version()}" in refused.err
        assert "upgrade mlinfra" in refused.err
    assert db.read_bytes() == before

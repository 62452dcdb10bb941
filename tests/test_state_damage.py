"""Damaged states and inputs are reported, never a crash: numbers and JSON of the wrong
kind in the state, a folder where the backup copy goes, a URL whose password holds
URL syntax or whose host is malformed, YAML nested without end. A new SQLite state is
made where hard links cannot be, and PyYAML without libyaml still reads projects."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra.state import StateCorrupted
from mlinfra.state.model import ResourceState
from mlinfra.state.sqlite import SqliteStore
from tests.conftest import Result


def _state(tmp_path: Path) -> Path:
    path = tmp_path / "state.db"
    store = SqliteStore(path, command="test")
    store.commit_change(None, "data.a", "create",
                        ResourceState("data.a", "data", "a", {"x": 1}, "h", {"y": 2}))
    store.close()
    return path


def _damage(path: Path, sql: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute(sql)
    conn.commit()
    conn.close()


@pytest.mark.parametrize(("sql", "fragment"), [
    ("UPDATE meta SET value='abc' WHERE key='serial'", "its serial is 'abc', not a number"),
    ("UPDATE meta SET value='x' WHERE key='format_version'",
     "its format_version is 'x', not a number"),
])
def test_damaged_meta_is_reported(tmp_path: Path, sql: str, fragment: str) -> None:
    path = _state(tmp_path)
    _damage(path, sql)
    for readonly in (False, True):
        with pytest.raises(StateCorrupted, match=fragment):
            SqliteStore(path, command="test", readonly=readonly)


def test_json_columns_are_parsed_each_on_its_own_and_of_their_kind(tmp_path: Path) -> None:
    path = _state(tmp_path)
    # Parsed with its neighbours, this attributes value shifted every column along.
    _damage(path, """UPDATE resources SET attributes='{"x": 1}, {"z": 3}' """)
    store = SqliteStore(path, command="test", readonly=True)
    with pytest.raises(StateCorrupted, match=r"resource data\.a attributes holds invalid JSON"):
        store.resources()
    store.close()
    _damage(path, """UPDATE resources SET attributes='{"x": 1}', outputs='[1, 2]'""")
    store = SqliteStore(path, command="test", readonly=True)
    with pytest.raises(StateCorrupted, match="outputs holds list JSON where an object"):
        store.resources()
    store.close()


def test_a_folder_where_the_backup_goes_is_reported(tmp_path: Path) -> None:
    path = _state(tmp_path)
    (tmp_path / "state.db.backup").mkdir()
    store = SqliteStore(path, command="test")
    with pytest.raises(StateCorrupted, match=r"state.db.backup is not a file.*Move it away"):
        store.backup()
    store.close()


def test_a_new_state_is_made_where_hard_links_cannot_be(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    def no_links(*_: object) -> None:
        raise PermissionError(1, "Operation not permitted")  # as vfat answers

    monkeypatch.setattr(os, "link", no_links)
    path = tmp_path / "state.db"
    store = SqliteStore(path, command="test")
    first = store.version()
    assert first.serial == 0 and first.lineage
    store.close()
    again = SqliteStore(path, command="test")
    assert again.version() == first  # opened again, not made again
    again.close()
    assert not list(tmp_path.glob(".state.db.*.new"))


@pytest.mark.parametrize(("password", "rest"), [
    ("p#ss", "db/ml"), ("p/ss", "db/ml"), ("p@ss", "db/ml"), ("a#b/c@d:e", "db:5433/ml"),
])
def test_a_url_password_is_masked_whatever_it_holds(password: str, rest: str) -> None:
    from urllib.parse import unquote, urlsplit

    from mlinfra.state.postgres import PostgresLocation

    where = PostgresLocation(f"postgresql://ml:{password}@{rest}", "p", "s")
    assert password not in where.display and "ml:***@db" in where.display
    assert unquote(urlsplit(where.conninfo).password or "") == password  # reaches libpq whole


@pytest.mark.parametrize(("url", "fragment"), [
    ("postgresql://ml:secret@[::1/ml", "is malformed (Invalid IPv6 URL)"),
    ("postgresql://ml:secret@db:54x/ml", "is malformed (Port could not be cast"),
])
def test_a_malformed_url_is_a_validation_error(project: Callable[..., Path],
                                                cli: Callable[..., Result], url: str,
                                                fragment: str) -> None:
    root = project({})
    (root / "stacks").mkdir()
    (root / "stacks" / "dev.yaml").write_text(f"kind: Stack\nname: dev\nstate: {url}\n")
    for command in ("validate", "plan"):
        refused = cli(command)
        assert refused.code == 1 and fragment in refused.err, refused.err
        assert "secret" not in refused.err and "Traceback" not in refused.err


def test_yaml_nested_without_end_is_refused(project: Callable[..., Path],
                                            cli: Callable[..., Result]) -> None:
    project({"deep.yaml": "kind: Data\nname: deep\ntags: " + "[" * 990 + "]" * 990 + "\n",
             "anchored.yaml": "kind: Data\nname: anch\nx: &a 1\ntags: " + "{a: " * 300
             + "1" + "}" * 300 + "\n"})
    refused = cli("validate")
    assert refused.code == 1 and "Traceback" not in refused.err
    assert "deep.yaml:3:" in refused.err and "nested deeper than 64 levels" in refused.err
    assert "anchored.yaml:" in refused.err


def test_pyyaml_without_libyaml_reads_projects(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    import yaml

    from mlinfra.spec import yamlfile

    monkeypatch.delattr(yaml, "CSafeLoader")
    monkeypatch.setitem(sys.modules, "yaml._yaml", None)  # its import fails
    path = tmp_path / "a.yaml"
    path.write_text("kind: Data\nname: a\ntags: {team: x}\n---\nkind: Data\nname: a\nx: &b 1\n"
                    "y: *b\n")
    read = yamlfile.read_yaml(path, "a.yaml")
    assert read.problems == [] and read.documents[1]["y"] == 1
    assert read.documents[0] == {"kind": "Data", "name": "a", "tags": {"team": "x"}}
    assert yamlfile.Locator(read.text).locate(1, ("name",)) == (6, 7)


def test_run_and_model_json_of_the_wrong_type_is_reported(tmp_path: Path) -> None:
    from mlinfra.registry.models import ModelRegistry
    from mlinfra.runs.store import Run, RunStore

    path = _state(tmp_path)
    store = SqliteStore(path, command="test")
    RunStore(store).save(Run(id="train-1", job="train", experiment="train", run_hash="h",
                             status="completed", outputs={"model": "ab" * 32}))
    ModelRegistry(store).register("m", "cd" * 32, "onnx", {"inputs": []}, "train-1", {},
                                  {"rmse": 1.0}, {})
    store.close()
    _damage(path, "UPDATE runs SET outputs='[1, 2]'")
    _damage(path, "UPDATE models SET metrics='\"fast\"'")
    store = SqliteStore(path, command="test", readonly=True)
    with pytest.raises(StateCorrupted, match="run train-1 outputs holds list JSON"):
        RunStore(store).get("train-1")
    with pytest.raises(StateCorrupted, match="model m:1 metrics holds str JSON"):
        ModelRegistry(store).versions("m")
    store.close()

"""plan / apply / destroy / state on the local provider, with real files and processes."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra.state.lock import locked
from mlinfra.state.sqlite import SqliteStore
from tests.conftest import Result

INFRA = """\
kind: Workspace
name: ws
default_datastore: main
---
kind: Compute
name: cpu
---
kind: Datastore
name: main
path: ./data
---
kind: Data
name: transactions
path: transactions.csv
---
kind: Data
name: holdout
path: holdout.csv
---
kind: Environment
name: bare
python: "{python}"
"""
PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
MLINFRA = str(Path(sys.executable).parent / "mlinfra")


@pytest.fixture
def infra(project: Callable[..., Path]) -> Path:
    return project({"infra.yaml": INFRA.format(python=PYTHON),
                    "data/transactions.csv": "amount,is_fraud\n1.0,0\n2.5,1\n",
                    "data/holdout.csv": "amount,is_fraud\n3.0,0\n"}, base=False)


def state_db(root: Path, stack: str = "dev") -> Path:
    return root / ".mlinfra" / stack / "state.db"


def test_plan_apply_converge_and_repair_drift(infra: Path, cli: Callable[..., Result]) -> None:
    first = cli("plan", "--detailed-exitcode")
    assert first.code == 2, first.err
    assert "Plan: 6 to add, 0 to change, 0 to replace, 0 to destroy." in first.out
    assert "+ data \"transactions\" {" in first.out
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    assert "Apply complete! Resources: 6 added, 0 changed, 0 replaced, 0 destroyed." in applied.out
    again = cli("plan", "--detailed-exitcode")
    assert again.code == 0 and "No changes." in again.out

    workspace = infra / ".mlinfra" / "dev" / "workspaces" / "ws"
    assert (workspace / "artifacts").is_dir()
    outputs = json.loads(cli("output", "--json").out)
    venv = Path(outputs["environment.bare"]["venv"])
    assert (venv / "bin" / "python").exists()
    import shutil

    shutil.rmtree(workspace)
    shutil.rmtree(venv)
    drift = cli("plan", "--detailed-exitcode")
    assert drift.code == 2
    assert "Objects changed outside mlinfra:" in drift.out
    assert "# workspace.ws: its folder" in drift.out and "was deleted" in drift.out
    assert f"# environment.bare: virtual environment {venv} is not on this machine" in drift.out
    assert "Plan: 1 to add, 1 to change, 0 to replace, 0 to destroy." in drift.out
    assert cli("apply", "--auto-approve").code == 0
    assert workspace.is_dir() and (venv / "bin" / "python").exists()
    assert cli("plan", "--detailed-exitcode").code == 0


def test_a_deleted_artifact_store_is_named_as_such(infra: Path,
                                                   cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    import shutil

    workspace = infra / ".mlinfra" / "dev" / "workspaces" / "ws"
    shutil.rmtree(workspace / "artifacts")
    drift = cli("plan")
    assert "# workspace.ws: its artifact store .mlinfra/dev/workspaces/ws/artifacts was " \
           "deleted" in drift.out, drift.out
    assert "its folder .mlinfra/dev/workspaces/ws was deleted" not in drift.out
    assert cli("apply", "--auto-approve").code == 0
    assert (workspace / "artifacts").is_dir()


def test_refresh_false_does_not_see_drift(infra: Path, cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    import shutil

    shutil.rmtree(infra / ".mlinfra" / "dev" / "workspaces" / "ws")
    assert cli("plan", "--detailed-exitcode", "--refresh=false").code == 0
    assert cli("plan", "--detailed-exitcode").code == 2


def test_new_data_content_is_a_new_version(infra: Path, cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    csv = infra / "data" / "transactions.csv"
    original = csv.read_text()
    csv.write_text(original + "9.0,1\n")
    plan = cli("plan", "--detailed-exitcode")
    assert plan.code == 2
    assert "# data.transactions will be updated in-place" in plan.out
    assert "~ version = 1 -> 2" in plan.out
    assert cli("apply", "--auto-approve").code == 0
    out = json.loads(cli("output", "data.transactions", "--json").out)["data.transactions"]
    assert (out["version"], out["rows"]) == (2, 3)
    csv.write_text(original)  # the same content keeps its version number
    assert "~ version = 2 -> 1" in cli("plan").out


def test_plan_json(infra: Path, cli: Callable[..., Result]) -> None:
    result = cli("plan", "--json")
    data = json.loads(result.out)
    assert data["format_version"] == "1.0"
    assert data["summary"] == {"add": 6, "change": 0, "replace": 0, "destroy": 0}
    by_address = {c["address"]: c for c in data["changes"]}
    assert by_address["data.transactions"]["action"] == "create"
    assert by_address["data.transactions"]["after"]["version"] == 1
    assert by_address["data.transactions"]["dependencies"] == ["datastore.main", "workspace.ws"]
    order = [c["address"] for c in data["changes"]]
    assert order.index("datastore.main") < order.index("workspace.ws") < order.index(
        "data.transactions")


def test_saved_plan_applies_once_then_is_stale(infra: Path, cli: Callable[..., Result]) -> None:
    saved = cli("plan", "--out", "tfplan.json")
    assert saved.code == 0 and "mlinfra apply tfplan.json" in saved.out
    assert cli("apply", "tfplan.json").code == 0
    stale = cli("apply", "tfplan.json")
    assert stale.code == 1
    assert "stale" in stale.err and "serial" in stale.err


def test_saved_plan_refused_when_configuration_changed(infra: Path,
                                                      cli: Callable[..., Result]) -> None:
    assert cli("plan", "--out", "p.json").code == 0
    (infra / "data" / "transactions.csv").write_text("amount,is_fraud\n7,0\n")
    result = cli("apply", "p.json")
    assert result.code == 1 and "changed since the plan was saved" in result.err
    assert "the changes of data.transactions differ now" in result.err, result.err
    assert not state_db(infra).exists() or not SqliteStore(state_db(infra)).resources()


def test_not_a_plan_file(infra: Path, cli: Callable[..., Result]) -> None:
    (infra / "junk.json").write_text("{not json")
    result = cli("apply", "junk.json")
    assert result.code == 1 and "is not a plan file" in result.err


def test_confirmation(infra: Path, cli: Callable[..., Result],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("no\n"))
    declined = cli("apply")
    assert declined.code == 1 and "Apply cancelled." in declined.err
    monkeypatch.setattr("sys.stdin", io.StringIO("yes\n"))
    assert cli("apply").code == 0


def test_target(infra: Path, cli: Callable[..., Result]) -> None:
    result = cli("apply", "--auto-approve", "--target", "data.holdout")
    assert result.code == 0
    assert sorted(cli("state", "list").out.split()) == ["data.holdout", "datastore.main",
                                                        "workspace.ws"]
    assert "--target names no resource: data.nope" in cli("plan", "--target", "data.nope").err


def test_destroy_and_state_commands(infra: Path, cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    shown = json.loads(cli("state", "show", "data.transactions").out)
    assert shown["outputs"]["rows"] == 2 and shown["attributes"]["path"] == "transactions.csv"
    assert cli("state", "rm", "compute.cpu").code == 0
    assert "compute.cpu" not in cli("state", "list").out
    assert "+ compute \"cpu\"" in cli("plan").out
    destroyed = cli("destroy", "--auto-approve")
    assert destroyed.code == 0, destroyed.err
    assert "Destroy complete! Resources: 0 added, 0 changed, 0 replaced, 5 destroyed." in (
        destroyed.out)
    assert cli("state", "list").out == ""
    assert not (infra / ".mlinfra" / "dev" / "workspaces" / "ws").exists()
    store = SqliteStore(state_db(infra))
    actions = [row[5] for row in store.audit_log()]
    store.close()
    assert actions.count("delete") == 5 and "state-rm" in actions and actions.count(
        "create") == 6


def test_lock_held_then_waited_then_stale(infra: Path, cli: Callable[..., Result]) -> None:
    store = SqliteStore(state_db(infra))
    with locked(store, "dev", "test holder"):
        held = cli("apply", "--auto-approve")
        assert held.code == 1
        assert "locked" in held.err and f"pid {os.getpid()}" in held.err
        assert "test holder" in held.err and "mlinfra state unlock" in held.err
        started = time.monotonic()
        assert cli("apply", "--auto-approve", "--lock-timeout", "1s").code == 1
        assert time.monotonic() - started >= 1.0
    # a lock left by a process that is gone is recognised as stale
    with store.transaction() as cur:
        cur.execute("INSERT INTO locks (stack, id, owner, host, pid, command, created_at) "
                    "VALUES ('dev', 'deadbeef0000', 'x', ?, 999999999, "
                    "'apply', 0)", (os.uname().nodename,))
    assert cli("apply", "--auto-approve").code == 0
    # a lock of a live process elsewhere is kept until unlocked by its ID
    with store.transaction() as cur:
        cur.execute("INSERT INTO locks (stack, id, owner, host, pid, command, created_at) "
                    "VALUES ('dev', 'cafe00000000', 'x', 'other-host', 1, "
                    "'apply', 0)")
    assert "other-host" in cli("apply", "--auto-approve").err
    assert cli("state", "unlock", "wrong").code == 1
    assert cli("state", "unlock", "cafe00000000").code == 0
    assert cli("apply", "--auto-approve").code == 0
    store.close()


def test_two_applies_at_once_exactly_one_proceeds(infra: Path) -> None:
    procs = [subprocess.Popen([MLINFRA, "apply", "--auto-approve"], cwd=infra,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(*p.communicate(timeout=120), p.returncode) for p in procs]
    proceeded = [r for r in results if "6 added" in r[0]]
    assert len(proceeded) == 1, results
    other = next(r for r in results if r is not proceeded[0])
    # the other was refused by the lock, or came after and found nothing to do
    assert (other[2] == 1 and "locked" in other[1]) or (other[2] == 0 and "No changes" in
                                                        other[0]), other


def test_corrupted_state_keeps_the_backup(infra: Path, cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    assert cli("state", "rm", "compute.cpu").code == 0  # a write session: backup taken
    db = state_db(infra)
    backup = db.with_name("state.db.backup")
    assert backup.exists()
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    data = db.read_bytes()
    db.write_bytes(data[: len(data) // 3])  # truncated
    result = cli("plan")
    assert result.code == 1 and "Traceback" not in result.err
    assert "is damaged" in result.err and f"cp {backup} {db}" in result.err
    conn = sqlite3.connect(backup)
    assert conn.execute("SELECT COUNT(*) FROM resources").fetchone()[0] == 6
    conn.close()
    db.write_bytes(b"garbage" * 100)
    assert "is damaged" in cli("plan").err


def test_datastore_path_missing(project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    project({"a.yaml": "kind: Datastore\nname: lake\npath: ./nowhere\n"})
    result = cli("plan")
    assert result.code == 1
    assert "datastore.lake: path ./nowhere" in result.err and "does not exist" in result.err


def test_python_not_installed(project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    project({"a.yaml": 'kind: Environment\nname: future\npython: "3.99"\n'})
    result = cli("plan")
    assert result.code == 1
    assert "environment.future: Python 3.99 is not installed" in result.err
    assert "Installed: " in result.err and PYTHON in result.err.split("Installed: ")[1]


@pytest.mark.slow
def test_requirements_that_cannot_install(project: Callable[..., Path],
                                          cli: Callable[..., Result]) -> None:
    project({"a.yaml": f'kind: Environment\nname: broken\npython: "{PYTHON}"\n'
                       "requirements: [mlinfra-no-such-package-4f9a2c]\n"})
    result = cli("apply", "--auto-approve")  # the plan resolves them: it fails first
    assert result.code == 1
    assert "environment.broken: cannot resolve the requirements" in result.err
    assert "mlinfra-no-such-package-4f9a2c" in result.err
    assert len(result.err) < 3000  # shortened, not uv's whole log
    assert "Traceback" not in result.err


@pytest.mark.slow
def test_environment_with_requirements_is_shared_and_cached(
        project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    spec = f'python: "{PYTHON}"\nrequirements: [six]\n'
    project({"a.yaml": f"kind: Environment\nname: one\n{spec}---\n"
                       f"kind: Environment\nname: two\n{spec}"})
    assert cli("apply", "--auto-approve").code == 0
    outputs = json.loads(cli("output", "--json").out)
    venv = outputs["environment.one"]["venv"]
    assert venv == outputs["environment.two"]["venv"]
    done = subprocess.run([f"{venv}/bin/python", "-c", "import six; print(six.__name__)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "six"


def test_a_saved_plan_keeps_the_order_through_unchanged_resources(tmp_path: Path) -> None:
    from mlinfra.engine import _waits
    from mlinfra.plan import planfile
    from mlinfra.plan.model import Action, Change, Plan

    changes = [
        Change("environment.py", "Environment", "py", Action.REPLACE, "rebuilt",
               before={}, after={}),
        Change("job.prep", "Job", "prep", Action.NOOP, "", before={}, after={},
               dependencies=["environment.py"]),
        Change("job.train", "Job", "train", Action.UPDATE, "params changed",
               before={}, after={}, dependencies=["job.prep"]),
    ]
    planfile.save(Plan(changes, stack="dev"), tmp_path / "p.json")
    loaded = planfile.load(tmp_path / "p.json")
    assert [c.action for c in loaded.changes] == [Action.REPLACE, Action.NOOP, Action.UPDATE]
    assert _waits(loaded.changes)["job.train"] == {"environment.py"}
    assert loaded.counts() == {"add": 0, "change": 1, "replace": 1, "destroy": 0}

"""Faults: a provider failing mid-graph, and apply killed with SIGKILL at exact points."""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra.engine import execute, open_session, plan
from mlinfra.plan.model import Change
from mlinfra.providers.base import Applied, Context, ProviderError
from mlinfra.providers.local.infra import DatastoreHandler
from tests.conftest import Files, write_files

MLINFRA = str(Path(sys.executable).parent / "mlinfra")


class FailingDatastore(DatastoreHandler):
    def create(self, change: Change, ctx: Context) -> Applied:
        if change.name == "broken":
            raise ProviderError(change.address, "the disk said no")
        return super().create(change, ctx)


def test_failure_stops_dependants_not_siblings(project: Callable[[Files], Path]) -> None:
    root = project({
        "stores.yaml": "kind: Datastore\nname: broken\npath: ./a\n---\n"
                       "kind: Data\nname: on-broken\ndatastore: broken\npath: x.csv\n---\n"
                       "kind: Data\nname: on-main\ndatastore: main\npath: y.csv\n",
        "a/x.csv": "a\n1\n", "data/y.csv": "a\n2\n"})
    session = open_session(root, None, "apply", write=True)
    session.provider.handlers["Datastore"] = FailingDatastore()
    events: list[tuple[str, str]] = []
    result = execute(session, plan(session), parallelism=2,
                     on_event=lambda kind, change, *_: events.append((kind, change.address)))
    state = set(session.store.resources())
    failed_journal = session.store.query("SELECT address, detail FROM journal "
                                         "WHERE status='failed'")
    session.close()
    assert result.failed == {"datastore.broken": "the disk said no"}
    assert result.skipped == {"data.on-broken": "datastore.broken was not applied"}
    assert {"datastore.main", "data.on-main", "workspace.ws", "compute.cpu"} <= state
    assert "datastore.broken" not in state and "data.on-broken" not in state
    assert failed_journal == [("datastore.broken", "the disk said no")]
    assert ("skip", "data.on-broken") in events and ("start", "data.on-broken") not in events


def test_failed_apply_exit_code_and_report(project: Callable[[Files], Path],
                                           monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    from mlinfra.cli import main
    from mlinfra.providers.local import LocalProvider

    original = LocalProvider.__init__

    def patched(self: LocalProvider) -> None:
        original(self)
        self.handlers["Datastore"] = FailingDatastore()

    monkeypatch.setattr(LocalProvider, "__init__", patched)
    project({"s.yaml": "kind: Datastore\nname: broken\npath: ./data\n---\n"
                       "kind: Data\nname: on-broken\ndatastore: broken\npath: x.csv\n",
             "data/x.csv": "a\n1\n"})
    assert main(["apply", "--auto-approve"]) == 1
    out, err = capsys.readouterr()
    assert "datastore.broken: failed after" in out and "the disk said no" in out
    report = err.splitlines()
    assert report[1].startswith("Apply failed. Resources: 3 added,"), err
    assert "  failed: datastore.broken: the disk said no" in report
    assert "  not applied: data.on-broken (datastore.broken was not applied)" in report


N_DATA = 250


def _template(tmp: Path) -> Path:
    root = tmp / "template"
    docs = ["kind: Workspace\nname: ws\ndefault_datastore: main\n",
            "kind: Datastore\nname: main\npath: ./data\n", "kind: Compute\nname: cpu\n"]
    files: Files = {"mlinfra.yaml": "kind: Project\nname: crash\n"}
    for i in range(N_DATA):
        docs.append(f"kind: Data\nname: d{i}\npath: d{i}.csv\n")
        files[f"data/d{i}.csv"] = f"x,y\n{i},{i * 2}\n"
    files["resources.yaml"] = "---\n".join(docs)
    write_files(root, files)
    return root


def _state(root: Path) -> tuple[int, dict[str, list[int]], int]:
    db = root / ".mlinfra" / "dev" / "state.db"
    if not db.exists():
        return 0, {}, 0
    conn = sqlite3.connect(db)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        resources = conn.execute("SELECT COUNT(*) FROM resources").fetchone()[0] if (
            "resources" in tables) else 0
        versions: dict[str, list[int]] = {}
        if "data_versions" in tables:
            for name, version in conn.execute("SELECT name, version FROM data_versions"):
                versions.setdefault(name, []).append(version)
        pending = conn.execute("SELECT COUNT(*) FROM journal WHERE status='pending'"
                               ).fetchone()[0] if "journal" in tables else 0
    finally:
        conn.close()
    return resources, versions, pending


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MLINFRA, *args], cwd=root, capture_output=True, text=True,
                          timeout=120, check=False)


def _start_apply(root: Path) -> subprocess.Popen[str]:
    """Start apply and return once it begins changing resources (its first line)."""
    proc = subprocess.Popen([MLINFRA, "apply", "--auto-approve", "--parallelism", "2"],
                            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.rstrip().endswith("Creating..."):
            break
    return proc


def _wait_for_serial(db: Path, serial: int, proc: subprocess.Popen[str]) -> None:
    """Return as soon as the apply has committed `serial` changes."""
    deadline = time.monotonic() + 60
    conn = None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if conn is None and db.exists():
                conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)
            if conn is not None:
                try:
                    row = conn.execute("SELECT value FROM meta WHERE key='serial'").fetchone()
                except sqlite3.OperationalError:  # the file is being put in place
                    row = None
                if row is not None and int(row[0]) >= serial:
                    return
            time.sleep(0.002)
    finally:
        if conn is not None:
            conn.close()
    raise AssertionError(f"apply ended or stalled before serial {serial}")


def test_kill_9_at_exact_points_then_converge(tmp_path: Path) -> None:
    """kill -9 right after the k-th change is committed, for 20 values of k across the
    apply: the next apply converges, nothing is registered twice."""
    template = _template(tmp_path)
    total = N_DATA + 3
    rng = random.Random(20261122)
    points = sorted(rng.sample(range(1, total - 30), 20))
    for k in points:
        root = tmp_path / f"kill-{k}"
        shutil.copytree(template, root)
        proc = _start_apply(root)
        _wait_for_serial(root / ".mlinfra" / "dev" / "state.db", k, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        partial, _, pending = _state(root)
        assert k <= partial < total, (k, partial)  # the kill landed during the apply
        done = _run(root, "apply", "--auto-approve")
        assert done.returncode == 0, (k, done.stdout, done.stderr)
        converged = _run(root, "plan", "--detailed-exitcode")
        assert converged.returncode == 0, (k, converged.stdout, converged.stderr)
        resources, versions, pending = _state(root)
        assert resources == total, k
        assert pending == 0, k
        # nothing registered twice: one version per data asset, numbered 1
        assert versions == {f"d{i}": [1] for i in range(N_DATA)}, k

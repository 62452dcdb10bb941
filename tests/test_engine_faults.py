"""Faults: a provider failing mid-graph, and apply killed with SIGKILL at random points."""

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
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from mlinfra.cli import main
    from mlinfra.providers.local import LocalProvider

    original = LocalProvider.__init__

    def patched(self: LocalProvider) -> None:
        original(self)
        self.handlers["Datastore"] = FailingDatastore()

    monkeypatch.setattr(LocalProvider, "__init__", patched)
    project({"s.yaml": "kind: Datastore\nname: broken\npath: ./data\n"})
    assert main(["apply", "--auto-approve"]) == 1


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


def test_kill_9_at_random_points_then_converge(tmp_path: Path) -> None:
    template = _template(tmp_path)
    total = N_DATA + 3
    timing = tmp_path / "timing"
    shutil.copytree(template, timing)
    proc = _start_apply(timing)
    started = time.monotonic()
    assert proc.wait(timeout=120) == 0
    proc.stdout.close()  # type: ignore[union-attr]
    window = time.monotonic() - started  # from the first change to the end
    rng = random.Random(20261122)
    landed = 0
    for point in range(20):
        root = tmp_path / f"kill-{point}"
        shutil.copytree(template, root)
        proc = _start_apply(root)
        time.sleep(rng.uniform(0, window))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        partial, _, pending = _state(root)
        landed += 0 < partial < total or pending > 0
        done = _run(root, "apply", "--auto-approve")
        assert done.returncode == 0, (point, done.stdout, done.stderr)
        converged = _run(root, "plan", "--detailed-exitcode")
        assert converged.returncode == 0, (point, converged.stdout, converged.stderr)
        resources, versions, pending = _state(root)
        assert resources == total, point
        assert pending == 0, point
        # nothing registered twice: one version per data asset, numbered 1
        assert versions == {f"d{i}": [1] for i in range(N_DATA)}, point
    assert landed >= 10, f"only {landed} of 20 kills landed during the apply"

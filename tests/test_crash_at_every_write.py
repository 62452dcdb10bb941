"""Crash at every write: apply is killed with SIGKILL right after each of its state
commits in turn (the store's test-only fault-injection point), and after each kill the
next apply converges: nothing created twice, the served version is the alias', no
candidate served more than the share being judged, and destroy leaves no process. The
same for a key rotation (a revoked key stays revoked), a state migration (it completes
on rerun), and kills inside provider calls (right after a job's process started; right
after a server got a new config).

The loops print how many kill points they tried and how many held."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import BASE, Result, onnx_model, write_files
from tests.test_serving import call

Cli = Callable[..., Result]
MLINFRA = str(Path(sys.executable).parent / "mlinfra")

PROJECT = """\
kind: Data
name: events
path: events.csv
---
kind: Data
name: holdout
path: holdout.csv
---
kind: Environment
name: bare
requirements: []
---
kind: Job
name: prep
code: ./code
command: python prep.py ${inputs.data} ${outputs.clean}
environment: bare
inputs: {data: events}
outputs: {clean: clean.csv}
---
kind: Job
name: train
code: ./code
command: python train.py ${inputs.data} ${outputs.model}
environment: bare
inputs: {data: events}
outputs: {model: model.onnx}
---
kind: Pipeline
name: fit
steps:
  prep: {job: prep}
  train: {job: train, inputs: {data: "${steps.prep.outputs.clean}"}}
---
kind: Model
name: fraud
from: {pipeline: fit, step: train, output: model}
evaluation: {data: holdout, label: y, metrics: [auc]}
---
kind: Endpoint
name: api
auth: key
workers: 1
deployments:
  - name: blue
    model: fraud@champion
    request: {max_batch_size: 1, max_batch_delay_ms: 1}
traffic: {blue: 100}
collect: {sample: 1.0}
---
kind: Promotion
name: fraud
model: fraud
gates: {metrics: {auc: {min: 0.3}}}
rollout: {endpoint: api, steps: [50, 100], hold_s: 0.2, min_requests: 2, replay: true,
          rollback_on: {error_rate: 0.5}}
"""
PREP = "import shutil, sys\nshutil.copyfile(sys.argv[1], sys.argv[2])\n"
# "Training": the model of base.onnx, told apart by the rows it was trained on (an ONNX
# doc_string, field 6, appended to the serialized ModelProto).
TRAIN = """\
import sys
rows = sum(1 for line in open(sys.argv[1]) if line.strip()) - 1
note = f"trained on {rows} rows".encode()
model = open("base.onnx", "rb").read() + bytes([0x32, len(note)]) + note
open(sys.argv[2], "wb").write(model)
"""
ROWS = [(1.0, 0.3, 1), (-1.0, 0.8, 0), (0.5, -0.7, 1), (-0.4, -0.2, 0), (2.0, 0.1, 1),
        (-2.0, 0.9, 0)]


def _csv(rows: list[tuple[float, float, int]]) -> str:
    return "a,b,y\n" + "".join(f"{a},{b},{y}\n" for a, b, y in rows)


@pytest.fixture
def stack(tmp_path: Path, cli: Cli, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The project applied once (fraud:1 the champion, served), with keys made and
    requests captured for the rollouts' replay; destroyed at the end."""
    root = tmp_path / "proj"
    write_files(root, {"mlinfra.yaml": "kind: Project\nname: proj\n", "base.yaml": BASE,
                       "project.yaml": PROJECT, "code/prep.py": PREP, "code/train.py": TRAIN,
                       "code/base.onnx": onnx_model((2.0, 0.0)),
                       "data/events.csv": _csv(ROWS), "data/holdout.csv": _csv(ROWS)})
    monkeypatch.chdir(root)
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.out + applied.err
    keys = dict(line.split(": ") for line in cli("endpoints", "keys", "api").out.split("\n")
                if ": " in line)
    url = _outputs(cli)["url"]
    for a in (0.5, -0.5, 1.5):
        assert call(url, keys["primary"], "POST", "/invocations", {"inputs": [[a, 0.2]]}
                    )[0] == 200
    time.sleep(1.6)  # captures are written once a worker took no row for a second
    yield root, keys
    destroyed = cli("destroy", "--auto-approve")  # no server of the test is left running
    assert destroyed.code == 0, destroyed.out + destroyed.err


def _outputs(cli: Cli) -> dict[str, Any]:
    return dict(json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"])


def _run(root: Path, *args: str, env: dict[str, str] | None = None) -> int:
    return _done(root, *args, env=env).returncode


def _done(root: Path, *args: str, env: dict[str, str] | None = None
          ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MLINFRA, *args], cwd=root, capture_output=True, text=True,
                          timeout=300, check=False, env={**os.environ, **(env or {})})


def _db(root: Path) -> sqlite3.Connection:
    return sqlite3.connect(root / ".mlinfra" / "dev" / "state.db")


def _champion(cli: Cli) -> int:
    return int(json.loads(cli("models", "show", "fraud@champion").out)["version"])


def _converged(root: Path, cli: Cli, keys: dict[str, str], revoked: set[str]) -> None:
    """The invariants the next apply must restore after any kill."""
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.out + applied.err
    plan = cli("plan", "--detailed-exitcode")
    assert plan.code == 0, plan.out + plan.err
    with _db(root) as conn:
        twice = conn.execute("SELECT job, step, run_hash FROM runs WHERE status='completed' "
                             "AND job <> 'fit' GROUP BY job, step, run_hash "
                             "HAVING COUNT(*) > 1").fetchall()
        assert twice == [], twice  # one run per input hash
        unfinished = conn.execute("SELECT id FROM runs WHERE status IN ('queued', 'running')"
                                  ).fetchall()
        assert unfinished == []
        for table in ("models", "data_versions"):  # one version per content
            rows = conn.execute(f"SELECT COUNT(*), COUNT(DISTINCT name || sha256) FROM {table}"
                                ).fetchone()
            assert rows[0] == rows[1], table
        shares = [json.loads(d) for (d,) in conn.execute(
            "SELECT data FROM journal_steps s JOIN journal j ON j.id = s.journal_id "
            "WHERE j.address='endpoint.api' OR j.address='promotion.fraud' ORDER BY s.rowid")]
    for step in shares:  # a canary's share moves only through the declared steps
        for name, share in (step.get("traffic") or {}).items():
            if name.startswith("canary-"):
                assert share in (0, 50, 100), step
    served = _outputs(cli)
    alias = _champion(cli)
    assert served["served"] == {"blue": f"fraud:{alias}"}, served
    assert served["traffic"] == {"blue": 100}
    good = keys["primary"]
    assert good not in revoked
    status, _, headers = call(served["url"], good, "POST", "/invocations",
                              {"inputs": [[1.0, 2.0]]})
    assert status == 200 and headers["mlinfra-model"] == f"fraud:{alias}"
    for key in revoked:
        assert call(served["url"], key, "POST", "/invocations", {"inputs": [[1.0, 2.0]]}
                    )[0] == 401


def _stack_processes(root: Path) -> list[int]:
    found = []
    for process in psutil.process_iter(["pid", "cmdline", "cwd"]):
        try:
            text = " ".join(process.info["cmdline"] or []) + " " + (process.info["cwd"] or "")
        except psutil.Error:
            continue
        if str(root) in text and process.pid != os.getpid():
            found.append(process.pid)
    return found


@pytest.mark.slow
def test_apply_killed_after_every_commit_converges(stack: Any, cli: Cli) -> None:
    root, keys = stack
    tried = held = 0
    n = 0
    while True:
        n += 1
        rows = [*ROWS, *[(0.1 * n, 0.5, 1)] * n]  # new data: every step runs again
        (root / "data" / "events.csv").write_text(_csv(rows))
        before = _champion(cli)
        code = _run(root, "apply", "--auto-approve",
                    env={"MLINFRA_TEST_KILL_AFTER_COMMIT": str(n)})
        if code != -9:  # the apply made fewer commits than n: every point was tried
            assert code == 0
            assert _champion(cli) > before
            break
        tried += 1
        _converged(root, cli, keys, set())
        assert _champion(cli) > before  # the new version was judged and promoted
        held += 1
        assert n < 150
    print(f"\napply: {tried} kill points tried, {held} held")
    assert tried >= 10 and held == tried


@pytest.mark.slow
def test_kills_inside_provider_calls_converge(stack: Any, cli: Cli) -> None:
    """Right after a job's process started (before its pid was recorded), and right
    after a server got a new config (a rollout's step, before it was recorded); then
    destroy leaves no process of the stack."""
    root, keys = stack
    for n, point in enumerate(("popen", "published"), start=1):
        (root / "data" / "events.csv").write_text(_csv([*ROWS, *[(0.3, 0.1, 0)] * n]))
        code = _run(root, "apply", "--auto-approve", env={"MLINFRA_TEST_KILL_AT": point})
        assert code == -9, point
        _converged(root, cli, keys, set())
        with _db(root) as conn:  # the orphan was found and stopped, never run beside
            canceled = conn.execute("SELECT error FROM runs WHERE status='canceled'"
                                    ).fetchall()
        if point == "popen":
            assert any("orphaned" in e for (e,) in canceled), canceled
    # Destroy, after a job's process was left running with its pid never recorded.
    (root / "data" / "events.csv").write_text(_csv([*ROWS, (0.2, 0.2, 1)]))
    assert _run(root, "apply", "--auto-approve", env={"MLINFRA_TEST_KILL_AT": "popen"}) == -9
    assert _stack_processes(root)
    assert cli("destroy", "--auto-approve").code == 0
    deadline = time.monotonic() + 10
    while _stack_processes(root) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _stack_processes(root) == []  # no process of the stack is left


@pytest.mark.slow
def test_a_key_rotation_killed_after_every_commit_never_revives_the_old_key(
        stack: Any, cli: Cli) -> None:
    root, keys = stack
    revoked: set[str] = set()
    tried = 0
    n = 0
    while True:
        n += 1
        old = keys["primary"]
        code = _run(root, "endpoints", "keys", "api", "--regenerate", "primary",
                    env={"MLINFRA_TEST_KILL_AFTER_COMMIT": str(n)})
        if code != -9:
            assert code == 0
            break
        tried += 1
        url = _outputs(cli)["url"]
        body = {"inputs": [[1.0, 2.0]]}
        refused = call(url, old, "POST", "/invocations", body)[0] == 401
        # The next apply finishes the rotation (its key set was recorded) or leaves
        # the old key; a key the server refused is never accepted again.
        applied = cli("apply", "--auto-approve")
        assert applied.code == 0, applied.out + applied.err
        if call(url, old, "POST", "/invocations", body)[0] == 401:
            revoked.add(old)  # revoked for good: a new primary to go on with
            shown = cli("endpoints", "keys", "api", "--regenerate", "primary")
            keys["primary"] = shown.out.split(": ")[1].split()[0]
        else:
            assert not refused, f"kill point {n}: a refused key is accepted again"
        _converged(root, cli, {k: v for k, v in keys.items()}, revoked)
    print(f"\nendpoints keys --regenerate: {tried} kill points tried, {tried} held")
    assert tried >= 2


@pytest.mark.slow
def test_state_migrate_killed_after_every_commit_completes_on_rerun(
        stack: Any, cli: Cli) -> None:
    root, _ = stack
    tried = 0
    n = 0
    while True:
        n += 1
        target = root / f"moved-{n}.db"
        code = _run(root, "state", "migrate", "--to", str(target),
                    env={"MLINFRA_TEST_KILL_AFTER_COMMIT": str(n)})
        if code != -9:
            assert code == 0
            break
        tried += 1
        again = _done(root, "state", "migrate", "--to", str(target))
        assert again.returncode == 0, (n, again.stderr)  # it finishes on rerun
        # Put the stack back on its own state for the next point.
        with _db(root) as conn:
            conn.execute("DELETE FROM meta WHERE key='moved_to'")
    with _db(root) as conn:  # back on its own state, which the fixture destroys
        conn.execute("DELETE FROM meta WHERE key='moved_to'")
    print(f"\nstate migrate: {tried} kill points tried, {tried} held")
    assert tried >= 2

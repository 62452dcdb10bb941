"""A stack whose state is on PostgreSQL, used as a team would: the CLI on a
`state: postgresql://` stack, `state migrate` both ways, two clones of one project
applying at once, kill -9 of the one holding the lock, and the quickstart."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra.state import open_store
from mlinfra.state.model import LockInfo
from mlinfra.state.schema import COPIED_TABLES
from tests.conftest import Result, onnx_model
from tests.postgres import PASSWORD, PostgresServer

MLINFRA = str(Path(sys.executable).parent / "mlinfra")
SECRET = "PGTEST_PASSWORD"


def _stack(server: PostgresServer, schema: str | None = None, artifacts: str = "") -> str:
    url = server.url(schema=schema).replace("mlinfra@", f"mlinfra:${{secret.{SECRET}}}@")
    return (f"kind: Stack\nname: dev\nstate: {url}\n"
            + (f"artifacts: {artifacts}\n" if artifacts else ""))


def _model_files(project_name: str) -> dict[str, str | bytes]:
    return {"mlinfra.yaml": f"kind: Project\nname: {project_name}\n",
            "models/m.onnx": onnx_model(),
            "model.yaml": "kind: Model\nname: m\nfrom: {path: models/m.onnx}\n"}


def test_a_stack_on_postgresql(postgres: PostgresServer, project: Callable[..., Path],
                               cli: Callable[..., Result],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"team-{os.urandom(3).hex()}"
    schema = f"mlinfra_{name.replace('-', '_')}_dev"  # derived from project and stack
    root = project({**_model_files(name), "stacks/dev.yaml": _stack(postgres)})
    missing = cli("plan")
    assert missing.code == 1 and f"secret '{SECRET}' is not set" in missing.err
    monkeypatch.setenv(SECRET, "wrong")
    refused = cli("plan")
    assert refused.code == 1 and "password authentication failed" in refused.err
    assert "(the `state:` of stacks/dev.yaml)" in refused.err
    assert "wrong" not in refused.err and ":***@" in refused.err and "Traceback" not in (
        refused.err)
    monkeypatch.setenv(SECRET, PASSWORD)
    planned = cli("plan", "--detailed-exitcode")
    assert planned.code == 2 and "4 to add" in planned.out, planned.err
    assert postgres.sql("SELECT 1 FROM pg_namespace WHERE nspname=%s", (schema,)) == []
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    assert cli("plan", "--detailed-exitcode").code == 0
    assert cli("state", "list").out.split() == ["compute.cpu", "datastore.main", "model.m",
                                                "workspace.ws"]
    assert cli("models", "alias", "m@champion", "1").code == 0
    rows = postgres.sql(f"SELECT key, value FROM {schema}.meta WHERE key='serial'")
    assert rows == [("serial", "5")]  # 4 resources and an alias, in the database
    # the state moves to a SQLite file and back, verified; the old one is kept, marked
    moved = cli("state", "migrate", "--to", ".mlinfra/dev/state.db")
    assert moved.code == 0, moved.err
    assert postgres.sql(f"SELECT count(*) FROM {schema}.resources") == [(4,)]
    assert moved.out.count("verified") == len(COPIED_TABLES)
    assert "set\n  state: .mlinfra/dev/state.db" in moved.out
    # a teammate whose stack file still names the old state can neither plan, apply nor
    # destroy from it; they are told where it went
    for command in (("plan",), ("apply", "--auto-approve"), ("destroy", "--auto-approve"),
                    ("models", "alias", "m@champion", "1")):
        stale = cli(*command)
        assert stale.code == 1 and "was moved to" in stale.err and \
            ".mlinfra/dev/state.db" in stale.err and "stacks/dev.yaml" in stale.err, command
    assert cli("state", "list").out.split()[0] == "compute.cpu"
    assert postgres.sql(f"SELECT count(*) FROM {schema}.resources") == [(4,)]
    (root / "stacks" / "dev.yaml").write_text("kind: Stack\nname: dev\n")
    assert cli("plan", "--detailed-exitcode").code == 0
    assert "champion" in cli("models", "list").out
    other = postgres.new_schema()
    url = postgres.url(schema=other).replace("mlinfra@", f"mlinfra:${{secret.{SECRET}}}@")
    back = cli("state", "migrate", "--to", url)
    assert back.code == 0 and PASSWORD not in back.out and f"state: {url}" in back.out
    assert cli("plan").code == 1  # the SQLite copy was moved in its turn
    (root / "stacks" / "dev.yaml").write_text(_stack(postgres, other))
    assert cli("plan", "--detailed-exitcode").code == 0
    assert cli("destroy", "--auto-approve").code == 0
    # a password typed in --to is never shown as what to write in the stack file
    typed = cli("state", "migrate", "--to", postgres.url(schema=postgres.new_schema(),
                                                         password=PASSWORD))
    assert typed.code == 0, typed.err
    assert PASSWORD not in typed.out and ":${secret.MLINFRA_DB_PASSWORD}@" in typed.out


def test_a_resource_with_a_secret_on_postgresql(postgres: PostgresServer,
                                                project: Callable[..., Path],
                                                cli: Callable[..., Result],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    project({"stacks/dev.yaml": _stack(postgres, postgres.new_schema()),
             "env.yaml": 'kind: Environment\nname: e\npython: "3.11"\n'
                         'env: {TOKEN: "${secret.TOKEN}"}\n'})
    monkeypatch.setenv(SECRET, PASSWORD)
    monkeypatch.setenv("TOKEN", "first")
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    assert cli("plan", "--detailed-exitcode").code == 0
    monkeypatch.setenv("TOKEN", "second")  # a changed secret is a change, never shown
    changed = cli("plan", "--detailed-exitcode")
    assert changed.code == 2 and "second" not in changed.out


def test_the_password_from_libpq_variables(postgres: PostgresServer,
                                           project: Callable[..., Path],
                                           cli: Callable[..., Result],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    schema = postgres.new_schema()
    project({**_model_files("proj"),
             "stacks/dev.yaml": f"kind: Stack\nname: dev\nstate: postgresql://127.0.0.1:"
                                f"{postgres.port}/mlinfra?schema={schema}\n"})
    monkeypatch.setenv("PGUSER", "mlinfra")
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    assert cli("apply", "--auto-approve").code == 0
    assert postgres.sql(f"SELECT count(*) FROM {schema}.resources") == [(4,)]


def test_the_readme_team_stack(project: Callable[..., Path], cli: Callable[..., Result],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import REPO

    readme = (REPO / "README.md").read_text()
    stack = readme.split("# stacks/prod.yaml\n", 1)[1].split("```", 1)[0]
    project({"stacks/prod.yaml": stack})
    assert cli("validate", "-s", "prod").code == 0
    monkeypatch.delenv("MLINFRA_DB_PASSWORD", raising=False)
    refused = cli("plan", "-s", "prod")
    assert refused.code == 1 and "secret 'MLINFRA_DB_PASSWORD' is not set" in refused.err


def test_a_sqlite_stack_never_imports_psycopg(project: Callable[..., Path]) -> None:
    root = project(_model_files("proj"))
    code = ("import sys; from mlinfra.cli import main; "
            f"assert main(['apply', '--auto-approve', '-C', {str(root)!r}]) == 0; "
            f"assert main(['plan', '-C', {str(root)!r}]) == 0; "
            "assert 'psycopg' not in sys.modules, 'imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr


def test_a_plan_on_postgresql_reads_in_a_read_only_session(
        postgres: PostgresServer, project: Callable[..., Path]) -> None:
    """A plan only reads, on a psycopg session like every other one (no second SQL
    path), and finds no changes after an apply."""
    root = project({**_model_files(f"lean-{os.urandom(3).hex()}"),
                    "stacks/dev.yaml": _stack(postgres)})
    env = {**os.environ, SECRET: PASSWORD}
    applied = subprocess.run([MLINFRA, "apply", "--auto-approve", "-C", str(root)], env=env,
                             capture_output=True, text=True, timeout=300, check=False)
    assert applied.returncode == 0, applied.stderr
    code = ("import sys; from mlinfra.cli import main; "
            f"code = main(['plan', '--detailed-exitcode', '-C', {str(root)!r}]); "
            "assert code == 0, code; assert 'mlinfra.state.libpq' not in sys.modules")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert "No changes" in done.stdout


# --- two clones of one project, one state ------------------------------------------------

SLEEPER = """\
kind: Job
name: sleeper
code: ./job
command: python sleep.py --out ${outputs.done}
outputs: {done: done.txt}
"""

SLEEP = """\
import argparse, os, time
p = argparse.ArgumentParser(); p.add_argument("--out"); a = p.parse_args()
time.sleep(float(os.environ.get("SLEEP_S", "0")))
open(a.out, "w").write("done")
"""


def _clone(tmp_path: Path, name: str, stack: str) -> Path:
    root = tmp_path / name
    files: dict[str, str | bytes] = {
        "mlinfra.yaml": "kind: Project\nname: shared\n", "stacks/dev.yaml": stack,
        "base.yaml": "kind: Workspace\nname: ws\ndefault_datastore: main\n---\n"
                     "kind: Datastore\nname: main\npath: ./data\n",
        "job.yaml": SLEEPER, "job/sleep.py": SLEEP}
    for rel, content in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content) if isinstance(content, str) else path.write_bytes(content)
    (root / "data").mkdir()
    return root


def _apply(root: Path, *args: str, sleep: float = 0) -> subprocess.Popen[str]:
    env = {**os.environ, SECRET: PASSWORD, "SLEEP_S": str(sleep)}
    return subprocess.Popen([MLINFRA, "apply", "--auto-approve", *args], cwd=root, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _holder(location: str, until: Callable[[LockInfo | None], bool]) -> LockInfo | None:
    store = open_store(location, project="shared", stack="dev", command="test",
                       readonly=False)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            info = store.lock_holder("dev")
            if until(info):
                return info
            time.sleep(0.05)
        raise AssertionError("the lock never came to the expected holder")
    finally:
        store.close()


def test_two_clones_apply_at_once_and_kill_9_frees_the_lock(
        postgres: PostgresServer, tmp_path: Path) -> None:
    schema = postgres.new_schema()
    stack = _stack(postgres, schema, artifacts=str(tmp_path / "team-artifacts"))
    first, second = _clone(tmp_path, "alice", stack), _clone(tmp_path, "bob", stack)
    location = postgres.url(schema=schema, password=PASSWORD)
    slow = _apply(first, sleep=60)
    waiting = None
    try:
        # its row written (until then the holder is named by its session alone)
        held = _holder(location, lambda info: info is not None and info.pid != 0)
        assert held is not None and held.pid == slow.pid and held.command == "apply"
        refused = _apply(second)
        out, err = refused.communicate(timeout=120)
        assert slow.poll() is None  # refused while the first apply was still running
        assert refused.returncode == 1, out + err
        assert f"is locked: ID {held.id}, held by" in err and f"pid {slow.pid} on" in err
        assert "running 'apply'" in err and "PostgreSQL session" in err
        waiting = _apply(second, "--lock-timeout", "2m")
        time.sleep(1.0)  # it waits for the lock
        assert waiting.poll() is None
        os.kill(slow.pid, signal.SIGKILL)
        taken = _holder(location, lambda info: info is not None and info.pid == waiting.pid)
        assert taken is not None
        out, err = waiting.communicate(timeout=300)
        assert waiting.returncode == 0, out + err
        assert "was interrupted during create of job.sleeper" in err
    finally:
        for proc in (slow, waiting):
            if proc is not None and proc.poll() is None:
                proc.kill()
            if proc is not None:
                proc.communicate()
        _stop_orphaned_jobs(location)
    # the other clone sees the same state and the same artifacts: nothing to do
    plan = subprocess.run([MLINFRA, "plan", "--detailed-exitcode"], cwd=first,
                          env={**os.environ, SECRET: PASSWORD}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert plan.returncode == 0, plan.stdout + plan.stderr


def _stop_orphaned_jobs(location: str) -> None:
    """The killed apply's job runs on in its own process group: end it."""
    store = open_store(location, project="shared", stack="dev", command="test",
                       readonly=True)
    try:
        for (pid,) in store.query("SELECT pid FROM runs WHERE status='running'"):
            if pid:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(int(pid), signal.SIGKILL)
    finally:
        store.close()


# --- the quickstart ----------------------------------------------------------------------

@pytest.mark.slow
def test_the_quickstart_on_postgresql(postgres: PostgresServer, quickstart: Path) -> None:
    """Apply, train, promote, serve and score with the state on PostgreSQL."""
    schema = postgres.new_schema()
    stack = (quickstart / "stacks" / "dev.yaml").read_text()
    stack += f"state: {postgres.url(schema=schema)}\n"
    (quickstart / "stacks" / "dev.yaml").write_text(stack)
    env = {**os.environ, "PGPASSWORD": PASSWORD}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MLINFRA, *args, "-C", str(quickstart)], capture_output=True,
                              text=True, timeout=900, check=False, env=env)

    apply = run("apply", "--auto-approve")
    try:
        assert apply.returncode == 0, apply.stdout[-3000:] + apply.stderr[-3000:]
        assert "model.fraud: registered version 1" in apply.stdout
        assert "promoted fraud@champion -> fraud:1" in apply.stdout
        model = json.loads(run("models", "show", "fraud@champion").stdout)
        assert model["metrics"]["auc"] > 0.75
        invoked = run("endpoints", "invoke", "fraud-api", "--data",
                      str(quickstart / "sample-request.json"))
        assert invoked.returncode == 0 and "from fraud:1" in invoked.stderr, invoked.stderr
        assert run("plan", "--detailed-exitcode").returncode == 0
        runs = postgres.sql(f"SELECT count(*) FROM {schema}.runs WHERE status='completed'")
        assert runs[0][0] >= 2  # the pipeline and its steps, in the database
        assert not (quickstart / ".mlinfra" / "dev" / "state.db").exists()
    finally:
        assert run("destroy", "--auto-approve").returncode == 0
    shutil.rmtree(quickstart / ".mlinfra", ignore_errors=True)


def test_validate_checks_the_state_url(project: Callable[..., Path],
                                       cli: Callable[..., Result]) -> None:
    """What plan would refuse in a stack's state URL, validate refuses first, naming the
    file, line and field; no server is needed."""
    root = project(_model_files("urls"))
    (root / "stacks").mkdir(exist_ok=True)
    for url, message in (
            ("postgresql://db/ml?schema=Bad-Name", "schema 'Bad-Name' is not a plain"),
            ("mysql://db/ml", "state backend 'mysql' is not supported"),
            ("postgresql://db/ml?schema=a&schema=b", "?schema= is given 2 times"),
    ):
        (root / "stacks" / "dev.yaml").write_text(f"kind: Stack\nname: dev\nstate: {url}\n")
        refused = cli("validate")
        assert refused.code == 1 and f"stacks/dev.yaml:3:8: state: {message}" in refused.err, (
            refused.err)
    (root / "stacks" / "dev.yaml").write_text(
        f"kind: Stack\nname: dev\nstate: postgresql://u:${{secret.{SECRET}}}@db/ml"
        "?schema=team_state\n")
    assert cli("validate").code == 0

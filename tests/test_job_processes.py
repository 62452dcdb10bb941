"""A job's processes end with the job: what it leaves running (a background child, a
daemon that left its process group) is stopped at its end, at its timeout, and on
Ctrl-C (SIGTERM, then SIGKILL after a grace period; a second Ctrl-C kills at once)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra.runs.processes import run_processes, started_at
from tests.conftest import Files, Result
from tests.test_training import MLINFRA

JOB = """\
kind: Job
name: bg
code: ./steps
command: sh start.sh ${{outputs.o}}
outputs: {{o: o.txt}}
{extra}
"""

# A child in the job's process group and a daemon that leaves it (setsid, closed
# streams); both write their pid and sleep. The job waits until both are up.
START = """\
here=$(pwd)
sh -c 'echo $$ > "$1"; exec sleep 60' sh "$here/../child.pid" &
setsid sh -c 'echo $$ > "$1"; exec sleep 60' sh "$here/../daemon.pid" \\
  </dev/null >/dev/null 2>&1 &
while [ ! -s "$here/../child.pid" ] || [ ! -s "$here/../daemon.pid" ]; do sleep 0.05; done
echo up > "$1"
{then}
"""


def _alive(pid: int) -> bool:
    return started_at(pid) is not None and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _left_pids(root: Path) -> list[int]:
    runs = root / ".mlinfra" / "dev" / "workspaces" / "ws" / "runs"
    return [int(p.read_text()) for name in ("child.pid", "daemon.pid")
            for p in runs.rglob(name)]


def _stop(pids: list[int]) -> None:
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_what_a_job_leaves_running_ends_with_it(project: Callable[[Files], Path],
                                                cli: Callable[..., Result]) -> None:
    root = project({"j.yaml": JOB.format(extra=""), "steps/start.sh": START.format(then="")})
    result = cli("apply", "--auto-approve")
    pids = _left_pids(root)
    try:
        assert result.code == 0, result.err
        assert len(pids) == 2
        assert not [pid for pid in pids if _alive(pid)]
        assert "the job left 2 processes running after its command ended" in result.out
    finally:
        _stop(pids)


def test_a_timeout_ends_the_job_and_what_it_left(project: Callable[[Files], Path],
                                                 cli: Callable[..., Result]) -> None:
    root = project({"j.yaml": JOB.format(extra="timeout: 1s"),
                    "steps/start.sh": START.format(then="sleep 60")})
    result = cli("apply", "--auto-approve")
    pids = _left_pids(root)
    try:
        assert result.code == 1 and "timed out after 1s" in result.err, result.err
        assert len(pids) == 2 and not [pid for pid in pids if _alive(pid)]
        assert " failed " in cli("runs", "list").out
    finally:
        _stop(pids)


def _apply_in_background(root: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([MLINFRA, "apply", "--auto-approve"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not path.exists() or not path.read_text().strip():
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_stops_a_job_that_ignores_sigterm(project: Callable[[Files], Path],
                                                  presses: int) -> None:
    """One Ctrl-C: SIGTERM, then SIGKILL after the grace period. Two: SIGKILL now."""
    stubborn = "trap '' TERM\n" + START.format(then="while true; do sleep 0.1; done")
    root = project({"j.yaml": JOB.format(extra=""), "steps/start.sh": stubborn})
    proc = _apply_in_background(root)
    runs = root / ".mlinfra" / "dev" / "workspaces" / "ws" / "runs"
    pids: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while len(_left_pids(root)) < 2 or not list(runs.rglob("o.txt")):
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        pids = _left_pids(root)
        for _ in range(presses):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 130, out
        assert "Traceback" not in out
        assert ("Interrupted twice" in out) == (presses == 2), out
        assert not [pid for pid in pids if _alive(pid)]
        listed = subprocess.run([MLINFRA, "runs", "list"], cwd=root,
                                capture_output=True, text=True, check=True).stdout
        assert [line.split()[2] for line in listed.splitlines()[1:]] == ["canceled"], listed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _stop(pids)


def test_the_processes_of_a_run_are_found_by_its_id(tmp_path: Path) -> None:
    env = {**os.environ, "MLINFRA_RUN_ID": "probe-1234"}
    child = subprocess.Popen(["sleep", "30"], env=env, start_new_session=True)
    try:
        assert run_processes("probe-1234") == [child.pid]
        assert run_processes("probe-12") == []
    finally:
        child.kill()
        child.wait()


def _orphans(root: Path) -> tuple[str, str]:
    """A pipeline run and its step's run left `running` by an mlinfra killed with -9."""
    from mlinfra.runs.store import Run, RunStore
    from mlinfra.state.sqlite import SqliteStore
    from mlinfra.state.store import HOST

    gone = subprocess.Popen(["true"])
    gone.wait()
    store = SqliteStore(root / ".mlinfra" / "dev" / "state.db")
    try:
        runs = RunStore(store)
        runs.save(Run(id="p-1", job="p", experiment="p", run_hash="h", status="running",
                      host=HOST, owner_pid=gone.pid, owner_started=1.0))
        runs.save(Run(id="step-1", job="bg", experiment="bg", run_hash="h2",
                      status="running", host=HOST, pid=gone.pid, pid_started=1.0,
                      owner_pid=gone.pid, owner_started=1.0, parent="p-1", step="s",
                      pipeline="p"))
    finally:
        store.close()
    return "p-1", "step-1"


def _statuses(cli: Callable[..., Result]) -> dict[str, str]:
    lines = cli("runs", "list").out.splitlines()[1:]
    return {line.split()[0]: next(w for w in line.split() if w in (
        "running", "canceled", "completed", "failed", "queued")) for line in lines}


def test_an_apply_records_the_runs_a_killed_mlinfra_left(project: Callable[[Files], Path],
                                                        cli: Callable[..., Result]) -> None:
    root = project({"j.yaml": JOB.format(extra=""), "steps/start.sh": "echo x > $1\n"})
    assert cli("apply", "--auto-approve").code == 0
    parent, step = _orphans(root)
    assert cli("plan", "--detailed-exitcode").code == 0  # nothing else to apply
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    statuses = _statuses(cli)
    assert (statuses[parent], statuses[step]) == ("canceled", "canceled"), statuses


def test_canceling_an_orphaned_step_cancels_its_pipeline_run(
        project: Callable[[Files], Path], cli: Callable[..., Result]) -> None:
    root = project({"j.yaml": JOB.format(extra=""), "steps/start.sh": "echo x > $1\n"})
    assert cli("apply", "--auto-approve").code == 0
    parent, step = _orphans(root)
    canceled = cli("runs", "cancel", step)
    assert canceled.code == 0, canceled.err
    assert f"Also canceled: {parent}" in canceled.out
    statuses = _statuses(cli)
    assert (statuses[parent], statuses[step]) == ("canceled", "canceled"), statuses

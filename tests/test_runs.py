"""Runs keep their promises: a run is reused only while its outputs exist, it records
what it read (stored, read-only, verified copies), its outputs stay in its folder, and
a job whose process outlived a killed mlinfra is found and stopped."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from mlinfra.registry.artifacts import ArtifactCorrupted, ArtifactStore
from mlinfra.runs.execute import JobSpec, RunFailed, execute
from mlinfra.runs.processes import started_at
from mlinfra.runs.store import Run, RunStore
from mlinfra.state.sqlite import HOST, SqliteStore
from tests.conftest import Files, Result, onnx_model
from tests.test_training import DATA, MLINFRA, PIPELINE, PROJECT, STEP, TRAIN

WORKSPACE = Path(".mlinfra") / "dev" / "workspaces" / "ws"


def blobs(root: Path) -> list[Path]:
    return sorted(p for p in (root / WORKSPACE / "artifacts" / "blobs").rglob("*")
                  if p.is_file())


def output_of(cli: Callable[..., Result], address: str) -> dict[str, object]:
    return dict(json.loads(cli("output", address, "--json").out)[address])


def ran(result: Result) -> list[str]:
    return [line.split(": ")[1] for line in result.out.splitlines() if ": ran " in line]


# --- a run whose outputs are gone is not reused -------------------------------

def test_a_run_whose_output_blob_is_gone_runs_again(project: Callable[[Files], Path],
                                                    cli: Callable[..., Result]) -> None:
    root = project({"p.yaml": PIPELINE.split("---\nkind: Job\nname: b")[0],
                    "steps/step.py": STEP})
    assert ran(cli("apply", "--auto-approve")) == ["ran a"]
    sha = output_of(cli, "job.a")["outputs"]["out"]  # type: ignore[index]
    for blob in blobs(root):
        if blob.name == sha:
            blob.unlink()
    plan = cli("plan", "--detailed-exitcode")
    assert plan.code == 2 and "missing from the artifact store" in plan.out
    again = cli("apply", "--auto-approve")
    assert again.code == 0, again.err
    assert ran(again) == ["ran a"]  # the job ran again rather than adopting the old run
    assert cli("plan", "--detailed-exitcode").code == 0


def test_apply_converges_after_the_artifact_store_is_deleted(
        project: Callable[[Files], Path], cli: Callable[..., Result]) -> None:
    root = project({"p.yaml": PIPELINE, "steps/step.py": STEP})
    assert ran(cli("apply", "--auto-approve")) == ["ran a", "ran b", "ran cone"]
    shutil.rmtree(root / WORKSPACE / "artifacts")
    again = cli("apply", "--auto-approve")
    assert again.code == 0, again.err
    # every step runs again: nothing is adopted from runs whose outputs are gone
    assert ran(again) == ["ran a", "ran b", "ran cone"]
    assert cli("plan", "--detailed-exitcode").code == 0


def test_destroying_the_artifact_store_of_a_trained_model_converges(
        project: Callable[[Files], Path], cli: Callable[..., Result]) -> None:
    """The job, the model registered from its output and the data all come back."""
    root = project({"training.yaml": PROJECT, "train/train.py": TRAIN,
                    "train/template.onnx": onnx_model(), "data/transactions.csv": DATA,
                    "data/holdout.csv": DATA})
    assert cli("apply", "--auto-approve").code == 0
    shutil.rmtree(root / WORKSPACE / "artifacts")
    again = cli("apply", "--auto-approve")
    assert again.code == 0, again.err
    assert "trained on 4 rows" in again.out
    assert "model.fraud: is already version 1" in again.out
    assert cli("plan", "--detailed-exitcode").code == 0
    shown = json.loads(cli("models", "show", "fraud:1").out)
    assert ArtifactStore(root / WORKSPACE / "artifacts").intact(shown["sha256"])


def test_a_damaged_output_is_not_reused_either(project: Callable[[Files], Path],
                                              cli: Callable[..., Result]) -> None:
    root = project({"p.yaml": PIPELINE, "steps/step.py": STEP})
    assert cli("apply", "--auto-approve").code == 0
    first = output_of(cli, "pipeline.abc")["steps"]["first"]["outputs"]["out"]  # type: ignore[index]
    blob = next(b for b in blobs(root) if b.name == first)
    blob.chmod(0o644)
    blob.write_text("tampered\n")
    (root / "p.yaml").write_text(PIPELINE.replace("params: {tag: one}", "params: {tag: two}"))
    again = cli("apply", "--auto-approve")
    assert again.code == 0, again.err
    assert "pipeline.abc/first: reused" not in again.out
    assert "ran a" in ran(again) and "ran ctwo" in ran(again)


# --- a run records what it read ----------------------------------------------

def test_a_standalone_job_reads_another_jobs_output(project: Callable[[Files], Path],
                                                   cli: Callable[..., Result]) -> None:
    jobs = PIPELINE.split("---\nkind: Pipeline")[0]
    root = project({"p.yaml": jobs, "steps/step.py": STEP})
    first = cli("apply", "--auto-approve")
    assert first.code == 0, first.err
    assert ran(first) == ["ran a", "ran b", "ran cone"]
    c = json.loads(cli("runs", "show", str(output_of(cli, "job.c")["run_id"])).out)
    assert Path(c["run_dir"], "outputs", "c.txt").read_text() == "a\nb\ncone\n"
    b_run = output_of(cli, "job.b")["run_id"]
    assert c["inputs"] == {"src": f"job b output out (run {b_run})"}
    assert cli("plan", "--detailed-exitcode").code == 0
    (root / "steps" / "step.py").write_text(STEP + "# changed\n")
    plan = cli("plan")
    assert all(f"# job.{name} will run" in plan.out for name in "abc")
    assert ran(cli("apply", "--auto-approve")) == ["ran a", "ran b", "ran cone"]
    (root / "p.yaml").write_text(jobs.replace("params: {tag: one}", "params: {tag: two}"))
    assert ran(cli("apply", "--auto-approve")) == ["ran ctwo"]  # a and b are reused


TRAIN_ROWS = """\
import sys
rows = open(sys.argv[1]).read().strip().splitlines()[1:]
open(sys.argv[2], "w").write(str(len(rows)))
print(f"trained on {len(rows)} rows")
"""
TRAIN_JOB = """\
kind: Data
name: transactions
path: transactions.csv
---
kind: Job
name: train
code: ./train
command: python train.py ${inputs.data} ${outputs.n} ${params.C}
inputs: {data: transactions}
params: {C: 1}
outputs: {n: n.txt}
"""


def test_input_copies_are_read_only_and_verified(project: Callable[[Files], Path],
                                                 cli: Callable[..., Result]) -> None:
    root = project({"t.yaml": TRAIN_JOB, "train/train.py": TRAIN_ROWS,
                    "data/transactions.csv": DATA})
    assert "trained on 4 rows" in cli("apply", "--auto-approve").out
    copy = next((root / WORKSPACE / "runs" / "inputs").rglob("transactions.csv"))
    assert stat.S_IMODE(copy.stat().st_mode) == 0o444
    copy.chmod(0o644)
    with copy.open("a") as f:
        f.write("9,9,1\n9,9,1\n")
    (root / "t.yaml").write_text(TRAIN_JOB.replace("{C: 1}", "{C: 2}"))
    again = cli("apply", "--auto-approve")
    assert again.code == 0, again.err
    assert "trained on 4 rows" in again.out  # the stored content, not the edited copy
    assert "copied again from the store" in again.out
    shown = json.loads(cli("runs", "show", str(output_of(cli, "job.train")["run_id"])).out)
    assert shown["inputs"] == {"data": "transactions:1"}
    assert stat.S_IMODE(copy.stat().st_mode) == 0o444


WAIT_THEN_TRAIN = TRAIN_JOB + """\
---
kind: Job
name: wait
code: ./train
command: python wait.py ${outputs.done}
outputs: {done: done.txt}
---
kind: Pipeline
name: p
steps:
  wait: {job: wait}
  train: {job: train, inputs: {data: transactions, after: "${steps.wait.outputs.done}"}}
"""
WAIT = """\
import sys, time
print("waiting", flush=True)
time.sleep(2)
open(sys.argv[1], "w").write("done")
"""


def test_data_changed_after_the_plan_is_never_run_under_the_plans_hash(
        project: Callable[[Files], Path], cli: Callable[..., Result]) -> None:
    root = project({"t.yaml": WAIT_THEN_TRAIN, "train/train.py": TRAIN_ROWS,
                    "train/wait.py": WAIT, "data/transactions.csv": DATA})
    proc = subprocess.Popen([MLINFRA, "apply", "--auto-approve"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.endswith("/wait: waiting\n"):
            break
    # the data was checked and registered; the step that reads it has not started
    (root / "data" / "transactions.csv").write_text(DATA + "7,7,0\n")
    out = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(timeout=60) == 1, out
    assert "changed since the plan: plan again" in out
    assert "trained on" not in out
    listed = cli("runs", "list").out
    assert not any(" train " in line and " completed " in line for line in listed.splitlines())
    again = cli("apply", "--auto-approve")
    assert again.code == 0, again.err
    assert "trained on 5 rows" in again.out
    run = json.loads(cli("runs", "show", str(
        output_of(cli, "pipeline.p")["steps"]["train"]["run_id"])).out)  # type: ignore[index]
    assert run["inputs"]["data"] == "transactions:2"


@pytest.mark.parametrize("output", ["../../escaped.txt", "/var/mlinfra-escaped.txt", "."])
def test_outputs_cannot_leave_the_run_folder(project: Callable[[Files], Path],
                                             cli: Callable[..., Result], output: str) -> None:
    project({"j.yaml": f"kind: Job\nname: j\ncommand: echo hi > ${{outputs.m}}\n"
                       f"outputs: {{m: {json.dumps(output)}}}\n"})
    result = cli("validate")
    assert result.code == 1
    assert (f"job/j: outputs.m: '{output}' must be a path inside the run's outputs folder"
            in result.err)


def test_a_run_refuses_outputs_outside_its_folder(tmp_path: Path) -> None:
    """The same refusal at run time, for a spec that did not come through validate."""
    store = SqliteStore(tmp_path / "state.db")
    (tmp_path / "code").mkdir()
    escaped = tmp_path / "escaped.txt"
    spec = JobSpec(job="j", experiment="j", command="echo hi > ${outputs.m}",
                   code=tmp_path / "code", root=tmp_path, run_hash="h", inputs={},
                   input_versions={}, params={}, outputs={"m": "../../../escaped.txt"})
    try:
        with pytest.raises(RunFailed, match=r"output m \(../../../escaped.txt\) is outside "
                                            "the run's folder"):
            execute(spec, RunStore(store), ArtifactStore(tmp_path / "artifacts"),
                    tmp_path / "runs")
        assert not escaped.exists()
        assert [r.status for r in RunStore(store).recent()] == ["failed"]
    finally:
        store.close()


def _put_manifest(store: ArtifactStore, manifest: dict[str, str]) -> str:
    """A folder manifest written as the store writes one, whatever it lists."""
    data = json.dumps({"manifest": manifest}, sort_keys=True).encode()
    sha = hashlib.sha256(b"mlinfra folder\n" + data).hexdigest()
    blob = store.root / "trees" / sha[:2] / sha
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(data)
    return sha


@pytest.mark.parametrize("rel", ["../../outside.txt", "{tmp}/outside.txt",
                                 "a/../../outside.txt"])
def test_a_crafted_manifest_cannot_write_outside_its_target(tmp_path: Path, rel: str) -> None:
    rel = rel.format(tmp=tmp_path)
    store = ArtifactStore(tmp_path / "artifacts")
    (tmp_path / "payload.txt").write_text("payload")
    payload = store.put(tmp_path / "payload.txt")
    sha = _put_manifest(store, {"ok.txt": payload, rel: payload})
    target = tmp_path / "deep" / "er" / "copy"
    with pytest.raises(ArtifactCorrupted, match="outside its folder"):
        store.materialize(sha, target)
    assert not (tmp_path / "outside.txt").exists()
    assert not store.intact(sha)
    good = _put_manifest(store, {"ok.txt": payload, "sub/ok.txt": payload})
    assert store.materialize(good, tmp_path / "good") == tmp_path / "good"
    assert (tmp_path / "good" / "sub" / "ok.txt").read_text() == "payload"
    assert store.intact(good) and store.is_copy(good, tmp_path / "good")


# --- orphans ------------------------------------------------------------------

# The first run takes the hold file and waits (until it is stopped); a later run ends.
SLEEPER = """\
import os, sys, time
print("started", flush=True)
if os.path.exists(sys.argv[3]):
    os.remove(sys.argv[3])
    open(sys.argv[2], "w").write(str(os.getpid()))
    time.sleep(120)
open(sys.argv[1], "w").write("done")
"""


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture
def orphaned(project: Callable[[Files], Path], tmp_path: Path
             ) -> Callable[[], int]:
    """A project (the current folder) whose `mlinfra apply` was killed -9 while its job
    ran; returns the job's pid, still running."""
    def make() -> int:
        pid_file, hold = tmp_path / "job.pid", tmp_path / "hold"
        root = project({"j.yaml": f"kind: Job\nname: slow\ncode: ./job\ncommand: python "
                                  f"sleeper.py ${{outputs.out}} {pid_file} {hold}\n"
                                  "outputs: {out: out.txt}\n",
                        "job/sleeper.py": SLEEPER})
        hold.write_text("")
        proc = subprocess.Popen([MLINFRA, "apply", "--auto-approve"], cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("job.slow: started"):
                break
        while not pid_file.exists():
            time.sleep(0.05)
        proc.kill()
        proc.wait(timeout=10)
        proc.stdout.close()
        job = int(pid_file.read_text())
        assert alive(job)  # a job runs in its own session: it outlives mlinfra
        return job

    return make


def test_the_next_apply_stops_an_orphaned_job_and_runs_it_once(
        orphaned: Callable[[], int], cli: Callable[..., Result]) -> None:
    job = orphaned()
    try:
        listed = cli("runs", "list").out.splitlines()[1:]
        assert len(listed) == 1 and " running " in listed[0]
        orphan = listed[0].split()[0]
        again = cli("apply", "--auto-approve")
        assert again.code == 0, again.err
        assert not alive(job)
        assert f"run {orphan} of job slow: orphaned: mlinfra (pid" in again.out
        assert again.out.count("job.slow: started") == 1
        runs = cli("runs", "list").out.splitlines()[1:]
        assert sorted(line.split()[2] for line in runs) == ["canceled", "completed"]
        shown = json.loads(cli("runs", "show", orphan).out)
        assert shown["status"] == "canceled"
        assert shown["error"].startswith("orphaned: mlinfra (pid ")
        assert shown["error"].endswith(") was killed")
        assert cli("plan", "--detailed-exitcode").code == 0
    finally:
        if alive(job):
            os.kill(job, 9)


def test_runs_cancel_stops_an_orphaned_run(orphaned: Callable[[], int],
                                           cli: Callable[..., Result]) -> None:
    job = orphaned()
    try:
        orphan = cli("runs", "list").out.splitlines()[1].split()[0]
        canceled = cli("runs", "cancel", orphan)
        assert canceled.code == 0, canceled.err
        assert "its process was stopped" in canceled.out
        assert not alive(job)
        assert json.loads(cli("runs", "show", orphan).out)["status"] == "canceled"
        again = cli("runs", "cancel", orphan)
        assert again.code == 1 and "is canceled; only a queued or running run" in again.err
        applied = cli("apply", "--auto-approve")
        assert applied.code == 0, applied.err
        assert applied.out.count("job.slow: started") == 1
    finally:
        if alive(job):
            os.kill(job, 9)


def test_a_reused_pid_is_never_signalled(project: Callable[[Files], Path],
                                        cli: Callable[..., Result]) -> None:
    """A run whose pid now names another process (pid reuse): cancel and the orphan sweep
    leave that process alone, and cancel still ends the run."""
    root = project({})
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        session = SqliteStore(root / ".mlinfra" / "dev" / "state.db")
        runs = RunStore(session)
        started = started_at(stranger.pid)
        assert started is not None
        for run_id in ("old-1", "old-2"):
            runs.save(Run(id=run_id, job="j", experiment="j", run_hash="h", status="running",
                          pid=stranger.pid, pid_started=started - 100.0, host=HOST,
                          owner_pid=stranger.pid, owner_started=started - 100.0))
        session.close()
        canceled = cli("runs", "cancel", "old-1")
        assert canceled.code == 0, canceled.err
        assert "its process had ended" in canceled.out
        assert stranger.poll() is None
        assert json.loads(cli("runs", "show", "old-1").out)["status"] == "canceled"
        assert cli("apply", "--auto-approve").code == 0  # every apply sweeps orphans
        assert json.loads(cli("runs", "show", "old-2").out)["status"] == "canceled"
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


OLD_RUNS_TABLE = """
CREATE TABLE runs (
  id TEXT PRIMARY KEY, job TEXT NOT NULL, experiment TEXT NOT NULL,
  pipeline TEXT, step TEXT, parent TEXT, run_hash TEXT NOT NULL, status TEXT NOT NULL,
  created_at REAL NOT NULL, started_at REAL, ended_at REAL, exit_code INTEGER,
  pid INTEGER, host TEXT, command TEXT NOT NULL DEFAULT '', params TEXT NOT NULL DEFAULT '{}',
  inputs TEXT NOT NULL DEFAULT '{}', outputs TEXT NOT NULL DEFAULT '{}',
  git TEXT NOT NULL DEFAULT '{}', environment TEXT NOT NULL DEFAULT '{}',
  run_dir TEXT NOT NULL DEFAULT '', error TEXT NOT NULL DEFAULT '',
  reused_from TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0);
INSERT INTO runs (id, job, experiment, run_hash, status, created_at, pid)
  VALUES ('before-1', 'j', 'j', 'h', 'completed', 1.0, 42);
"""


def test_a_state_made_before_the_process_columns_still_opens(
        project: Callable[[Files], Path], cli: Callable[..., Result]) -> None:
    root = project({})
    path = root / ".mlinfra" / "dev" / "state.db"
    SqliteStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.executescript("DROP TABLE runs;" + OLD_RUNS_TABLE  # and format 1's version
                           + "UPDATE meta SET value='1' WHERE key='format_version';")
    conn.close()
    before = path.read_bytes()
    listed = cli("runs", "list")  # read through an upgraded copy: the file is untouched
    assert listed.code == 0, listed.err
    assert "before-1" in listed.out
    assert path.read_bytes() == before
    store = SqliteStore(path)  # a write session upgrades the file
    try:
        runs = RunStore(store)
        old = runs.get("before-1")
        assert old is not None and old.pid == 42 and old.pid_started is None
        runs.save(Run(id="after-1", job="j", experiment="j", run_hash="h", pid=7,
                      pid_started=12.5, owner_pid=8, owner_started=11.0))
        columns = {row[1] for row in store.query("PRAGMA table_info(runs)")}
        assert {"pid_started", "owner_pid", "owner_started"} <= columns
        after = RunStore(store).get("after-1")
        assert after is not None and (after.pid_started, after.owner_pid) == (12.5, 8)
    finally:
        store.close()


def test_runs_cancel_explains_a_process_it_may_not_signal(
        project: Callable[[Files], Path], cli: Callable[..., Result],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cause of exit 70: os.killpg raised PermissionError (a process of another user,
    as a reused pid is) and nothing caught it. Now that is a message and exit 1."""
    root = project({})
    job = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        session = SqliteStore(root / ".mlinfra" / "dev" / "state.db")
        started = started_at(job.pid)
        assert started is not None
        RunStore(session).save(Run(id="theirs-1", job="j", experiment="j", run_hash="h",
                                   status="running", pid=job.pid, pid_started=started,
                                   host=HOST, owner_pid=job.pid, owner_started=started - 1))
        session.close()

        def refuse(pid: int, sig: int) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(os, "killpg", refuse)
        result = cli("runs", "cancel", "theirs-1")
        assert result.code == 1, result.err
        assert f"process {job.pid} belongs to another user" in result.err
        assert job.poll() is None
    finally:
        job.kill()
        job.wait()


FOLDER_JOBS = """\
kind: Job
name: make
code: ./steps
command: sh make.sh ${outputs.d}
outputs: {d: folder}
---
kind: Job
name: read
code: ./steps
command: cat ${inputs.d}/a.txt ${inputs.d}/sub/b.txt > ${outputs.out} && cat ${outputs.out}
inputs: {d: "${jobs.make.outputs.d}"}
outputs: {out: out.txt}
"""


def test_folder_outputs_are_copied_read_only_and_rebuilt_when_a_file_is_gone(
        project: Callable[[Files], Path], cli: Callable[..., Result]) -> None:
    root = project({"f.yaml": FOLDER_JOBS, "steps/make.sh": "mkdir -p $1/sub\n"
                    "echo one > $1/a.txt\necho two > $1/sub/b.txt\n"})
    first = cli("apply", "--auto-approve")
    assert first.code == 0, first.err
    assert "job.read: one" in first.out and "job.read: two" in first.out
    copy = next(p for p in (root / WORKSPACE / "runs" / "inputs").rglob("b.txt"))
    assert stat.S_IMODE(copy.stat().st_mode) == 0o444
    manifest = str(output_of(cli, "job.make")["outputs"]["d"])  # type: ignore[index]
    store = ArtifactStore(root / WORKSPACE / "artifacts")
    listed = json.loads(store.path(manifest).read_bytes())["manifest"]
    next(b for b in blobs(root) if b.name == listed["sub/b.txt"]).unlink()
    plan = cli("plan", "--detailed-exitcode")
    assert plan.code == 2 and "outputs d of run" in plan.out
    again = cli("apply", "--auto-approve")
    assert again.code == 0, again.err
    assert cli("plan", "--detailed-exitcode").code == 0
    assert store.intact(manifest)


def test_runs_cancel_of_a_run_its_apply_still_watches(project: Callable[[Files], Path],
                                                     cli: Callable[..., Result],
                                                     tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.write_text("")
    root = project({"j.yaml": f"kind: Job\nname: slow\ncode: ./job\ncommand: python "
                              f"sleeper.py ${{outputs.out}} {tmp_path / 'pid'} {hold}\n"
                              "outputs: {out: out.txt}\n",
                    "job/sleeper.py": SLEEPER})
    proc = subprocess.Popen([MLINFRA, "apply", "--auto-approve"], cwd=root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("job.slow: started"):
            break
    run_id = cli("runs", "list").out.splitlines()[1].split()[0]
    canceled = cli("runs", "cancel", run_id)
    assert canceled.code == 0 and canceled.out == f"Canceling run {run_id}.\n"
    out = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(timeout=30) == 1, out
    assert f"run {run_id} canceled" in out
    assert json.loads(cli("runs", "show", run_id).out)["status"] == "canceled"


MANIFEST_LOOKALIKE = """\
kind: Job
name: make
code: ./steps
command: sh make.sh ${outputs.o}
outputs: {o: out.json}
"""


def test_a_file_that_looks_like_a_folder_manifest_is_a_file(
        project: Callable[[Files], Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path / "artifacts")
    lookalike = tmp_path / "out.json"
    lookalike.write_text('{"manifest": {"../x": "y"}}')
    sha = store.put(lookalike)
    assert store.intact(sha) and store.present(sha)
    copy = store.materialize(sha, tmp_path / "copy.json")
    assert copy.read_text() == lookalike.read_text() and store.is_copy(sha, copy)
    root = project({"j.yaml": MANIFEST_LOOKALIKE,
                    "steps/make.sh": "printf '{\"manifest\": {\"../x\": \"y\"}}' > $1\n"})
    assert cli("apply", "--auto-approve").code == 0
    assert cli("plan", "--detailed-exitcode").code == 0  # not rerun on every apply
    out = output_of(cli, "job.make")["outputs"]
    stored = ArtifactStore(root / WORKSPACE / "artifacts")
    assert stored.intact(str(out["o"]))  # type: ignore[index]


COPY_JOB = """\
kind: Data
name: d
path: d.csv
---
kind: Job
name: copy
code: ./steps
command: sh copy.sh ${{inputs.d}} ${{outputs.o}}
inputs: {{d: d}}
params: {{n: {n}}}
outputs: {{o: o.txt}}
"""


def _rewrite_keeping_size_and_mtime(path: Path, content: str) -> None:
    """What `rsync -a`, `cp -p` or a restore do: other bytes, same size and mtime."""
    before = path.stat()
    assert len(content.encode()) == before.st_size
    path.write_text(content)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.fixture
def hashes_kept_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remember hashes of files written just now (tests write and plan within a second)."""
    monkeypatch.setattr("mlinfra.data.hashes._RACY_NS", 0)


@pytest.mark.usefixtures("hashes_kept_at_once")
def test_a_same_size_edit_that_keeps_the_mtime_is_seen(
        project: Callable[[Files], Path], cli: Callable[..., Result]) -> None:
    root = project({"j.yaml": COPY_JOB.format(n=1), "steps/copy.sh": "cat $1 > $2\n",
                    "data/d.csv": "a,b\n1,2\n"})
    assert cli("apply", "--auto-approve").code == 0
    assert cli("plan", "--detailed-exitcode").code == 0  # the hashes are remembered
    _rewrite_keeping_size_and_mtime(root / "data" / "d.csv", "a,b\n7,9\n")
    plan = cli("plan", "--detailed-exitcode")
    assert plan.code == 2 and "data.d will be updated" in plan.out, plan.out
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    run = json.loads(cli("runs", "show", str(output_of(cli, "job.copy")["run_id"])).out)
    assert Path(run["run_dir"], "outputs", "o.txt").read_text() == "a,b\n7,9\n"


@pytest.mark.usefixtures("hashes_kept_at_once")
def test_a_wrong_remembered_hash_is_refreshed_by_the_run_that_finds_it(
        project: Callable[[Files], Path], cli: Callable[..., Result]) -> None:
    from mlinfra import cache_dir

    root = project({"j.yaml": COPY_JOB.format(n=1), "steps/copy.sh": "cat $1 > $2\n",
                    "data/d.csv": "a,b\n1,2\n"})
    assert cli("apply", "--auto-approve").code == 0
    # This machine remembers hashes the files do not have (a file system that kept
    # every part of their identity through an edit): the data's and the code's.
    db = sqlite3.connect(cache_dir() / "file-hashes.db")
    db.execute("UPDATE file_hashes SET sha256=? WHERE path LIKE ?",
               ("0" * 64, f"{root.resolve()}/%"))
    db.commit()
    db.close()
    (root / "j.yaml").write_text(COPY_JOB.format(n=2))  # the job runs for another reason
    failed = cli("apply", "--auto-approve")
    assert failed.code == 1 and "changed since the plan" in failed.err, failed.err
    # Not forever: each file found wrong is read again by the next plan (the data's,
    # then the code's, which the job reaches only once its data was applied).
    tries = [cli("apply", "--auto-approve") for _ in range(2)]
    assert tries[-1].code == 0, [t.err for t in tries]
    assert cli("plan", "--detailed-exitcode").code == 0
    assert output_of(cli, "data.d")["version"] == 1  # none registered under a wrong hash


def test_a_process_is_known_after_the_system_clock_was_stepped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlinfra.runs.processes import is_running

    child = subprocess.Popen(["sleep", "30"])
    try:
        started = started_at(child.pid)
        stepped = psutil.Process.create_time
        # psutil >= 7.0.1 moves create_time with the clock (NTP stepped it an hour)
        monkeypatch.setattr(psutil.Process, "create_time",
                            lambda self: stepped(self) + 3600.0)
        assert is_running(child.pid, started)
        assert not is_running(child.pid, (started or 0.0) + 5.0)  # another process
    finally:
        child.kill()
        child.wait()
    assert not is_running(child.pid, started)

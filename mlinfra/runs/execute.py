"""Running one job: a process group in the run's folder, logs streamed and kept,
metrics read as they arrive, outputs collected into the artifact store."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from mlinfra.data.hashes import machine_hashes
from mlinfra.errors import MlinfraError
from mlinfra.registry.artifacts import ArtifactStore
from mlinfra.runs.containers import INPUTS_DIR, RUN_DIR, ContainerRun, Finished, Launcher, Mount
from mlinfra.runs.processes import end_run, signal_run, started_at, this_process
from mlinfra.runs.snapshot import CodeRefused, git_info, snapshot
from mlinfra.runs.store import Run, RunStore
from mlinfra.spec.model import INTERPOLATION
from mlinfra.spec.sensitive import shell_word
from mlinfra.state.store import HOST, fault_point

HELPER_DIR = Path(__file__).parent / "helper"
_KILL_GRACE_S = 5.0
_POLL_S = 0.05

# Processes of the runs under way in this process, so Ctrl-C can stop them all.
_RUNNING: dict[str, subprocess.Popen[bytes]] = {}
_RUNNING_LOCK = threading.Lock()
# Runs stopped by Ctrl-C: canceled, whatever signal ended them.
_CANCELED: set[str] = set()


class RunFailed(MlinfraError):
    def __init__(self, run: Run, message: str) -> None:
        super().__init__(message)
        self.run = run


@dataclass
class JobSpec:
    """What to run: everything already resolved to paths and values."""

    job: str
    experiment: str
    command: str
    code: Path
    root: Path
    run_hash: str
    inputs: dict[str, Path]
    input_versions: dict[str, str]
    params: dict[str, Any]
    outputs: dict[str, str]
    env: dict[str, str] = field(default_factory=dict)
    venv: Path | None = None
    timeout_s: float | None = None
    pipeline: str | None = None
    step: str | None = None
    parent: str | None = None
    code_digest: str | None = None  # what the run hash covers; the snapshot must match it
    secret_env: tuple[str, ...] = ()  # names in `env` whose values are sensitive
    # mlinfra's own variables the job's process does not inherit (the project's secrets)
    withheld: frozenset[str] = frozenset()


def new_run_id(job: str) -> str:
    return f"{job}-{os.urandom(4).hex()}"


def substitute(command: str, spec: JobSpec, out_dir: Path) -> str:
    """Fill ${inputs.X}, ${outputs.X} and ${params.X}, quoted for the shell. A secret
    (in the command or a param) becomes `"${MLINFRA_SECRET_X}"`: the shell expands it
    from the run's environment, and the command recorded holds no value."""

    def fill(match: Any) -> str:
        namespace, key = match.group(1), match.group(2)[1:]
        if namespace == "inputs" and key in spec.inputs:
            return shlex.quote(str(spec.inputs[key]))
        if namespace == "outputs" and key in spec.outputs:
            return shlex.quote(str(out_dir / spec.outputs[key]))
        if namespace == "params" and key in spec.params:
            return shell_word(str(spec.params[key]))
        if namespace in ("secret", "var"):
            return shell_word(str(match.group(0)))
        return str(match.group(0))

    return INTERPOLATION.sub(fill, command)


def cancel_all(force: bool = False, grace_s: float = _KILL_GRACE_S) -> None:
    """Stop every run under way in this process (Ctrl-C): SIGTERM to each run's
    processes, then SIGKILL to those still there after `grace_s`; with `force` (a
    second Ctrl-C), SIGKILL now."""
    with _RUNNING_LOCK:
        running = list(_RUNNING.items())
        _CANCELED.update(run_id for run_id, _ in running)
    for run_id, proc in running:
        signal_run(run_id, proc.pid, signal.SIGKILL if force else signal.SIGTERM)
    if force or not running:
        return

    def kill_the_rest() -> None:
        with _RUNNING_LOCK:
            still = [(r, p) for r, p in running if _RUNNING.get(r) is p]
        for run_id, proc in still:
            signal_run(run_id, proc.pid, signal.SIGKILL)

    timer = threading.Timer(grace_s, kill_the_rest)
    timer.daemon = True
    timer.start()


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _pump(stream: IO[bytes], log: IO[bytes], on_line: Callable[[str], None]) -> None:
    for raw in iter(stream.readline, b""):
        log.write(raw)
        log.flush()
        on_line(raw.decode("utf-8", "replace").rstrip("\n"))


class MetricsReader:
    """Reads metrics.jsonl from where it stopped; a bad line is reported, not fatal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.problems: list[str] = []

    def read(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        records = []
        for line in data[:end].splitlines():
            try:
                record = json.loads(line)
                if record.get("type") == "metric" and not isinstance(record.get("value"),
                                                                     int | float):
                    raise ValueError("not a number")
                records.append(record)
            except (ValueError, AttributeError) as err:
                self.problems.append(f"ignored a metrics line ({err}): {line[:80]!r}")
        return records


def execute(spec: JobSpec, runs: RunStore, artifacts: ArtifactStore, runs_root: Path,
            on_line: Callable[[str], None] = lambda _: None,
            launcher: Launcher | None = None) -> Run:
    """Run the job to its end: as a process here, or in the container `launcher`
    starts; returns the completed run or raises RunFailed. Either way the run is
    recorded, its code snapshotted and its outputs collected the same way."""
    run = Run(id=new_run_id(spec.job), job=spec.job, experiment=spec.experiment,
              run_hash=spec.run_hash, pipeline=spec.pipeline, step=spec.step,
              parent=spec.parent, params=dict(spec.params), inputs=dict(spec.input_versions),
              environment={"venv": str(spec.venv) if spec.venv else None}, host=HOST)
    run.owner_pid, run.owner_started = this_process()
    run_dir = runs_root / run.id
    work, out_dir = run_dir / "code", run_dir / "outputs"
    out_dir.mkdir(parents=True)
    run.run_dir = str(run_dir)
    runs.save(run)
    escaping = [f"{name} ({file})" for name, file in spec.outputs.items()
                if not _inside(out_dir / file, out_dir)]
    refused = f"output {', '.join(escaping)} is outside the run's folder" if escaping else ""
    try:
        if not refused:
            copied = snapshot(spec.code, spec.root, work, run_dir / "snapshot.zip")
            if spec.code_digest is not None and copied != spec.code_digest:
                machine_hashes().forget(spec.code)  # the next plan reads it again
                refused = "its code changed since the plan: plan again"
    except CodeRefused as err:
        refused = err.message
    if refused:
        run.status, run.error, run.ended_at = "failed", refused, time.time()
        runs.save(run)
        raise RunFailed(run, f"run {run.id} failed: {refused}")
    run.git = git_info(spec.root)
    reader = MetricsReader(run_dir / "metrics.jsonl")
    timed_out, launch_error = False, ""
    try:
        if launcher is None:
            timed_out = _in_process(run, spec, runs, reader, on_line)
        else:
            finished = _in_container(run, spec, runs, reader, on_line, launcher)
            timed_out, launch_error = finished.timed_out, finished.error
    finally:
        run.ended_at = time.time()
        runs.add_metrics(run.id, reader.read())
        _finish(run, spec, runs, artifacts, out_dir, timed_out, reader, launch_error)
    if run.status != "completed":
        raise RunFailed(run, f"run {run.id} {run.status}: {run.error}\n"
                        + log_tail(run_dir / "output.log"))
    return run


def _in_process(run: Run, spec: JobSpec, runs: RunStore, reader: MetricsReader,
                on_line: Callable[[str], None]) -> bool:
    """The run as a process group on this machine, in its code snapshot; returns
    whether it ran out of time."""
    run_dir = Path(run.run_dir or "")
    run.command = substitute(spec.command, spec, run_dir / "outputs")
    inherited = {k: v for k, v in os.environ.items()
                 if k not in spec.withheld and not k.startswith("MLINFRA_TEST_")}
    env = {**inherited, **spec.env, "MLINFRA_RUN_ID": run.id, "MLINFRA_RUN_DIR": str(run_dir),
           "PYTHONPATH": os.pathsep.join(p for p in (str(HELPER_DIR),
                                                     os.environ.get("PYTHONPATH")) if p)}
    if spec.venv is not None:
        env["VIRTUAL_ENV"] = str(spec.venv)
        env["PATH"] = f"{spec.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.pop("PYTHONHOME", None)
    with open(run_dir / "output.log", "wb") as log:
        run.started_at = time.time()
        proc = subprocess.Popen(["/bin/sh", "-c", run.command], cwd=run_dir / "code", env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        with _RUNNING_LOCK:
            _RUNNING[run.id] = proc
        fault_point("popen")
        run.status, run.pid, run.pid_started = "running", proc.pid, started_at(proc.pid)
        runs.save(run)
        assert proc.stdout is not None
        pump = threading.Thread(target=_pump, args=(proc.stdout, log, on_line), daemon=True)
        pump.start()
        timed_out = False
        began = time.monotonic()
        try:
            while proc.poll() is None:
                if spec.timeout_s is not None and time.monotonic() - began > spec.timeout_s:
                    timed_out = True
                    _stop(proc)
                    break
                records = reader.read()
                if records:
                    runs.add_metrics(run.id, records)
                time.sleep(_POLL_S)
        except KeyboardInterrupt:
            _stop(proc)
            raise
        finally:
            proc.wait()
            # The job ends with its command: what it left running (a background child in
            # its process group, a daemon that left it) is stopped, so a timeout holds
            # and nothing keeps the log's pipe open.
            left = end_run(run.id, proc.pid, _KILL_GRACE_S)
            with _RUNNING_LOCK:
                _RUNNING.pop(run.id, None)
            pump.join(timeout=5)
            proc.stdout.close()
            run.exit_code = proc.returncode
            if left:
                note = (f"mlinfra: the job left {left} process{'es' if left > 1 else ''} "
                        "running after its command ended; stopped")
                log.write(f"{note}\n".encode())
                on_line(note)
    return timed_out


def _in_container(run: Run, spec: JobSpec, runs: RunStore, reader: MetricsReader,
                  on_line: Callable[[str], None], launcher: Launcher) -> Finished:
    """The run in a container that `launcher` starts and waits for: its folder, code
    snapshot, helper and inputs mounted (see runs.containers), the command filled in
    with the container's paths. Metrics are read as they arrive; the log once it ends."""
    run_dir = Path(run.run_dir or "").resolve()
    shutil.copytree(HELPER_DIR, run_dir / "helper",
                    ignore=shutil.ignore_patterns("__pycache__"))
    mounts = [Mount(run_dir, RUN_DIR, read_only=False),
              Mount(run_dir / "code", f"{RUN_DIR}/code", read_only=True),
              Mount(run_dir / "helper", f"{RUN_DIR}/helper", read_only=True)]
    inputs: dict[str, Path] = {}
    for name, path in spec.inputs.items():
        inputs[name] = Path(INPUTS_DIR) / name / path.name
        mounts.append(Mount(path.resolve(), str(inputs[name]), read_only=True))
    run.command = substitute(spec.command, dataclasses.replace(spec, inputs=inputs),
                             Path(RUN_DIR) / "outputs")
    env = {**spec.env, "MLINFRA_RUN_ID": run.id, "MLINFRA_RUN_DIR": RUN_DIR,
           "PYTHONPATH": f"{RUN_DIR}/helper", "PYTHONUNBUFFERED": "1"}
    container = ContainerRun(run.id, spec.job, run.command, env, spec.secret_env, mounts,
                             f"{RUN_DIR}/code", spec.timeout_s, run_dir)
    run.started_at, run.status = time.time(), "running"
    runs.save(run)
    ended: list[Finished] = []
    failure: list[BaseException] = []

    def wait() -> None:
        try:
            ended.append(launcher(container))
        except BaseException as err:  # re-raised below, in the run's own thread
            failure.append(err)

    waiter = threading.Thread(target=wait, name=f"mlinfra-run-{run.id}", daemon=True)
    waiter.start()
    while waiter.is_alive():
        records = reader.read()
        if records:
            runs.add_metrics(run.id, records)
        waiter.join(timeout=_POLL_S)
    if failure:
        raise failure[0]
    finished = ended[0]
    (run_dir / "output.log").write_text(finished.logs)
    for line in finished.logs.splitlines():
        on_line(line)
    run.exit_code = finished.exit_code
    if finished.where:
        run.environment = {**run.environment, "container": finished.where}
    return finished


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` stays in `folder` once `..` and links are resolved."""
    real, top = path.resolve(), folder.resolve()
    return real != top and top in real.parents


def _stop(proc: subprocess.Popen[bytes]) -> None:
    _kill_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=_KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        _kill_group(proc, signal.SIGKILL)


def _finish(run: Run, spec: JobSpec, runs: RunStore, artifacts: ArtifactStore, out_dir: Path,
            timed_out: bool, reader: MetricsReader, launch_error: str = "") -> None:
    stored = runs.get(run.id)
    with _RUNNING_LOCK:
        interrupted = run.id in _CANCELED
        _CANCELED.discard(run.id)
    canceled = interrupted or (stored is not None and stored.cancel_requested)
    if timed_out:
        run.status, run.error = "failed", f"timed out after {spec.timeout_s:g}s"
    elif canceled or (run.exit_code is not None and run.exit_code < 0 and
                      -run.exit_code in (signal.SIGINT, signal.SIGTERM)):
        run.status, run.error = "canceled", "canceled"
    elif launch_error:
        run.status, run.error = "failed", launch_error
    elif run.exit_code != 0:
        run.status, run.error = "failed", f"the command exited with code {run.exit_code}"
    else:
        missing = [f"{name} ({file})" for name, file in spec.outputs.items()
                   if not (out_dir / file).exists()]
        if missing:
            run.status = "failed"
            run.error = f"the command did not write its declared output {', '.join(missing)}"
        else:
            run.outputs = {name: artifacts.put(out_dir / file)
                           for name, file in spec.outputs.items()}
            run.status = "completed"
    if reader.problems:
        run.error = "; ".join(filter(None, [run.error, *reader.problems[:3]]))
    runs.save(run)


def log_tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    tail = text.rstrip("\n").splitlines()[-lines:]
    return "\n".join(f"  | {line}" for line in tail)

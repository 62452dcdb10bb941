"""A run's process, known by its pid and its start time, and the runs left behind by a
mlinfra that died.

A pid alone names a process only while it lives: the system gives it to another
process later. Every run records its process' start time (psutil's create_time) beside
its pid, and the pid and start time of the mlinfra that owns it; a process is signalled
only while both match. A job runs in its own session, so it outlives a killed mlinfra:
such a run is an orphan, found by the next apply (or `mlinfra runs cancel`), stopped
and marked canceled.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

from mlinfra.errors import MlinfraError
from mlinfra.runs.store import Run, RunStore
from mlinfra.state.store import on_this_machine

# create_time is derived from the boot time and the start tick: equal for one process.
_SAME_START_S = 0.01
_POLL_S = 0.05
STOP_GRACE_S = 5.0


class ProcessNotStopped(MlinfraError):
    """A run's process could not be stopped (it belongs to another user, or outlived
    SIGKILL)."""


def started_at(pid: int) -> float | None:
    """When process `pid` started, or None when there is no such process."""
    # NOTE: psutil is imported where used: planning a job never needs it.
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def this_process() -> tuple[int, float | None]:
    """This mlinfra's pid and start time, as a run records its owner."""
    pid = os.getpid()
    return pid, started_at(pid)


def is_running(pid: int | None, started: float | None) -> bool:
    """Whether the process `pid` that started at `started` still runs (a zombie does
    not). Without a start time the pid cannot be told from a reused one: False."""
    if not pid or started is None:
        return False
    import psutil

    try:
        process = psutil.Process(pid)
        return (abs(process.create_time() - started) < _SAME_START_S
                and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def stop(pid: int | None, started: float | None, grace_s: float = STOP_GRACE_S) -> bool:
    """Stop the process group that process `pid` leads (a job runs in its own session),
    if that process is still the one that started at `started`: SIGTERM, then SIGKILL
    after `grace_s`. Returns whether it was running."""
    if not is_running(pid, started):
        return False
    assert pid is not None
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while is_running(pid, started) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    if is_running(pid, started):
        _signal_group(pid, signal.SIGKILL)
        deadline = time.monotonic() + grace_s
        while is_running(pid, started) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
        if is_running(pid, started):
            raise ProcessNotStopped(f"process {pid} is still running after SIGKILL; mlinfra "
                                    "starts nothing beside it")
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass  # it ended meanwhile
    except PermissionError:
        raise ProcessNotStopped(f"process {pid} belongs to another user: mlinfra cannot "
                                f"signal it; stop it as that user (kill -TERM -{pid})"
                                ) from None


def owner_alive(run: Run) -> bool:
    """Whether the mlinfra that runs `run` still runs. A run recorded before owners were
    recorded counts as owned while its own process still exists."""
    if run.owner_pid is None:
        return run.pid is not None and started_at(run.pid) is not None
    return is_running(run.owner_pid, run.owner_started)


def orphans(runs: RunStore) -> list[Run]:
    """Runs of this host marked queued or running whose mlinfra is gone."""
    return [run for run in runs.unfinished() if (run.host is None or on_this_machine(run.host))
            and not owner_alive(run)]


def orphan_error(run: Run) -> str:
    return f"orphaned: mlinfra (pid {run.owner_pid or '?'}) was killed"


def marked(run_id: str) -> list[tuple[int, float | None]]:
    """The process groups (leader pid, its start time) whose processes carry the run's
    mark in their environment (MLINFRA_RUN_ID): how a run's process is found when
    mlinfra was killed after starting it but before recording its pid."""
    import psutil

    mark = f"MLINFRA_RUN_ID={run_id}\0".encode()
    groups: set[int] = set()
    for process in psutil.process_iter():
        try:
            with open(f"/proc/{process.pid}/environ", "rb") as f:
                if mark in f.read() + b"\0":
                    groups.add(os.getpgid(process.pid))
        except (OSError, psutil.Error):
            continue
    return [(group, started_at(group)) for group in sorted(groups)]


def stop_orphans(runs: RunStore, log: Callable[[str], None] = lambda _: None) -> list[Run]:
    """Stop the processes of orphaned runs and mark the runs canceled, so that a job is
    never run a second time beside its first run still under way. A run recorded
    before its process started (a pending run) has no pid yet: its processes are found
    by the mark in their environment."""
    stopped = []
    for run in orphans(runs):
        was_running = stop(run.pid, run.pid_started)
        if run.pid is None:
            for pid, started in marked(run.id):
                was_running = stop(pid, started) or was_running
        if runs.end_unfinished(run.id, "canceled", orphan_error(run)):
            log(f"run {run.id} of job {run.job}: {orphan_error(run)}; "
                + ("its process was stopped" if was_running else "its process had ended"))
            stopped.append(run)
    return stopped


def cancel(runs: RunStore, run: Run) -> str:
    """Cancel a queued or running run; returns what was done, for a person. The mlinfra
    running it ends it and records it; an orphan is stopped and recorded here."""
    if run.host is not None and not on_this_machine(run.host):
        runs.request_cancel(run.id)
        return (f"Asked to cancel run {run.id}: it runs on host {run.host}, whose mlinfra "
                "stops it.")
    if owner_alive(run):
        runs.request_cancel(run.id)
        if run.pid is not None and is_running(run.pid, run.pid_started):
            _signal_group(run.pid, signal.SIGTERM)
        return f"Canceling run {run.id}."
    was_running = stop(run.pid, run.pid_started)
    runs.end_unfinished(run.id, "canceled", f"{orphan_error(run)}; canceled by mlinfra runs "
                        "cancel")
    return (f"Canceled run {run.id} ({orphan_error(run)}): "
            + ("its process was stopped." if was_running else "its process had ended."))


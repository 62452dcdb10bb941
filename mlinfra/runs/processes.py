"""A run's process, known by its pid and its start time, and the runs left behind by a
mlinfra that died.

A pid alone names a process only while it lives: the system gives it to another
process later. Every run records its process' start beside its pid, and the pid and
start of the mlinfra that owns it; a process is signalled only while both match. The
start is the kernel's (Linux: the start tick in /proc/PID/stat, seconds since boot),
which a step of the system clock never moves; psutil's create_time adds the boot time,
which moves with the clock (psutil 7.0.1 and later), so it serves only where /proc
is not. A job runs in its own session, so it outlives a killed mlinfra:
such a run is an orphan, found by the next apply (or `mlinfra runs cancel`), stopped
and marked canceled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable

from mlinfra.errors import MlinfraError
from mlinfra.runs.store import Run, RunStore
from mlinfra.state.store import on_this_machine

# The start of one process read twice: equal (ticks), or create_time's float rounding.
_SAME_START_S = 0.01
_POLL_S = 0.05
STOP_GRACE_S = 5.0


class ProcessNotStopped(MlinfraError):
    """A run's process could not be stopped (it belongs to another user, or outlived
    SIGKILL)."""


def _proc_stat(pid: int) -> tuple[str, float] | None:
    """(state letter, start in seconds since boot) from /proc/PID/stat; None when there
    is no such process. Raises OSError where there is no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        if not os.path.isdir("/proc/self"):
            raise
        return None
    # The command name (field 2) is in parentheses and may hold spaces or ')'.
    fields = data[data.rindex(b")") + 2:].split()
    return fields[0].decode(), int(fields[19]) / os.sysconf("SC_CLK_TCK")


def _status(pid: int) -> tuple[bool, float] | None:
    """(is a zombie, start) of process `pid`, or None when there is none."""
    try:
        found = _proc_stat(pid)
    except OSError:
        # NOTE: psutil is imported where used: planning a job never needs it.
        import psutil

        try:
            process = psutil.Process(pid)
            return (process.status() == psutil.STATUS_ZOMBIE, float(process.create_time()))
        except psutil.Error:
            return None
    if found is None:
        return None
    return found[0] == "Z", found[1]


def started_at(pid: int) -> float | None:
    """When process `pid` started (an identity, not a date: compare it only with another
    `started_at`), or None when there is no such process."""
    found = _status(pid)
    return None if found is None else found[1]


def this_process() -> tuple[int, float | None]:
    """This mlinfra's pid and start time, as a run records its owner."""
    pid = os.getpid()
    return pid, started_at(pid)


def is_running(pid: int | None, started: float | None) -> bool:
    """Whether the process `pid` that started at `started` still runs (a zombie does
    not). Without a start time the pid cannot be told from a reused one: False."""
    if not pid or started is None:
        return False
    found = _status(pid)
    return found is not None and not found[0] and abs(found[1] - started) < _SAME_START_S


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


def run_processes(run_id: str) -> list[int]:
    """The pids of the processes a run started, found by the MLINFRA_RUN_ID they
    inherited: also those that left the run's process group (a daemon's setsid)."""
    import psutil

    tag = f"MLINFRA_RUN_ID={run_id}".encode()
    found = []
    me = os.getpid()
    try:
        pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        pids = psutil.pids()
    for pid in pids:
        if pid == me:
            continue
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                tagged = tag in f.read().split(b"\0")
        except FileNotFoundError:
            continue
        except OSError:
            try:
                tagged = psutil.Process(pid).environ().get("MLINFRA_RUN_ID") == run_id
            except psutil.Error:
                continue
        if tagged:
            found.append(pid)
    return found


def end_run(run_id: str, group: int | None, grace_s: float = STOP_GRACE_S) -> int:
    """End what is left of a run: its process group and every process tagged with its
    id; SIGTERM, then SIGKILL after `grace_s`. Returns how many processes were left."""
    left = _alive_of(run_id, group)
    if not left:
        return 0
    signal_run(run_id, group, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while _alive_of(run_id, group) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    if _alive_of(run_id, group):
        signal_run(run_id, group, signal.SIGKILL)
        deadline = time.monotonic() + grace_s
        while _alive_of(run_id, group) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
    return len(left)


def signal_run(run_id: str, group: int | None, sig: int) -> None:
    """Send `sig` to the run's process group and to every process tagged with its id."""
    if group:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(group, sig)
    for pid in run_processes(run_id):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive_of(run_id: str, group: int | None) -> set[int]:
    """The run's processes still running (zombies are not)."""
    alive = set()
    for pid in run_processes(run_id):
        found = _status(pid)
        if found is not None and not found[0]:
            alive.add(pid)
    if group:
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            pass
        else:
            alive |= {pid for pid in _group_members(group)}
    return alive


def _group_members(group: int) -> set[int]:
    import psutil

    members = set()
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == group and process.status() != psutil.STATUS_ZOMBIE:
                members.add(process.pid)
        except (OSError, psutil.Error):
            continue
    return members


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
        # What the job left beside it (a background child, a daemon), or all of it when
        # mlinfra was killed before recording its pid, is found by the run's mark.
        left = end_run(run.id, run.pid if was_running else None)
        was_running = was_running or left > 0
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
    end_run(run.id, run.pid if was_running else None)
    runs.end_unfinished(run.id, "canceled", f"{orphan_error(run)}; canceled by mlinfra runs "
                        "cancel")
    also = _cancel_family(runs, run)
    return (f"Canceled run {run.id} ({orphan_error(run)}): "
            + ("its process was stopped." if was_running else "its process had ended.")
            + (f" Also canceled: {', '.join(also)}." if also else ""))


def _cancel_family(runs: RunStore, run: Run) -> list[str]:
    """An orphaned pipeline run ends with a canceled step, and its steps with it: no run
    stays `running` that nothing runs."""
    ended = []
    parent = runs.get(run.parent) if run.parent else None
    if parent is not None and parent.status in ("queued", "running") and \
            not owner_alive(parent) and runs.end_unfinished(
                parent.id, "canceled", f"its step {run.step or run.job} was canceled"):
        ended.append(parent.id)
    for step in runs.unfinished():
        if step.parent == run.id and not owner_alive(step):
            was_running = stop(step.pid, step.pid_started)
            end_run(step.id, step.pid if was_running else None)
            if runs.end_unfinished(step.id, "canceled", "its pipeline run was canceled"):
                ended.append(step.id)
    return ended


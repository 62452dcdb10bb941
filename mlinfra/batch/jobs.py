"""What ran: the workspace's batch jobs, read from their folders' manifests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlinfra.batch.shards import JobFolder, read_json
from mlinfra.runs.processes import is_running, started_at
from mlinfra.state.store import on_this_machine


@dataclass
class JobRecord:
    job: str
    status: str
    endpoint: str
    deployment: str
    model: str
    input: str
    rows: int | None
    failed_rows: int | None
    started_at: float | None
    finished_at: float | None
    folder: Path

    def to_json(self) -> dict[str, Any]:
        return {**self.__dict__, "folder": str(self.folder)}


def status_of(manifest: dict[str, Any]) -> str:
    """The job's status: as its manifest says, but `interrupted` for a job marked
    running whose scorer is gone (killed: kill -9, a crash, a reboot), known by its
    pid and start time (mlinfra.runs.processes), so a reused pid is not taken for it.
    A job scored on another machine (a shared folder) cannot be looked at: as marked."""
    status = str(manifest.get("status", "?"))
    if status != "running":
        return status
    host = manifest.get("host")
    if host is not None and not on_this_machine(str(host)):
        return status
    pid = manifest.get("pid")
    if not isinstance(pid, int):
        return status
    started = manifest.get("pid_started")
    if "pid_started" not in manifest:  # recorded before start times were: the pid alone
        alive = started_at(pid) is not None
    else:
        alive = is_running(pid, started if isinstance(started, (int, float)) else None)
    return status if alive else "interrupted"


def list_jobs(root: Path) -> list[JobRecord]:
    """Every job under `root`, newest first. A job whose scorer was killed shows as
    `interrupted` (running it again resumes it)."""
    out = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        manifest = read_json(JobFolder(folder).manifest)
        if not manifest:
            continue
        out.append(JobRecord(
            job=folder.name, status=status_of(manifest),
            endpoint=str(manifest.get("endpoint", "")),
            deployment=str(manifest.get("deployment", "")),
            model=str(manifest.get("model", "")), input=str(manifest.get("input", "")),
            rows=manifest.get("rows"), failed_rows=manifest.get("failed_rows"),
            started_at=manifest.get("started_at"), finished_at=manifest.get("finished_at"),
            folder=folder))
    return sorted(out, key=lambda j: j.started_at or 0.0, reverse=True)

"""What ran: the workspace's batch jobs, read from their folders' manifests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlinfra.batch.shards import JobFolder, read_json


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


def list_jobs(root: Path) -> list[JobRecord]:
    """Every job under `root`, newest first. A job whose scorer was killed shows as
    `running` until it is run again (which resumes it)."""
    out = []
    for folder in sorted(root.iterdir()) if root.is_dir() else []:
        manifest = read_json(JobFolder(folder).manifest)
        if not manifest:
            continue
        out.append(JobRecord(
            job=folder.name, status=str(manifest.get("status", "?")),
            endpoint=str(manifest.get("endpoint", "")),
            deployment=str(manifest.get("deployment", "")),
            model=str(manifest.get("model", "")), input=str(manifest.get("input", "")),
            rows=manifest.get("rows"), failed_rows=manifest.get("failed_rows"),
            started_at=manifest.get("started_at"), finished_at=manifest.get("finished_at"),
            folder=folder))
    return sorted(out, key=lambda j: j.started_at or 0.0, reverse=True)

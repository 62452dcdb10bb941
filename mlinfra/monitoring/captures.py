"""Reading an endpoint's captures (written by `mlinfra.serving.captures`): its request
rows and the labels posted for them, file by file, so that a damaged file or one of
another schema is skipped with its reason instead of failing a whole window."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlinfra.graph import default_datastore
from mlinfra.spec.model import Config, Resource

REQUESTS, FEEDBACK = "requests", "feedback"
_SIZE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(k|M|G|T|Ki|Mi|Gi|Ti)?$")
_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10,
          "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
_DAYS = re.compile(r"^([0-9]+)d$")


def retention(text: Any) -> tuple[int | None, float | None]:
    """`collect.retention` as (bytes, seconds): `500Mi` is a size, `7d` days."""
    if text is None:
        return None, None
    value = str(text).strip()
    days = _DAYS.match(value)
    if days:
        return None, int(days.group(1)) * 86400.0
    size = _SIZE.match(value)
    if size:
        return int(float(size.group(1)) * _UNITS[size.group(2)]), None
    raise ValueError(f"retention {value!r} is neither a size (500Mi) nor days (7d)")


def folder(config: Config, endpoint: Resource, base: Path | None = None) -> Path | None:
    """Where `endpoint` captures its requests: `captures/NAME` in its collect datastore
    (or under `base`, a datastore mounted elsewhere: a CronJob's volume)."""
    collect = endpoint.spec.get("collect") or {}
    if not collect.get("sample"):
        return None
    if base is not None:
        return base / "captures" / endpoint.name
    name = collect.get("datastore") or default_datastore(config)
    store = config.get("Datastore", str(name)) if name else None
    root = ((config.root / str(store.spec.get("path", "."))).resolve() if store is not None
            else config.root / ".mlinfra" / config.stack.name / "endpoints" / endpoint.name)
    return root / "captures" / endpoint.name


def hour_start(name: str) -> float:
    """The start of an `hour=2026-12-07T14` partition, in seconds (UTC)."""
    return datetime.strptime(name[5:], "%Y-%m-%dT%H").replace(tzinfo=UTC).timestamp()


def files(root: Path, kind: str, since: float = 0.0) -> list[Path]:
    """The Parquet files of `kind` whose hour ends after `since`, oldest first."""
    base = root / kind
    if not base.is_dir():
        return []
    found = []
    for hour in sorted(base.iterdir()):
        if not hour.name.startswith("hour=") or not hour.is_dir():
            continue
        try:
            if hour_start(hour.name) + 3600 <= since:
                continue
        except ValueError:
            continue
        found.extend(sorted(hour.glob("*.parquet")))
    return found


@dataclass
class Read:
    """Rows read from several files: one table, and the files left out and why."""

    table: Any  # pyarrow.Table or None
    skipped: list[str] = field(default_factory=list)


def read(paths: list[Path], columns: list[str], dictionary: tuple[str, ...] = ()) -> Read:
    """`columns` of every file that has them; the others are skipped with the reason.
    Text columns among `dictionary` are read dictionary-encoded (the few categories a
    feature takes, counted by their index, not a string per row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables, skipped = [], []
    for path in paths:
        # NOTE: ParquetFile, not read_table: read_table imports pyarrow.dataset, and it
        # pandas, which takes longer than judging a window.
        try:
            file = pq.ParquetFile(path)
            names = file.schema_arrow.names
        except (OSError, pa.ArrowException) as err:
            skipped.append(f"{path.name}: damaged ({str(err).splitlines()[0][:120]})")
            continue
        missing = [c for c in columns if c not in names]
        if missing:
            skipped.append(f"{path.name}: another schema (no column "
                           f"{', '.join(missing[:3])})")
            continue
        # NOTE: reading text features dictionary-encoded cuts the read of a 1M-row
        # window's 5 categorical columns from 90 to 20 ms of CPU, and reading each
        # column's pages as they are decoded (pre_buffer=False) the read's peak memory
        # from 264 to 200 MB, in benchmarks/monitoring.py ("mlinfra monitor run" at 1M
        # rows, its peak).
        encoded = [c for c in columns if c in dictionary
                   and pa.types.is_string(file.schema_arrow.field(c).type)]
        try:
            file = pq.ParquetFile(path, read_dictionary=encoded or None, pre_buffer=False)
            table = file.read(columns=columns)
        except (OSError, pa.ArrowException) as err:
            skipped.append(f"{path.name}: damaged ({str(err).splitlines()[0][:120]})")
            continue
        tables.append(table)
    if not tables:
        return Read(None, skipped)
    try:
        return Read(pa.concat_tables(tables, promote_options="permissive"), skipped)
    except pa.ArrowException as err:
        return Read(None, [*skipped, f"the files' columns do not agree: {err}"])

"""Reading an endpoint's captures (written by `mlinfra.serving.captures`): its request
rows and the labels posted for them, file by file, so that a damaged file or one of
another schema is skipped with its reason instead of failing a whole window.

On a stack whose `artifacts:` is on object storage the captures are there
(`ARTIFACTS/captures/NAME`), read through fsspec with the stack's `storage:` options."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlinfra.graph import default_datastore
from mlinfra.spec.model import Config, Resource
from mlinfra.spec.storage import is_object_url

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


class RemoteFolder:
    """An endpoint's captures on object storage."""

    def __init__(self, location: Any) -> None:
        self.location = location  # mlinfra.data.objects.ObjectLocation

    def __str__(self) -> str:
        return str(self.location.url)


class RemoteFile:
    """One capture file on object storage; read whole (capture files are small)."""

    def __init__(self, folder: RemoteFolder, key: str) -> None:
        self.folder, self.key = folder, key
        self.name = key.rsplit("/", 1)[-1]

    def source(self) -> Any:
        import pyarrow as pa

        loc = self.folder.location
        fs = loc.filesystem()
        return pa.BufferReader(loc.call("read", lambda: fs.cat_file(self.key)))


Folder = Path | RemoteFolder
File = Path | RemoteFile


def object_captures(config: Config) -> str | None:
    """Where every endpoint's captures go when the stack's `artifacts:` is on object
    storage (`ARTIFACTS/captures`), else None (each collect datastore's folder)."""
    artifacts = config.stack.artifacts
    return f"{artifacts.rstrip('/')}/captures" if artifacts and is_object_url(artifacts) \
        else None


def folder(config: Config, endpoint: Resource, base: Path | None = None) -> Folder | None:
    """Where `endpoint` captures its requests: `captures/NAME` in its collect datastore
    (or under `base`, a datastore mounted elsewhere), or under the stack's object-storage
    `artifacts:`."""
    collect = endpoint.spec.get("collect") or {}
    if not collect.get("sample"):
        return None
    if base is not None:
        return base / "captures" / endpoint.name
    remote = object_captures(config)
    if remote is not None:
        from mlinfra.data.objects import location_of

        return RemoteFolder(location_of(f"{remote}/{endpoint.name}",
                                        config.stack.settings.get("storage"),
                                        f"{config.stack.file}: artifacts"))
    name = collect.get("datastore") or default_datastore(config)
    store = config.get("Datastore", str(name)) if name else None
    root = ((config.root / str(store.spec.get("path", "."))).resolve() if store is not None
            else config.root / ".mlinfra" / config.stack.name / "endpoints" / endpoint.name)
    return root / "captures" / endpoint.name


def hour_start(name: str) -> float:
    """The start of an `hour=2026-12-07T14` partition, in seconds (UTC)."""
    return datetime.strptime(name[5:], "%Y-%m-%dT%H").replace(tzinfo=UTC).timestamp()


def files(root: Folder, kind: str, since: float = 0.0) -> list[File]:
    """The Parquet files of `kind` whose hour ends after `since`, oldest first."""
    if isinstance(root, RemoteFolder):
        return _remote_files(root, kind, since)
    base = root / kind
    if not base.is_dir():
        return []
    found: list[File] = []
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


def _remote_files(root: RemoteFolder, kind: str, since: float) -> list[File]:
    loc = root.location
    fs = loc.filesystem()
    prefix = loc.key(kind)
    keys = loc.call("list", lambda: fs.find(prefix, refresh=True))
    found: list[tuple[str, str]] = []
    for key in keys:
        parts = str(key).rsplit("/", 2)
        if len(parts) < 3 or not parts[1].startswith("hour=") \
                or not parts[2].endswith(".parquet"):
            continue
        try:
            if hour_start(parts[1]) + 3600 <= since:
                continue
        except ValueError:
            continue
        found.append((parts[1], str(key)))
    return [RemoteFile(root, key) for _, key in sorted(found)]


def source(path: File) -> Any:
    """What pyarrow reads a capture file from."""
    return path.source() if isinstance(path, RemoteFile) else path


@dataclass
class Read:
    """Rows read from several files: one table, and the files left out and why."""

    table: Any  # pyarrow.Table or None
    skipped: list[str] = field(default_factory=list)


def read(paths: list[File], columns: list[str], dictionary: tuple[str, ...] = ()) -> Read:
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
            data = source(path)  # (a remote file's: downloaded once)
            file = pq.ParquetFile(data)
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
            if isinstance(data, pa.NativeFile):
                data.seek(0)
            file = pq.ParquetFile(data, read_dictionary=encoded or None, pre_buffer=False)
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

"""Request capture for monitoring: a sample of scored rows and their answers, and the
labels clients post later, as Parquet files partitioned by hour.

An endpoint's collect folder holds

    requests/hour=2026-12-07T14/part-HOST-PID-N.parquet   one row per scored row
    feedback/hour=2026-12-07T15/part-HOST-PID-N.parquet   (request_id, row, label)

A request row has `request_id` (the `x-request-id` the server answered with), `row`
(its index in the request), `time` (UTC), `deployment`, `model`, `version`, one column
per feature (the model's `feature_names`, or its input names; `INPUT.J` for the J-th
column of an unnamed 2-D input) and one per output (`output.NAME`, `output.NAME.J` for
the J-th column, J a class label when the model names them). The file's metadata says
which columns are features and which are outputs (`mlinfra.features`,
`mlinfra.outputs`). An input of more than two dimensions (an image) is not captured.

Each worker buffers rows and writes a file of its own when the buffer holds
`FLUSH_ROWS` rows, its oldest row is `flush_s` old or no row came for `QUIET_S` (checked
with each status report), and at shutdown; a file is written aside and renamed into
place, so a reader never sees half of one. Retention: hour folders past the days go,
then the oldest files while the captures take more than their size
(`collect.retention`: a size such as 500Mi, or days such as 7d; by default the
server's `--captures-bytes` x (backups + 1)).

When the collect folder is on object storage (`s3://BUCKET/PREFIX/captures/NAME`: the
stack's `artifacts:` there), each file is one object written whole in one request
through fsspec (s3fs, gcsfs or adlfs in the server's image; credentials from the SDK's
own variables or the pod's identity), so no reader sees half of one and no pod needs a
volume; retention lists and deletes objects the same way.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from mlinfra.serving.table import Deployment, Table

FLUSH_ROWS = 10_000
QUIET_S = 1.0  # a buffer that took no row for this long is written out
SWEEP_S = 5.0  # retention is enforced at most this often per worker
_HOST = socket.gethostname().replace("-", "_")


def hour_of(seconds: float) -> str:
    """The partition of a time: `hour=2026-12-07T14` (UTC)."""
    return "hour=" + datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H")


def _columns(deployment: Deployment, feeds: dict[str, np.ndarray],
             outputs: list[np.ndarray]) -> tuple[int, dict[str, np.ndarray], list[str],
                                                 list[str]] | None:
    """(rows, columns, feature names, output names) of one scored request, or None when
    it has no capturable input."""
    model = deployment.model
    columns: dict[str, np.ndarray] = {}
    features: list[str] = []
    rows = -1
    for name, array in feeds.items():
        if array.ndim == 0 or array.ndim > 2:
            continue
        rows = len(array) if rows < 0 else rows
        if array.ndim == 1:
            columns[name] = array
            features.append(name)
            continue
        names = (model.features if model.features is not None and len(feeds) == 1
                 else [f"{name}.{j}" for j in range(array.shape[1])])
        for j, column in enumerate(names):
            columns[column] = array[:, j]
            features.append(column)
    if rows < 0:
        return None
    produced: list[str] = []
    for name, value in zip(model.output_names, outputs, strict=True):
        if value.ndim == 0 or len(value) != rows or value.ndim > 2:
            continue
        if value.ndim == 1:
            columns[f"output.{name}"] = value
            produced.append(f"output.{name}")
            continue
        labels = model.labels.get(name)
        for j in range(value.shape[1]):
            label = labels[j] if labels is not None and j < len(labels) else j
            columns[f"output.{name}.{label}"] = value[:, j]
            produced.append(f"output.{name}.{label}")
    return rows, columns, features, produced


class _Buffer:
    """Rows of one schema waiting to be written."""

    def __init__(self, folder: str, kind: str, features: list[str], outputs: list[str]
                 ) -> None:
        self.where, self.folder, self.kind = folder, Path(folder), kind
        self.features, self.outputs = features, outputs
        self.chunks: dict[str, list[Any]] = {}
        self.rows = 0
        self.first_at = self.last_at = 0.0

    def add(self, columns: dict[str, Any], rows: int) -> None:
        self.last_at = time.monotonic()
        if not self.rows:
            self.first_at = self.last_at
        for name, values in columns.items():
            self.chunks.setdefault(name, []).append(values)
        self.rows += rows


class Captures:
    """Buffered per worker; `flush()` runs with each status report (every 0.25 s)."""

    def __init__(self, retention_bytes: int, flush_s: float = 5.0) -> None:
        self.retention_bytes = retention_bytes  # unless the endpoint's collect: says
        self.flush_s = flush_s
        self._buffers: dict[tuple[str, ...], _Buffer] = {}
        self._written = 0
        self._swept: dict[Path, float] = {}
        self._retention: dict[Path, tuple[int, float | None]] = {}
        self._remote: dict[str, _Remote] = {}

    def _folder(self, table: Table) -> str:
        assert table.collect_path is not None
        self._retention[Path(table.collect_path)] = (
            table.collect_retention_bytes or self.retention_bytes, table.collect_retention_s)
        if "://" in table.collect_path and table.collect_path not in self._remote:
            self._remote[table.collect_path] = _Remote(table.collect_path,
                                                       table.collect_storage)
        return table.collect_path

    def write(self, table: Table, request_id: str, deployment: Deployment,
              feeds: dict[str, np.ndarray], outputs: list[np.ndarray]) -> None:
        folder = self._folder(table)
        found = _columns(deployment, feeds, outputs)
        if found is None:
            return
        rows, columns, features, produced = found
        key = (folder, "requests", deployment.label, *columns)
        buffer = self._buffers.get(key)
        if buffer is None:
            buffer = self._buffers[key] = _Buffer(folder, "requests", features,
                                                  produced)
        now = time.time()
        buffer.add({"request_id": [request_id] * rows, "row": np.arange(rows, dtype=np.int32),
                    "time": np.full(rows, now), "deployment": [deployment.name] * rows,
                    "model": [deployment.model.name] * rows,
                    "version": np.full(rows, deployment.model.version, dtype=np.int64),
                    **columns}, rows)
        if buffer.rows >= FLUSH_ROWS:
            self._write(key, buffer)

    def feedback(self, table: Table, request_ids: list[str], rows: list[int],
                 labels: list[str]) -> None:
        """Labels for rows captured earlier, written at once (they are few and late)."""
        folder = self._folder(table)
        buffer = _Buffer(folder, "feedback", [], [])
        buffer.add({"request_id": request_ids, "row": np.asarray(rows, dtype=np.int32),
                    "time": np.full(len(labels), time.time()), "label": labels}, len(labels))
        self._write(("feedback",), buffer, keep=False)

    def flush(self, force: bool = False) -> None:
        now = time.monotonic()
        for key, buffer in list(self._buffers.items()):
            if buffer.rows and (force or buffer.rows >= FLUSH_ROWS
                                or now - buffer.first_at >= self.flush_s
                                or now - buffer.last_at >= QUIET_S):
                self._write(key, buffer)

    def close(self) -> None:
        self.flush(force=True)
        self._buffers.clear()

    # --- files ----------------------------------------------------------------------

    def _write(self, key: tuple[str, ...], buffer: _Buffer, keep: bool = True) -> None:
        """Write what `buffer` holds, one file per hour its rows fall in. A folder that
        cannot be written (disk full, removed) loses those rows rather than stopping the
        server."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        chunks, buffer.chunks, buffer.rows = buffer.chunks, {}, 0
        if not keep:
            self._buffers.pop(key, None)
        arrays: dict[str, Any] = {}
        for name, parts in chunks.items():
            if isinstance(parts[0], list):
                arrays[name] = pa.array([v for part in parts for v in part], pa.string())
            else:
                values = np.concatenate(parts)
                arrays[name] = (pa.array(values.astype(str), pa.string())
                                if values.dtype.kind in "OUS" else pa.array(values))
        seconds = arrays.pop("time").to_numpy()
        arrays["time"] = pa.array((seconds * 1000).astype("datetime64[ms]"),
                                  pa.timestamp("ms", tz="UTC"))
        metadata = {b"mlinfra.features": ",".join(buffer.features).encode(),
                    b"mlinfra.outputs": ",".join(buffer.outputs).encode()}
        table = pa.table(arrays).replace_schema_metadata(metadata)
        hours = np.array([hour_of(s) for s in seconds]) if len(seconds) else np.array([])
        remote = self._remote.get(buffer.where)
        for hour in dict.fromkeys(hours.tolist()):
            part = table.filter(pa.array(hours == hour)) if len(set(hours)) > 1 else table
            if remote is not None:
                self._written += 1
                name = (f"part-{_HOST}-{os.getpid()}-{int(time.time() * 1000)}-"
                        f"{self._written}.parquet")
                remote.put(f"{buffer.kind}/{hour}/{name}", part)
                continue
            target = buffer.folder / buffer.kind / hour
            self._written += 1
            name = f"part-{_HOST}-{os.getpid()}-{int(time.time() * 1000)}-{self._written}"
            try:
                target.mkdir(parents=True, exist_ok=True)
                aside = target / f".{name}.tmp"
                pq.write_table(part, aside, compression="zstd")
                os.replace(aside, target / f"{name}.parquet")
            except OSError:
                with contextlib.suppress(OSError):
                    os.unlink(target / f".{name}.tmp")
                continue
        if remote is not None:
            self._sweep_remote(remote, buffer.folder, buffer.kind)
        else:
            self._sweep(buffer.folder, buffer.folder / buffer.kind)

    def _sweep_remote(self, remote: _Remote, root: Path, kind: str) -> None:
        """Retention on object storage: as `_sweep`, by listing and deleting objects."""
        now = time.monotonic()
        marker = Path(f"{remote.url}/{kind}")
        if now - self._swept.get(marker, -SWEEP_S) < SWEEP_S:
            return
        self._swept[marker] = now
        limit, seconds = self._retention.get(root, (self.retention_bytes, None))
        oldest = hour_of(time.time() - seconds) if seconds is not None else ""
        found = remote.listing(kind)  # (hour, modified, key, size), oldest first
        newest = found[-1][0] if found else ""
        doomed = [f for f in found if f[0] < oldest and f[0] != newest]
        kept = [f for f in found if f not in doomed]
        total = sum(size for *_, size in kept)
        for entry in kept[:-1]:
            if total <= limit:
                break
            doomed.append(entry)
            total -= entry[3]
        remote.remove([key for _, _, key, _ in doomed])

    def _sweep(self, root: Path, folder: Path) -> None:
        """Retention: hour folders older than the endpoint's days go; then the oldest
        files while the folder holds more than its size (the newest file is kept)."""
        now = time.monotonic()
        if now - self._swept.get(folder, -SWEEP_S) < SWEEP_S:
            return
        self._swept[folder] = now
        limit, seconds = self._retention.get(root, (self.retention_bytes, None))
        with contextlib.suppress(OSError):
            hours = sorted(p for p in folder.iterdir() if p.name.startswith("hour="))
            if seconds is not None:
                oldest = hour_of(time.time() - seconds)
                for path in [h for h in hours[:-1] if h.name < oldest]:
                    shutil.rmtree(path, ignore_errors=True)
                    hours.remove(path)
            found = []
            for hour in hours:
                for file in hour.glob("*.parquet"):
                    with contextlib.suppress(OSError):
                        stat = file.stat()
                        found.append((hour.name, stat.st_mtime_ns, file, stat.st_size))
            found.sort()
            total = sum(size for *_, size in found)
            for _, _, file, size in found[:-1]:
                if total <= limit:
                    break
                with contextlib.suppress(OSError):
                    file.unlink()
                total -= size
            for hour in hours[:-1]:
                with contextlib.suppress(OSError):
                    hour.rmdir()  # only when emptied


class _Remote:
    """A collect folder on object storage, reached through fsspec."""

    def __init__(self, url: str, storage: dict[str, str]) -> None:
        self.url = url.rstrip("/")
        self.scheme, self.path = self.url.split("://", 1)
        self.storage = storage
        self._fs: Any = None

    def fs(self) -> Any:
        if self._fs is None:
            import fsspec

            options: dict[str, Any] = {}
            if self.scheme == "s3":
                client: dict[str, str] = {}
                if self.storage.get("endpoint_url"):
                    client["endpoint_url"] = self.storage["endpoint_url"]
                if self.storage.get("region"):
                    client["region_name"] = self.storage["region"]
                if client:
                    options["client_kwargs"] = client
            self._fs = fsspec.filesystem(self.scheme, **options)
        return self._fs

    def put(self, key: str, table: Any) -> None:
        """One object, written whole in one request; an object store that cannot be
        reached loses these rows rather than stopping the server."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        data = sink.getvalue().to_pybytes()
        with contextlib.suppress(Exception):  # the SDKs raise many kinds
            self.fs().pipe_file(f"{self.path}/{key}", data)

    def listing(self, kind: str) -> list[tuple[str, float, str, int]]:
        found: list[tuple[str, float, str, int]] = []
        try:
            entries = self.fs().find(f"{self.path}/{kind}", detail=True, refresh=True)
        except Exception:  # the SDKs raise many kinds; retention waits for the next sweep
            return []
        for key, info in entries.items():
            parts = key.rsplit("/", 2)
            if len(parts) < 3 or not parts[1].startswith("hour=") \
                    or not parts[2].endswith(".parquet"):
                continue
            modified = info.get("LastModified") or info.get("last_modified") or info.get(
                "mtime") or 0
            stamp = modified.timestamp() if hasattr(modified, "timestamp") else float(modified)
            found.append((parts[1], stamp, key, int(info.get("size") or 0)))
        found.sort()
        return found

    def remove(self, keys: list[str]) -> None:
        if keys:
            with contextlib.suppress(Exception):
                self.fs().rm(keys)

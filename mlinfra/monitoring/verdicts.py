"""`mlinfra monitor run`: compute the windows of a monitor not yet computed, record each
in the state, and say whether the monitor is breached."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlinfra.errors import MlinfraError
from mlinfra.monitoring import captures, records
from mlinfra.monitoring.monitor import BASE_COLUMNS, Settings, describe, judge, numbers, skipped
from mlinfra.monitoring.records import DRIFT, OK, SKIPPED, Window
from mlinfra.spec.model import Config
from mlinfra.state.store import StateStore
from mlinfra.state.work import Event


class HasState(Protocol):
    """What monitoring needs of a session: the project and its stack's state."""

    @property
    def config(self) -> Config: ...

    @property
    def store(self) -> StateStore: ...


@dataclass
class Verdict:
    """A monitor's standing after its latest windows. `streak` counts the latest
    consecutive drifting windows (insufficient and skipped ones neither count nor
    break it); breached once it reaches `alert_after`."""

    monitor: str
    computed: list[Window]
    latest: Window | None
    streak: int
    alert_after: int

    @property
    def breached(self) -> bool:
        return self.streak >= self.alert_after

    @property
    def state(self) -> str:
        if self.breached:
            return "breached"
        if self.streak:
            return "drifting"
        if self.latest is None:
            return "no data"
        return self.latest.status

    def summary(self) -> str:
        """`drifted for 2 windows (amount: W 0.31 > 0.1)`."""
        if self.latest is None:
            return "no window computed yet"
        if self.streak:
            drifted = [describe(s) for s in self.latest.signals if s.verdict == DRIFT]
            head = (f"drifted for {self.streak} window{'s' if self.streak > 1 else ''}"
                    + ("" if self.breached else f" (alerts after {self.alert_after})"))
            return f"{head} ({'; '.join(drifted[:3])})"
        if self.latest.status in (records.INSUFFICIENT, SKIPPED):
            return f"{self.latest.status}: {self.latest.reason}"
        return f"{self.latest.rows} rows in the last window, no drift"

    def line(self) -> str:
        """`monitor.NAME: STATE: SUMMARY`, the state said once (a skipped or insufficient
        window's summary starts with it already)."""
        summary = self.summary()
        if summary.startswith(f"{self.state}:"):
            return f"monitor.{self.monitor}: {summary}"
        return f"monitor.{self.monitor}: {self.state}: {summary}"

    def to_json(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "state": self.state, "breached": self.breached,
                "streak": self.streak, "alert_after": self.alert_after,
                "summary": self.summary(),
                "computed": [w.to_json() for w in self.computed],
                "latest": self.latest.to_json() if self.latest else None}


def settings(config: Config, name: str) -> Settings:
    res = config.get("Monitor", name)
    if res is None:
        known = ", ".join(sorted(config.of("Monitor"))) or "none"
        raise MlinfraError(f"no monitor '{name}' (monitors: {known})")
    return Settings.of(name, res.spec)


def status(store: StateStore, config: Config, name: str,
           computed: list[Window] | None = None, adding: list[Window] | None = None
           ) -> Verdict:
    """What the state says of monitor `name` now (with `adding`: once those windows,
    not saved yet, are)."""
    chosen = settings(config, name)
    kept = records.windows(store, name, limit=max(50, chosen.alert_after * 4))
    if adding:
        starts = {w.start for w in adding}
        kept = sorted([w for w in kept if w.start not in starts] + adding,
                      key=lambda w: w.start)
    streak = 0
    for window in reversed(kept):
        if window.status == DRIFT:
            streak += 1
        elif window.status == OK:
            break
    latest = next((w for w in reversed(kept) if w.status in (OK, DRIFT)),
                  kept[-1] if kept else None)
    return Verdict(name, computed or [], latest, streak, chosen.alert_after)


def run(session: HasState, name: str | None = None, *, captures_base: Path | None = None,
        now: float | None = None) -> list[Verdict]:
    """Compute the windows of monitor `name` (every monitor when None) not yet computed,
    record them, and return each monitor's verdict. The agent calls this on a
    schedule."""
    config, store = session.config, session.store
    names = [name] if name is not None else sorted(config.of("Monitor"))
    out = []
    for monitor in names:
        chosen = settings(config, monitor)
        before = status(store, config, monitor)
        found = _compute(config, store, chosen, captures_base,
                         time.time() if now is None else now)
        records.save_windows(store, found,
                             _changes(before, status(store, config, monitor, adding=found),
                                      chosen))
        out.append(status(store, config, monitor, found))
    return out


# --- windows -----------------------------------------------------------------------------

def _compute(config: Config, store: StateStore, chosen: Settings,
             captures_base: Path | None, now: float) -> list[Window]:
    if chosen.endpoint is None:
        return _data_window(config, store, chosen)
    endpoint = config.get("Endpoint", chosen.endpoint)
    folder = captures.folder(config, endpoint, captures_base) if endpoint else None
    if folder is None:
        raise MlinfraError(f"monitor.{chosen.name}: endpoint {chosen.endpoint} has no "
                           "collect:, so there are no captures to monitor")
    last = records.windows(store, chosen.name, limit=1)
    since = last[0].end if last else 0.0
    paths = captures.files(folder, captures.REQUESTS, since)
    if not paths:
        return []
    wanted = _capture_columns(paths[-1])
    if chosen.rows is None and "performance" not in chosen.signals:
        wanted = [c for c in wanted if c not in ("request_id", "row")]  # not needed: not read
    read = captures.read(paths, wanted, tuple(c for c in wanted if c != "request_id"))
    reasons = "; ".join(read.skipped)
    if read.table is None:
        if not read.skipped:
            return []
        start = math.floor(now / (chosen.window_s or 3600)) * (chosen.window_s or 3600)
        return [skipped(chosen.name, start, start, f"no readable captures: {reasons}")]
    table = read.table
    seconds = numbers(table.column("time"), np.int64) / 1000.0
    labels = _labels(config, store, chosen, folder)
    windows: list[Window] = []
    for start, end, rows, cursor in _slices(table, seconds, chosen, since, last, now):
        whole = len(rows) == table.num_rows and bool(np.all(rows[1:] > rows[:-1]))
        part = table if whole else table.take(rows)
        window = Window(chosen.name, start, end, len(rows), OK, cursor=cursor,
                        computed_at=now)
        served = _served(part)
        window.model = served
        model, _, version = served.rpartition(":")
        reference = records.profile_of(store, model, int(version)) if version else None
        if reference is None:
            window.status = SKIPPED
            window.reason = _no_profile(store, served)
        else:
            judge(chosen, window, part, reference, labels)
        if reasons and window.status != SKIPPED:
            window.reason = (window.reason + "; " if window.reason else "") + \
                f"files left out: {reasons}"
        windows.append(window)
    return windows


def _no_profile(store: StateStore, served: str) -> str:
    """Why the version that scored a window has no reference profile."""
    model, _, version = served.rpartition(":")
    if not version or not store.query("SELECT 1 FROM models WHERE name=? AND version=?",
                                      (model, int(version))):
        return (f"model {served} is not in the registry (a destroy forgot it, or the "
                "captures are of another stack)")
    return (f"model {served} has no reference profile (registered before monitoring, or "
            "its training data could not be read)")


def _served(part: Any) -> str:
    """The model version (`fraud:3`) that scored most of the window's rows."""
    import pyarrow.compute as pc

    if not part.num_rows:
        return ""
    model, version = part.column("model"), part.column("version")
    # NOTE: one model version in the window (the usual case) is seen from the counted
    # names (dictionary-encoded: a count per index) and the versions' min and max;
    # counting the pairs (group_by) imports pyarrow.acero, pyarrow.dataset and
    # pandas, a third of the command's time in benchmarks/monitoring.py ("the command,
    # Python's start and imports included").
    names, versions = pc.value_counts(model), pc.min_max(version)
    if (model.null_count == 0 and version.null_count == 0 and len(names) == 1
            and versions["min"] == versions["max"]):
        return f"{names.field('values')[0].as_py()}:{versions['min'].as_py()}"
    pairs = pc.value_counts(pc.binary_join_element_wise(
        pc.cast(model, "string"), pc.cast(version, "string"), ":"))
    counts = pairs.field("counts").to_pylist()
    best = max(range(len(counts)), key=counts.__getitem__)
    return str(pairs.field("values")[best].as_py() or "")


def _capture_columns(path: captures.File) -> list[str]:
    """The columns a window needs, from the newest capture file's schema metadata."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.ParquetFile(captures.source(path)).schema_arrow
    except (OSError, pa.ArrowException):
        return list(BASE_COLUMNS)
    meta = schema.metadata or {}
    features = [c for c in meta.get(b"mlinfra.features", b"").decode().split(",") if c]
    outputs = [c for c in meta.get(b"mlinfra.outputs", b"").decode().split(",") if c]
    return [*BASE_COLUMNS, *features, *outputs]


def _slices(table: Any, seconds: np.ndarray, chosen: Settings, since: float,
            last: list[Window], now: float) -> list[tuple[float, float, np.ndarray, str]]:
    """(start, end, row indices, cursor) of each complete window after the last one."""
    out: list[tuple[float, float, np.ndarray, str]] = []
    if chosen.window_s is not None:
        size = chosen.window_s
        keep = np.nonzero(seconds >= since)[0] if last else np.arange(len(seconds))
        if not len(keep):
            return out
        slot = np.floor(seconds[keep] / size)
        complete = slot < math.floor(now / size)
        # NOTE: a window's rows in one slot (captures read since the last window, the
        # usual case) need no sort of the slots: np.unique of a million rows is a tenth
        # of `monitor run`'s time at 1M rows in benchmarks/monitoring.py.
        first, last_slot = (float(slot.min()), float(slot.max())) if len(slot) else (0, 0)
        single = first == last_slot and bool(np.all(complete))
        for value in ([first] if single else np.unique(slot[complete])):
            rows = keep if single else keep[slot == value]
            start = float(value) * size
            out.append((start, start + size, rows, ""))
        return out
    size = int(chosen.rows or 1)
    ids = np.array(table.column("request_id").to_pylist(), dtype=object)
    row = numbers(table.column("row"), np.int64)
    order = np.lexsort((row, ids.astype(str), seconds))
    if last and last[0].cursor:
        at_text, rest = last[0].cursor.split("|", 1)
        rid, index_text = rest.rsplit("|", 1)
        at, index = float(at_text), int(index_text)
        s, i, r = seconds[order], ids[order].astype(str), row[order]
        after = (s > at) | ((s == at) & ((i > rid) | ((i == rid) & (r > index))))
        order = order[after]
    for begin in range(0, len(order) - size + 1, size):
        rows = order[begin:begin + size]
        first, final = rows[0], rows[-1]
        out.append((float(seconds[first]), float(seconds[final]), rows,
                    f"{float(seconds[final])!r}|{ids[final]}|{int(row[final])}"))
    return out


def _labels(config: Config, store: StateStore, chosen: Settings, folder: captures.Folder
            ) -> dict[tuple[str, int], str]:
    """Labels by (request id, row): posted to the endpoint's feedback route, and the
    rows of the performance signal's `labels:` Data asset."""
    performance = chosen.signals.get("performance")
    if performance is None:
        return {}
    found: dict[tuple[str, int], str] = {}
    read = captures.read(captures.files(folder, captures.FEEDBACK),
                         ["request_id", "row", "label"])
    if read.table is not None:
        for rid, row, label in zip(read.table.column("request_id").to_pylist(),
                                   read.table.column("row").to_pylist(),
                                   read.table.column("label").to_pylist(), strict=True):
            found[(str(rid), int(row))] = str(label)
    asset = performance.get("labels")
    if asset:
        found.update(_asset_labels(config, str(asset), str(performance.get("label",
                                                                           "label"))))
    return found


def _asset_labels(config: Config, name: str, label: str) -> dict[tuple[str, int], str]:
    from mlinfra.graph import default_datastore
    from mlinfra.monitoring.reference import ReferenceError, read_columns

    data = config.get("Data", name.split(":")[0])
    if data is None:
        return {}
    store_name = data.spec.get("datastore") or default_datastore(config)
    store = config.get("Datastore", str(store_name)) if store_name else None
    base = (config.root / str(store.spec.get("path", "."))) if store else config.root
    try:
        columns = read_columns(base / str(data.spec["path"]), str(data.spec.get("format",
                                                                                 "csv")))
    except ReferenceError as err:
        raise MlinfraError(f"labels {name}: {err}") from None
    if "request_id" not in columns or label not in columns:
        raise MlinfraError(f"labels {name}: needs columns request_id and {label} (has "
                           f"{', '.join(columns)})")
    rows = columns.get("row")
    out = {}
    for i, (rid, value) in enumerate(zip(columns["request_id"], columns[label],
                                         strict=True)):
        row = int(rows[i]) if rows is not None else 0
        text = (str(int(value)) if isinstance(value, float) and value.is_integer()
                else str(value))
        out[(str(rid), row)] = text
    return out


def _data_window(config: Config, store: StateStore, chosen: Settings) -> list[Window]:
    """`model:` with `data:`: the asset's current content is one window, judged once."""
    import pyarrow as pa

    from mlinfra.data.versions import DataVersions
    from mlinfra.graph import default_datastore
    from mlinfra.monitoring.reference import ReferenceError, read_columns
    from mlinfra.registry.models import ModelRegistry, RegistryError
    from mlinfra.spec.model import Ref

    data = config.get("Data", str(chosen.data))
    ref = Ref.parse(str(chosen.model))
    if data is None or ref is None:
        return []
    store_name = data.spec.get("datastore") or default_datastore(config)
    datastore = config.get("Datastore", str(store_name)) if store_name else None
    base = (config.root / str(datastore.spec.get("path", "."))) if datastore else config.root
    path = base / str(data.spec["path"])
    if not path.exists():
        raise MlinfraError(f"monitor.{chosen.name}: data {data.name}: {path} not found")
    sha = DataVersions(store).content_sha256(path)
    last = records.windows(store, chosen.name, limit=1)
    if last and last[0].cursor == sha:
        return []
    now = time.time()
    try:
        version = ModelRegistry(store).resolve(ref.name, ref.version, ref.alias)
    except RegistryError as err:
        raise MlinfraError(f"monitor.{chosen.name}: {err.message}") from None
    try:
        columns = read_columns(path, str(data.spec.get("format", "csv")))
    except ReferenceError as err:
        return [skipped(chosen.name, now, now, str(err))]
    rows = max((len(v) for v in columns.values()), default=0)
    columns.setdefault("request_id", np.array([""] * rows, dtype=object))
    columns.setdefault("row", np.zeros(rows, dtype=np.int64))
    table = pa.table({k: pa.array(v.tolist() if v.dtype == object else v)
                      for k, v in columns.items()})
    window = Window(chosen.name, now, now, rows, OK, model=version.ref, cursor=sha,
                    computed_at=now)
    reference = records.profile_of(store, version.name, version.version)
    if reference is None:
        window.status = SKIPPED
        window.reason = f"model {version.ref} has no reference profile"
        return [window]
    return [judge(chosen, window, table, reference, {})]


def _changes(before: Verdict, after: Verdict, chosen: Settings) -> list[Event]:
    """monitor.breached when the new windows breach the monitor, monitor.recovered when
    a breached one is within its thresholds again: saved with the windows."""
    if after.breached == before.breached or (not after.breached and after.latest is None):
        return []
    data: dict[str, Any] = {"monitor": after.monitor, "streak": after.streak,
                            "see": f"mlinfra monitors show {after.monitor}"}
    if chosen.endpoint:
        data["endpoint"] = chosen.endpoint
    if after.breached:
        latest = after.latest
        data["signals"] = {f"{s.signal}:{s.feature}": s.value for s in
                           (latest.signals if latest else []) if s.verdict == DRIFT}
        data["summary"] = after.summary()
        data["on_breach"] = chosen.on_breach
        return [Event("monitor.breached", f"monitor.{after.monitor}", data, time.time())]
    return [Event("monitor.recovered", f"monitor.{after.monitor}", data, time.time())]

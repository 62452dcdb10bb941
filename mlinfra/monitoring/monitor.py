"""A monitor's settings, and how a window of production rows is judged against the
reference profile of the model version that served it."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlinfra.monitoring import metrics
from mlinfra.monitoring.profile import CATEGORICAL, NUMERIC, as_text
from mlinfra.monitoring.records import DRIFT, INSUFFICIENT, OK, SKIPPED, Signal, Window
from mlinfra.spec.model import duration_s

DEFAULT_WINDOW = "1h"
DEFAULT_MIN_ROWS = 500
DEFAULT_ALERT_AFTER = 1
# metrics of a model's performance on labelled rows, and which way is better
PERFORMANCE = {"auc": "max", "accuracy": "max", "rmse": "min", "mae": "min", "r2": "max"}
SHORT = {"normalized_wasserstein": "W", "jensen_shannon": "JS", "psi": "PSI",
         "l_infinity": "Linf", "ks": "KS p", "chi_squared": "chi2 p",
         "null_rate": "nulls", "out_of_range_rate": "out of range"}
BASE_COLUMNS = ("request_id", "row", "time", "model", "version")


@dataclass
class Settings:
    """A Monitor resource's spec, with its defaults filled in."""

    name: str
    endpoint: str | None
    model: str | None
    data: str | None
    window_s: float | None  # time windows, or
    rows: int | None  # windows of this many rows
    min_rows: int
    alert_after: int
    signals: dict[str, dict[str, Any]]
    on_breach: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, name: str, spec: dict[str, Any]) -> Settings:
        rows = spec.get("rows")
        window = None if rows is not None else duration_s(spec.get("window", DEFAULT_WINDOW))
        signals = spec.get("signals") or {"data_drift": {"features": "all"}}
        return cls(name, spec.get("endpoint"), spec.get("model"), spec.get("data"), window,
                   int(rows) if rows is not None else None,
                   int(spec.get("min_rows", DEFAULT_MIN_ROWS)),
                   int(spec.get("alert_after", DEFAULT_ALERT_AFTER)),
                   {k: dict(v or {}) for k, v in signals.items()},
                   list(spec.get("on_breach") or []))


def numbers(column: Any, dtype: Any = np.float64) -> np.ndarray:
    """A numeric (or timestamp) Arrow column as a NumPy array of `dtype`, nulls as NaN
    for floats.

    NOTE: read from the Arrow buffers (zero-copy for one float64 chunk without nulls)
    rather than with `to_numpy()`, which imports pandas on its first call: 0.3 s of
    the `mlinfra monitor run` command's wall time in benchmarks/monitoring.py ("the
    command, Python's start and imports included")."""
    import pyarrow as pa
    import pyarrow.compute as pc

    target = pa.from_numpy_dtype(np.dtype(dtype))
    parts = []
    for chunk in (column.chunks if hasattr(column, "chunks") else [column]):
        if pa.types.is_timestamp(chunk.type):
            chunk = chunk.view(pa.int64())
        if chunk.type != target:
            chunk = pc.cast(chunk, target)
        if not len(chunk):
            continue
        validity, data = chunk.buffers()[:2]
        values = np.frombuffer(data, dtype=dtype, count=len(chunk),
                               offset=chunk.offset * np.dtype(dtype).itemsize)
        if chunk.null_count:  # the validity bitmap's zero bits (a Python fill value
            # converted to a pyarrow scalar would import pandas)
            bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8),
                                 bitorder="little")[chunk.offset:chunk.offset + len(chunk)]
            values = values.copy()
            values[bits == 0] = np.nan if values.dtype.kind == "f" else 0
        parts.append(values)
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.empty(0, dtype=dtype)


def column_values(table: Any, name: str, kind: str) -> metrics.Current:
    """A window's column as the metrics read it: float64 with NaN, or counted values
    (pyarrow counts them: no Python object per row)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = table.column(name)
    if kind == CATEGORICAL:
        text = (column if pa.types.is_string(column.type)
                or pa.types.is_dictionary(column.type) else pc.cast(column, pa.string()))
        # NOTE: nulls and "" picked out of the counts, not by comparing each row with ""
        # first (a Python scalar in pc.equal imports pandas: 0.3 s of the command in
        # benchmarks/monitoring.py), and counted once.
        counted = pc.value_counts(text)
        seen: dict[str, int] = {}  # (chunks read from several files: one key each)
        for kind, count in zip(counted.field("values").to_pylist(),
                               counted.field("counts").to_pylist(), strict=True):
            key = "" if kind is None else str(kind)
            seen[key] = seen.get(key, 0) + count
        nulls = seen.pop("", 0)
        return metrics.Counts(list(seen), np.asarray(list(seen.values()), dtype=np.int64),
                              nulls)
    if kind == NUMERIC:
        if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
            return numbers(column)
        from mlinfra.monitoring.profile import as_numbers

        parsed = as_numbers(column.to_pylist())
        return parsed if parsed is not None else np.full(len(column), np.nan)
    return metrics.Counts.of(as_text(column.to_pylist()))


def _features(settings: Settings, reference: dict[str, Any], available: list[str]
              ) -> list[str]:
    wanted = (settings.signals.get("data_drift") or {}).get("features", "all")
    columns = reference["columns"]
    if wanted == "all" or wanted is None:
        return [c for c in available if c in columns and not c.startswith("output.")]
    return [c for c in wanted if c in columns and c in available]


def judge(settings: Settings, window: Window, table: Any, reference: dict[str, Any],
          labels: dict[tuple[str, int], str]) -> Window:
    """Every signal of `settings` on the window's rows (`table`) against `reference`."""
    if window.rows < settings.min_rows:
        window.status = INSUFFICIENT
        window.reason = f"{window.rows} rows, fewer than min_rows {settings.min_rows}"
        return window
    columns = reference["columns"]
    available = table.column_names
    features = _features(settings, reference, available)
    signals: list[Signal] = []
    drift = settings.signals.get("data_drift")
    if drift is not None:
        chosen = {NUMERIC: drift.get("numeric") or {}, CATEGORICAL: drift.get("categorical")
                  or {}}
        tests: dict[str, int] = {}
        for name in features:
            kind = columns[name]["type"]
            metric = chosen[kind].get("metric", metrics.DEFAULT[kind])
            tests[metric] = tests.get(metric, 0) + 1
        def drift_of(name: str) -> Signal:
            kind = columns[name]["type"]
            metric = chosen[kind].get("metric", metrics.DEFAULT[kind])
            if kind not in metrics.METRICS[metric][0]:
                metric = metrics.DEFAULT[kind]
            threshold = float(chosen[kind].get("threshold", metrics.METRICS[metric][1]))
            return _signal("data_drift", name, metric, columns[name],
                           column_values(table, name, kind), threshold, tests.get(metric, 1))

        # NOTE: one column per thread: NumPy and Arrow release the GIL while they count.
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            signals.extend(pool.map(drift_of, features))
    prediction = settings.signals.get("prediction_drift")
    if prediction is not None:
        outputs = [c for c in available if c.startswith("output.") and c in columns
                   and columns[c]["type"] == NUMERIC]
        metric = str(prediction.get("metric", "normalized_wasserstein"))
        threshold = float(prediction.get("threshold", metrics.METRICS[metric][1]))
        for name in outputs:
            signals.append(_signal("prediction_drift", name, metric, columns[name],
                                   column_values(table, name, NUMERIC), threshold,
                                   len(outputs)))
    quality = settings.signals.get("data_quality")
    if quality is not None:
        for name in features:
            ref = columns[name]
            nulls, outside = metrics.quality(ref, column_values(table, name, ref["type"]))
            if "null_rate" in quality:
                limit = ref["null_rate"] + float(quality["null_rate"])
                signals.append(Signal("data_quality", name, "null_rate", nulls, limit,
                                      DRIFT if nulls > limit else OK, window.rows))
            if "out_of_range_rate" in quality:
                limit = float(quality["out_of_range_rate"])
                signals.append(Signal("data_quality", name, "out_of_range_rate", outside,
                                      limit, DRIFT if outside > limit else OK, window.rows))
    performance = settings.signals.get("performance")
    if performance is not None:
        found = _performance(performance, table, labels)
        if found is not None:
            signals.append(found)
    window.signals = signals
    window.status = DRIFT if any(s.verdict == DRIFT for s in signals) else OK
    return window


def _signal(kind: str, name: str, metric: str, reference: dict[str, Any],
            values: metrics.Current, threshold: float, tests: int) -> Signal:
    present = (int(values.counts.sum()) if isinstance(values, metrics.Counts)
               else np.count_nonzero(~np.isnan(values)))
    if not present or (reference["type"] == NUMERIC and not reference.get("quantiles")):
        return Signal(kind, name, metric, float("nan"), threshold, OK, int(present))
    found = metrics.measure(metric, reference, values, threshold, tests)
    return Signal(kind, name, metric, found.value, found.threshold,
                  DRIFT if found.drifted else OK, int(present))


def _performance(spec: dict[str, Any], table: Any, labels: dict[tuple[str, int], str]
                 ) -> Signal | None:
    """The model's metric on the window's labelled rows (None when none is labelled)."""
    from mlinfra.registry.evaluate import auc

    metric = str(spec.get("metric", "auc"))
    ids, rows = table.column("request_id").to_pylist(), table.column("row").to_pylist()
    picked = [(i, labels[(rid, int(r))]) for i, (rid, r) in enumerate(zip(ids, rows,
                                                                         strict=True))
              if (rid, int(r)) in labels]
    if not picked:
        return None
    index = np.array([i for i, _ in picked])
    truth = np.array([float(label) if _number(label) else np.nan for _, label in picked])
    outputs = [c for c in table.column_names if c.startswith("output.")]
    wide = [c for c in outputs if c.count(".") >= 2]
    narrow = [c for c in outputs if c.count(".") == 1]
    value = float("nan")
    if metric == "auc" and len(wide) > 2:
        value = _multiclass_auc(table, wide, picked)
    elif metric == "auc" and wide:
        score = _numbers(table, wide[-1])[index]  # the greater class
        keep = ~np.isnan(truth)
        try:
            value = auc(truth[keep].astype(int), score[keep])
        except Exception:  # one class only among the labels: no auc yet
            value = float("nan")
    elif metric == "accuracy" and narrow:
        said = table.column(narrow[0]).to_pylist()
        value = float(np.mean([_same(said[i], label) for i, label in picked]))
    elif narrow:
        guess = _numbers(table, narrow[0])[index]
        if metric == "rmse":
            value = float(np.sqrt(np.mean((guess - truth) ** 2)))
        elif metric == "mae":
            value = float(np.mean(np.abs(guess - truth)))
        elif metric == "r2":
            total = float(np.sum((truth - truth.mean()) ** 2))
            value = 1.0 - float(np.sum((guess - truth) ** 2)) / total if total else 0.0
    if "min" in spec:
        threshold = float(spec["min"])
        bad = value < threshold
    else:
        threshold = float(spec.get("max", float("inf")))
        bad = value > threshold
    return Signal("performance", "*", metric, value, threshold,
                  DRIFT if bad and value == value else OK, len(picked))


def _numbers(table: Any, name: str) -> np.ndarray:
    found = column_values(table, name, NUMERIC)
    assert isinstance(found, np.ndarray)
    return found


def _multiclass_auc(table: Any, wide: list[str], picked: list[tuple[int, str]]) -> float:
    """One-vs-rest macro AUC (as evaluation computes it) over a probability column per
    class (`output.probabilities.cat`), on the labelled rows whose label is a class;
    NaN while some class has no labelled row."""
    from sklearn.metrics import roc_auc_score

    classes = [c.rsplit(".", 1)[1] for c in wide]
    truth, rows = [], []
    for i, label in picked:
        found = next((k for k, name in enumerate(classes) if _same(name, label)), None)
        if found is not None:
            truth.append(found)
            rows.append(i)
    if len(set(truth)) < len(classes):
        return float("nan")
    scores = np.column_stack([_numbers(table, c)[np.array(rows)] for c in wide])
    scores = scores / scores.sum(axis=1, keepdims=True)
    try:
        return float(roc_auc_score(truth, scores, multi_class="ovr", average="macro",
                                   labels=list(range(len(classes)))))
    except ValueError:
        return float("nan")


def _same(said: Any, label: str) -> bool:
    """A predicted label equals the given one: as numbers when both are (1 and 1.0),
    else as text (`cat`)."""
    if said is None:
        return False
    if _number(str(said)) and _number(label):
        return float(said) == float(label)
    return str(said) == label


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def describe(signal: Signal) -> str:
    """`amount: W 0.31 > 0.1`, `auc 0.71 < 0.8 (1000 labelled rows)`."""
    short = SHORT.get(signal.metric, signal.metric)
    lower = signal.metric in ("ks", "chi_squared") or (
        signal.signal == "performance" and PERFORMANCE.get(signal.metric) == "max")
    sign = ("<" if lower else ">") if signal.verdict == DRIFT else (">=" if lower else "<=")
    text = f"{short} {signal.value:.3g} {sign} {signal.threshold:.3g}"
    if signal.signal == "performance":
        return f"{text} ({signal.rows} labelled rows)"
    return f"{signal.feature}: {text}"


def skipped(monitor: str, start: float, end: float, reason: str) -> Window:
    return Window(monitor, start, end, 0, SKIPPED, reason=reason)

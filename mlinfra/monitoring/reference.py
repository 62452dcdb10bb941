"""A model version's reference profile, computed once when it is registered: the
profile of the data its run read (or of the Model's `monitoring.reference` asset), and
of the model's own outputs on that data, named as the endpoint's captures name them
(`output.NAME`, `output.NAME.J`), for prediction drift."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mlinfra.monitoring import profile

MAX_ROWS = 1_000_000  # a larger reference is profiled on an even sample of this many


class ReferenceError(Exception):
    """The reference data cannot be read; the message says why."""


def read_columns(path: Path, fmt: str) -> dict[str, np.ndarray]:
    """Every column of a csv, parquet or jsonl file (a folder: its parquet files)."""
    import pyarrow as pa

    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            table = pq.read_table(path)
        elif fmt == "jsonl":
            import pyarrow.json as pj

            table = pj.read_json(path)
        else:
            import pyarrow.csv as pc

            table = pc.read_csv(path)
    except (OSError, pa.ArrowException) as err:
        raise ReferenceError(f"cannot read {path.name} as {fmt}: "
                             f"{str(err).splitlines()[0][:200]}") from None
    if table.num_rows > MAX_ROWS:
        table = table.take(np.linspace(0, table.num_rows - 1, MAX_ROWS).astype(np.int64))
    return {name: _values(table.column(name)) for name in table.column_names}


def _values(column: Any) -> np.ndarray:
    import pyarrow as pa

    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        return np.asarray(column.to_numpy(zero_copy_only=False), dtype=np.float64)
    return np.asarray(column.to_pylist(), dtype=object)


def _model_outputs(model: Path, columns: dict[str, np.ndarray], features: list[str] | None
                   ) -> dict[str, np.ndarray]:
    """The model's tensor outputs on the reference rows, as capture columns; nothing
    when its inputs cannot be built from the columns."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    metadata = session.get_modelmeta().custom_metadata_map
    feeds: dict[str, np.ndarray] = {}
    _types = {"tensor(float)": np.float32, "tensor(double)": np.float64,
              "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    if len(inputs) == 1 and len(inputs[0].shape) == 2:
        import json

        names = features
        if names is None and "feature_names" in metadata:
            names = list(json.loads(metadata["feature_names"]))
        dtype = _types.get(inputs[0].type)
        if not names or dtype is None or any(n not in columns for n in names):
            return {}
        feeds[inputs[0].name] = np.column_stack([columns[n] for n in names]).astype(dtype)
        if "feature_names" not in metadata:  # captured as INPUT.J: profile them so too
            for j, name in enumerate(names):
                columns[f"{inputs[0].name}.{j}"] = columns[name]
    else:
        for spec in inputs:
            dtype = _types.get(spec.type)
            if spec.name not in columns or dtype is None:
                return {}
            value = columns[spec.name].astype(dtype)
            feeds[spec.name] = value.reshape(-1, 1) if len(spec.shape) == 2 else value
    if any(np.isnan(f).any() for f in feeds.values() if f.dtype.kind == "f"):
        feeds = {k: np.nan_to_num(v) for k, v in feeds.items()}
    out: dict[str, np.ndarray] = {}
    names_out = [o.name for o in session.get_outputs()]
    for name, value in zip(names_out, session.run(names_out, feeds), strict=True):
        if not isinstance(value, np.ndarray) or value.ndim == 0 or value.ndim > 2:
            continue  # a ZipMap's sequence of maps, or not a row per input row
        if value.ndim == 1:
            out[f"output.{name}"] = value
        else:
            for j in range(value.shape[1]):
                out[f"output.{name}.{j}"] = value[:, j]
    return out


def compute(data: Path, fmt: str, source: str, model: Path | None = None,
            features: list[str] | None = None) -> dict[str, Any]:
    """The reference profile of `data` (and, given the model's file, of its outputs)."""
    columns = read_columns(data, fmt)
    if not columns:
        raise ReferenceError(f"{data.name} has no columns")
    outputs: dict[str, np.ndarray] = {}
    if model is not None:
        try:
            outputs = _model_outputs(model, columns, features)
        except Exception:  # onnxruntime raises its own types; inputs that do not fit
            outputs = {}  # leave prediction drift without a reference, not the version
    return profile.table({**columns, **outputs}, source)

"""MLflow's scoring protocol at /invocations, as `mlflow models serve` answers it.

JSON bodies hold exactly one of `dataframe_split`, `dataframe_records` (tables: one
column per feature, or per input of a model with several), `instances` or `inputs`
(tensors: a list for a model's single input, or a dict by input name, or a list of such
dicts; for a single input with feature names, named columns or records are a table, as
MLflow reads a model with a column signature); CSV bodies are a table with a header.
A table's columns are matched by name, to the model's inputs or, for a single 2-D
input, to its `feature_names`: reordered columns give the same answer.
Tables are answered as records (one object per row), tensors as a dict by output name.
"""

from __future__ import annotations

import csv
import io
from typing import Any

import numpy as np
import orjson

from mlinfra.serving.columns import MissingColumns, feed_columns
from mlinfra.serving.errors import ClientError
from mlinfra.serving.http import parse_json
from mlinfra.serving.model import LoadedModel
from mlinfra.serving.tensors import from_json, names_error

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
_CSV = (b"text/csv", b"application/csv")


def decode(body: bytes, content_type: bytes | None, model: LoadedModel
           ) -> tuple[dict[str, np.ndarray], bool]:
    """The request's feeds, and whether it was a table (answered as records)."""
    mime = _mime(content_type)
    if mime in _CSV:
        columns, rows = _read_csv(body)
        return table(columns, rows, model, bools=False), True
    if mime not in (b"application/json", b""):
        raise ClientError(415, f"content type {mime.decode('latin-1')} is not one of "
                          "application/json, text/csv")
    data = parse_json(body)
    bools = b"true" in body or b"false" in body  # else none can hide among numbers
    given = [key for key in FORMATS if key in data] if isinstance(data, dict) else []
    if len(given) != 1:
        what = f"keys {list(data)}" if isinstance(data, dict) else type(data).__name__
        raise ClientError(400, f"the body must be a JSON object with exactly one of "
                          f"{', '.join(FORMATS)}; got {what}")
    payload = data[given[0]]
    if given[0] == "dataframe_split":
        if not isinstance(payload, dict) or "data" not in payload:
            raise ClientError(400, "dataframe_split is {\"columns\": [...], \"data\": "
                              "[[...], ...]} (pandas' split orientation)")
        return table(payload.get("columns"), payload["data"], model, bools), True
    if given[0] == "dataframe_records":
        if not isinstance(payload, list) or not all(isinstance(r, dict) for r in payload):
            raise ClientError(400, "dataframe_records is [{\"column\": value, ...}, ...] "
                              "(pandas' records orientation)")
        columns = list(dict.fromkeys(key for record in payload for key in record))
        return table(columns, [[r.get(c) for c in columns] for r in payload], model,
                     bools), True
    if isinstance(payload, list) and payload and all(isinstance(i, dict) for i in payload):
        keys = dict.fromkeys(key for instance in payload for key in instance)
        payload = {key: [instance.get(key) for instance in payload] for key in keys}
    if _feature_columns(payload, model):
        # As MLflow reads a model with a column signature: named columns are a table,
        # matched to the single input's feature names.
        columns = list(payload)
        values = [payload[c] for c in columns]
        if not all(isinstance(v, list) and len(v) == len(values[0]) for v in values):
            raise ClientError(422, "named columns are lists of one length, one value a row")
        return table(columns, [list(row) for row in zip(*values, strict=True)], model,
                     bools), True
    return tensors(payload, model, bools), False


def _feature_columns(payload: Any, model: LoadedModel) -> bool:
    """Whether `payload` names the columns of a single input's features rather than the
    model's inputs."""
    return (isinstance(payload, dict) and len(model.inputs) == 1
            and model.features is not None and model.inputs[0].name not in payload
            and any(name in model.features for name in payload))


def _mime(content_type: bytes | None) -> bytes:
    """The media type; a charset other than UTF-8 is a 415, as MLflow has it."""
    if not content_type:
        return b""
    mime, *parameters = content_type.split(b";")
    for parameter in parameters:
        key, _, value = parameter.partition(b"=")
        if key.strip().lower() == b"charset" and value.strip().strip(b'"').lower() not in (
                b"utf-8", b"utf8"):
            raise ClientError(415, "the body must be UTF-8")
    return mime.strip().lower()


def _read_csv(body: bytes) -> tuple[list[str], list[list[Any]]]:
    """A CSV table as pandas reads it: a header, then rows of numbers."""
    try:
        lines = [row for row in csv.reader(io.StringIO(body.decode("utf-8"))) if row]
    except (UnicodeDecodeError, csv.Error) as err:
        raise ClientError(400, f"malformed CSV: {err}") from None
    if not lines:
        raise ClientError(400, "the CSV body is empty: a header line, then rows")
    return [c.strip() for c in lines[0]], [[_number(cell, n) for cell in row]
                                           for n, row in enumerate(lines[1:], start=2)]


def _number(cell: str, line: int) -> int | float:
    try:
        return int(cell)
    except ValueError:
        pass
    try:
        return float(cell)
    except ValueError:
        raise ClientError(422, f"CSV line {line}: {cell.strip()[:40]!r} is not a number"
                          ) from None


def tensors(payload: Any, model: LoadedModel, bools: bool = True) -> dict[str, np.ndarray]:
    """`inputs` or `instances`: a dict by input name, or the value of a single input."""
    if isinstance(payload, dict):
        feeds = {}
        for name, value in payload.items():
            spec = model.input_specs.get(name)
            if spec is None:
                raise names_error(list(payload), model.inputs)
            feeds[name] = from_json(name, value, spec.dtype, bools)
        return feeds
    if len(model.inputs) != 1:
        raise ClientError(422, f"the model has inputs {[s.name for s in model.inputs]}: send "
                          "them by name, {\"inputs\": {\"NAME\": [...], ...}}")
    spec = model.inputs[0]
    return {spec.name: from_json(spec.name, payload, spec.dtype, bools)}


def table(columns: Any, rows: Any, model: LoadedModel, bools: bool = True
          ) -> dict[str, np.ndarray]:
    """A table's columns matched by name to the model's inputs (each column one input)
    or, for a single input, to its feature names; extra columns are left out. Without
    feature names, a single input takes the columns in the order given."""
    if not isinstance(rows, list) or not all(isinstance(row, list) for row in rows):
        raise ClientError(400, "a table's data is a list of rows, each a list of values")
    if columns is not None and (not isinstance(columns, list) or len(set(map(str, columns)))
                                != len(columns)):
        raise ClientError(400, "columns must be a list of distinct names")
    if columns is not None and any(len(row) != len(columns) for row in rows):
        raise ClientError(422, f"every row must have {len(columns)} values, one per column")
    index = {str(c): i for i, c in enumerate(columns or [])}
    if len(model.inputs) == 1:
        spec = model.inputs[0]
        features = model.features
        if features is not None and columns is not None:
            order = [index[f] for f in _fed(list(index), model)[spec.name]]
            rows = [[row[i] for i in order] for row in rows]
        array = from_json(spec.name, rows, spec.dtype, bools)
        if not rows and columns is not None:  # a header alone: no rows of that width
            array = array.reshape(0, len(features) if features is not None else len(columns))
        if len(spec.shape) == 1 and array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]  # one column for a 1-D input
        return {spec.name: array}
    fed = _fed(list(index), model)
    feeds = {}
    for spec in model.inputs:
        i = index[fed[spec.name][0]]
        array = from_json(spec.name, [row[i] for row in rows], spec.dtype, bools)
        feeds[spec.name] = array.reshape(-1, 1) if len(spec.shape) == 2 else array
    return feeds


def _fed(columns: list[str], model: LoadedModel) -> dict[str, list[str]]:
    try:
        return feed_columns(columns, model.inputs, model.features)
    except MissingColumns as err:
        raise ClientError(422, str(err)) from None


def encode(names: list[str], outputs: list[np.ndarray], records: bool) -> bytes:
    """Tensors as {"predictions": {output: values}}; a table's answer as records, one
    {output: value} per row (a [N, 1] output gives one number a row)."""
    rows = len(outputs[0]) if outputs and outputs[0].ndim else 0
    if records and all(o.ndim >= 1 and len(o) == rows for o in outputs):
        columns = [(o[:, 0] if o.ndim == 2 and o.shape[1] == 1 else o).tolist()
                   for o in outputs]
        return orjson.dumps({"predictions": [dict(zip(names, row, strict=True))
                                             for row in zip(*columns, strict=True)]})
    return orjson.dumps({"predictions": {name: value.tolist()
                                         for name, value in zip(names, outputs, strict=True)}})

"""MLflow's scoring protocol, as `mlflow models serve` answers it at /invocations."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from mlinfra.serving.errors import ClientError
from mlinfra.serving.tensors import TensorSpec, from_json


def decode(data: Any, signature: list[TensorSpec]) -> dict[str, np.ndarray]:
    """MLflow's formats: {"inputs": ...}, {"instances": ...}, {"dataframe_split": ...}."""
    if not isinstance(data, dict):
        raise ClientError(400, "expected a JSON object with inputs, instances or "
                          "dataframe_split")
    names = [spec.name for spec in signature]
    dtypes = {spec.name: spec.dtype for spec in signature}

    def _array(value: Any, name: str) -> np.ndarray:
        return from_json(name, value, dtypes.get(name, np.dtype(np.float32)))

    if "dataframe_split" in data:
        frame = data["dataframe_split"]
        if not isinstance(frame, dict) or "data" not in frame:
            raise ClientError(400, "dataframe_split needs columns and data")
        rows = frame["data"]
        if len(names) == 1:
            return {names[0]: _array(rows, names[0])}
        columns = frame.get("columns") or []
        return {name: _array([[row[columns.index(name)]] for row in rows], name)
                for name in names if name in columns}
    payload = data.get("inputs", data.get("instances"))
    if payload is None:
        raise ClientError(400, "expected inputs, instances or dataframe_split")
    if isinstance(payload, dict):
        return {str(k): _array(v, str(k)) for k, v in payload.items()}
    if len(names) != 1:
        raise ClientError(422, f"the model has inputs {names}: send them by name")
    return {names[0]: _array(payload, names[0])}


def encode(names: list[str], outputs: list[np.ndarray]) -> bytes:
    if len(outputs) == 1:
        return orjson.dumps({"predictions": outputs[0].tolist()})
    return orjson.dumps({"predictions": {name: value.tolist()
                                         for name, value in zip(names, outputs, strict=True)}})

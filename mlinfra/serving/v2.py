"""The Open Inference Protocol v2 (KServe, Triton): inference requests and answers, and
model metadata."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from mlinfra.serving.errors import ClientError
from mlinfra.serving.table import Deployment, Table
from mlinfra.serving.tensors import ONNX_TO_V2, V2_NAMES, V2_TYPES


def decode(data: Any) -> dict[str, np.ndarray]:
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list):
        raise ClientError(400, "a v2 request is {\"inputs\": [{name, shape, datatype, data}]}")
    feeds: dict[str, np.ndarray] = {}
    for item in data["inputs"]:
        if not isinstance(item, dict) or not {"name", "shape", "datatype", "data"} <= set(item):
            raise ClientError(400, "each input needs name, shape, datatype and data")
        dtype = V2_TYPES.get(str(item["datatype"]))
        if dtype is None:
            raise ClientError(422, f"input {item['name']}: datatype {item['datatype']} is not "
                              f"one of {', '.join(V2_TYPES)}")
        try:
            array: np.ndarray = np.asarray(item["data"], dtype=dtype).reshape(item["shape"])
        except (ValueError, TypeError) as err:
            raise ClientError(422, f"input {item['name']}: data does not fit shape "
                              f"{item['shape']}: {err}") from None
        feeds[str(item["name"])] = array
    return feeds


def encode(model: str, version: str, names: list[str], outputs: list[np.ndarray],
           request_id: str | None = None) -> bytes:
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": [
        {"name": name, "shape": list(value.shape),
         "datatype": V2_NAMES.get(value.dtype, "BYTES"), "data": value.ravel().tolist()}
        for name, value in zip(names, outputs, strict=True)]}
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body)


def metadata(table: Table, deployment: Deployment) -> dict[str, Any]:
    def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": i["name"], "datatype": ONNX_TO_V2.get(i["type"], "BYTES"),
                 "shape": [-1 if d is None else d for d in i["shape"]]} for i in items]

    return {"name": table.endpoint, "versions": [str(deployment.model.version)],
            "platform": "onnxruntime_onnx", "inputs": tensors(deployment.model.inputs),
            "outputs": tensors(deployment.model.outputs)}

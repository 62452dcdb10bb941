"""The Open Inference Protocol v2 (KServe, Triton): inference requests and answers, and
model metadata."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import orjson

from mlinfra.serving.errors import ClientError
from mlinfra.serving.http import parse_json
from mlinfra.serving.model import LoadedModel
from mlinfra.serving.table import Table
from mlinfra.serving.tensors import V2_NAMES, V2_TYPES, TensorSpec, from_json, names_error


class Request(NamedTuple):
    """A decoded inference request: `feeds` by input name, checked against the model's
    datatypes and the shapes the request declares."""

    feeds: dict[str, np.ndarray]
    id: str | None


def decode(body: bytes, model: LoadedModel) -> Request:
    data = parse_json(body)
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list):
        raise ClientError(400, "a v2 request is {\"inputs\": [{name, shape, datatype, data}]}")
    feeds: dict[str, np.ndarray] = {}
    for item in data["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or (
                "shape" not in item or "datatype" not in item or "data" not in item):
            raise ClientError(400, "each input needs name, shape, datatype and data")
        name = item["name"]
        if name in feeds:
            raise ClientError(422, f"input {name} is given twice")
        spec = model.input_specs.get(name)
        if spec is None:
            raise names_error([str(i.get("name")) for i in data["inputs"]
                               if isinstance(i, dict)], model.inputs)
        shape = item["shape"]
        count = _count(spec, shape, item["datatype"])
        array = from_json(name, item["data"], spec.dtype)
        if array.size != count:
            raise ClientError(422, f"input {name}: data does not fit shape {shape}: "
                              f"{array.size} values for {count}")
        feeds[name] = array.reshape(shape)
    request_id = data.get("id")
    return Request(feeds, str(request_id) if request_id is not None else None)


def _count(spec: TensorSpec, shape: Any, datatype: Any) -> int:
    """The number of values `shape` holds, once it and `datatype` are known to fit."""
    if datatype != spec.datatype:
        if datatype not in V2_TYPES:
            raise ClientError(422, f"input {spec.name}: datatype {datatype} is not one of "
                              f"{', '.join(V2_TYPES)}")
        raise ClientError(422, f"input {spec.name}: datatype {datatype} is not the model's "
                          f"{spec.datatype}")
    count = 1
    if isinstance(shape, list):
        for dim in shape:
            if type(dim) is not int or dim < 0:
                break
            count *= dim
        else:
            return count
    raise ClientError(422, f"input {spec.name}: shape must be a list of non-negative "
                      f"integers, got {orjson.dumps(shape).decode()[:60]}")


def encode(model: str, version: str, names: list[str], outputs: list[np.ndarray],
           request_id: str | None = None) -> bytes:
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": [
        {"name": name, "shape": list(value.shape),
         "datatype": V2_NAMES.get(value.dtype, "BYTES"), "data": value.ravel().tolist()}
        for name, value in zip(names, outputs, strict=True)]}
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body)


def metadata(table: Table, model: LoadedModel) -> dict[str, Any]:
    def tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
        return [{"name": s.name, "datatype": s.datatype,
                 "shape": [-1 if d is None else d for d in s.shape]} for s in specs]

    return {"name": table.endpoint, "versions": [str(model.version)],
            "platform": "onnxruntime_onnx", "inputs": tensors(model.inputs),
            "outputs": tensors(model.outputs)}

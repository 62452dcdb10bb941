"""The Open Inference Protocol v2 (KServe, Triton): inference requests and answers, with
Triton's binary tensor data extension, and model metadata.

With the extension, the `Inference-Header-Content-Length` header gives the length of
the JSON header that opens the body; the inputs whose parameters say
`binary_data_size` follow it as raw little-endian bytes, in order, and are read
without parsing a number. Outputs are returned the same way when the request asks
(`binary_data_output`, or `binary_data` on an output), as tritonclient does by default.
"""

from __future__ import annotations

import struct
import sys
from typing import Any, NamedTuple

import numpy as np
import orjson

from mlinfra.serving.errors import ClientError
from mlinfra.serving.http import JSON, parse_json
from mlinfra.serving.model import LoadedModel
from mlinfra.serving.table import Table
from mlinfra.serving.tensors import V2_NAMES, V2_TYPES, TensorSpec, from_json, names_error

HEADER_LENGTH = b"inference-header-content-length"
_BINARY = b"application/octet-stream"
MAX_DIMS = 64  # NumPy's and so onnxruntime's limit
MAX_EXTENT = 1 << 62  # bytes; NumPy refuses arrays past 2**63
_LITTLE = sys.byteorder == "little"  # the wire's order: arrays as they are, no conversion


class Request(NamedTuple):
    """A decoded inference request: `feeds` by input name, checked against the model's
    datatypes and the shapes the request declares; the outputs asked for (None: all),
    and those to return as binary data."""

    feeds: dict[str, np.ndarray]
    id: str | None
    outputs: list[str] | None
    binary: frozenset[str]


def decode(body: bytes, header_length: bytes | None, model: LoadedModel) -> Request:
    end = len(body)
    if header_length is not None:
        if not header_length.isdigit() or int(header_length) > len(body):
            raise ClientError(400, f"Inference-Header-Content-Length must be the length of "
                              f"the JSON header, at most the body's {len(body)} bytes")
        end = int(header_length)
    text = body[:end] if end < len(body) else body
    data = parse_json(text)
    bools = b"true" in text or b"false" in text  # else none can hide among numbers
    if not isinstance(data, dict) or not isinstance(data.get("inputs"), list):
        raise ClientError(400, "a v2 request is {\"inputs\": [{name, shape, datatype, data}]}")
    feeds: dict[str, np.ndarray] = {}
    offset = end
    for item in data["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str) or (
                "shape" not in item or "datatype" not in item):
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
        parameters = item.get("parameters")
        size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
        if size is not None:
            if header_length is None:
                raise ClientError(400, f"input {name}: binary_data_size needs the "
                                  "Inference-Header-Content-Length header")
            feeds[name] = _from_binary(spec, body, offset, size, count, shape)
            offset += size
            continue
        if "data" not in item:
            raise ClientError(400, f"input {name}: no data and no binary_data_size")
        array = from_json(name, item["data"], spec.dtype, bools)
        if array.size != count:
            raise ClientError(422, f"input {name}: data does not fit shape {shape}: "
                              f"{array.size} values for {count}")
        feeds[name] = array.reshape(shape)
    if offset != len(body):
        raise ClientError(400, f"the body holds {len(body) - end} bytes after its JSON "
                          f"header; the inputs' binary_data_size add up to {offset - end}")
    request_id = data.get("id")
    outputs, binary = _requested(data, model)
    return Request(feeds, str(request_id) if request_id is not None else None, outputs,
                   binary)


def _count(spec: TensorSpec, shape: Any, datatype: Any) -> int:
    """The number of values `shape` holds, once it and `datatype` are known to fit."""
    if datatype != spec.datatype:
        if not isinstance(datatype, str) or datatype not in V2_TYPES:
            raise ClientError(422, f"input {spec.name}: datatype {datatype} is not one of "
                              f"{', '.join(V2_TYPES)}")
        raise ClientError(422, f"input {spec.name}: datatype {datatype} is not the model's "
                          f"{spec.datatype}")
    count = 1
    if isinstance(shape, list):
        if len(shape) > MAX_DIMS:
            raise ClientError(422, f"input {spec.name}: shape has {len(shape)} dimensions, "
                              f"at most {MAX_DIMS} are possible")
        extent = spec.dtype.itemsize  # the bytes the shape spans with its zeros as ones
        for dim in shape:
            if type(dim) is not int or dim < 0:
                break
            count *= dim
            extent *= max(dim, 1)
        else:
            if extent >= MAX_EXTENT:
                raise ClientError(422, f"input {spec.name}: shape {shape} is larger than "
                                  "any array can be")
            return count
    raise ClientError(422, f"input {spec.name}: shape must be a list of non-negative "
                      f"integers, got {orjson.dumps(shape).decode()[:60]}")


def _from_binary(spec: TensorSpec, body: bytes, offset: int, size: Any, count: int,
                 shape: list[int]) -> np.ndarray:
    """The `size` raw bytes at `offset` as the input's array, without a copy."""
    expected = count * spec.dtype.itemsize
    if type(size) is not int or size != expected:
        raise ClientError(422, f"input {spec.name}: binary_data_size {size} does not hold "
                          f"shape {shape} of {spec.datatype}: that takes {expected} bytes")
    if offset + size > len(body):
        raise ClientError(400, f"input {spec.name}: the body ends before its "
                          f"{size} bytes of binary data")
    if count == 0:
        return np.empty(shape, dtype=spec.dtype)
    if _LITTLE:
        return np.frombuffer(body, dtype=spec.dtype, count=count, offset=offset).reshape(shape)
    return np.frombuffer(body, dtype=spec.dtype.newbyteorder("<"), count=count,
                         offset=offset).reshape(shape).astype(spec.dtype)


def _requested(data: dict[str, Any], model: LoadedModel) -> tuple[list[str] | None,
                                                                  frozenset[str]]:
    """The outputs asked for, in order (None: all), and those to send as binary."""
    parameters = data.get("parameters")
    binary_all = isinstance(parameters, dict) and parameters.get("binary_data_output") is True
    asked = data.get("outputs")
    if asked is None or asked == []:  # none named: all of them
        return None, frozenset(model.output_names) if binary_all else frozenset()
    if not isinstance(asked, list) or not all(
            isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise ClientError(400, "outputs is a list of {\"name\": ..., \"parameters\": {...}}")
    names, binary = [], set()
    for output in asked:
        name = output["name"]
        if name not in model.output_names:
            raise ClientError(422, f"no output {name}: the model's outputs are "
                              f"{model.output_names}")
        options = output.get("parameters")
        options = options if isinstance(options, dict) else {}
        if options.get("classification"):
            raise ClientError(422, f"output {name}: the classification extension is not "
                              "supported")
        if options.get("binary_data", binary_all) is True:
            binary.add(name)
        names.append(name)
    return names, frozenset(binary)


def encode(endpoint: str, version: str, names: list[str], outputs: list[np.ndarray],
           request: Request) -> tuple[bytes, bytes, list[tuple[bytes, bytes]]]:
    """(body, content type, extra headers) of the answer to `request`."""
    pairs = list(zip(names, outputs, strict=True))
    if request.outputs is not None:
        chosen = dict(pairs)
        pairs = [(name, chosen[name]) for name in request.outputs]
    entries, blobs = [], []
    for name, value in pairs:
        entry: dict[str, Any] = {"name": name, "datatype": V2_NAMES.get(value.dtype, "BYTES"),
                                 "shape": list(value.shape)}
        if name in request.binary:
            raw = _raw(value, entry["datatype"])
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = value.ravel().tolist()
        entries.append(entry)
    body: dict[str, Any] = {"model_name": endpoint, "model_version": version,
                            "outputs": entries}
    if request.id is not None:
        body["id"] = request.id
    header = orjson.dumps(body)
    if not blobs:
        return header, JSON, []
    return (header + b"".join(blobs), _BINARY,
            [(b"inference-header-content-length", b"%d" % len(header))])


def _raw(value: np.ndarray, datatype: str) -> bytes:
    """An output's binary data: little-endian values in row-major order; BYTES elements
    each after their 4-byte length."""
    if datatype != "BYTES":
        return value.tobytes() if _LITTLE else value.astype(value.dtype.newbyteorder(
            "<")).tobytes()
    parts = []
    for item in value.ravel().tolist():
        data = item if isinstance(item, bytes) else str(item).encode()
        parts.append(struct.pack("<I", len(data)) + data)
    return b"".join(parts)


def metadata(table: Table, model: LoadedModel) -> dict[str, Any]:
    """`model`'s signature as served, under the endpoint's name, with every version it
    serves. A ZipMap output, served as FP32 [N, classes], names its columns' classes in
    its parameters' `labels`."""
    def tensors(specs: list[TensorSpec]) -> list[dict[str, Any]]:
        described = []
        for spec in specs:
            tensor: dict[str, Any] = {"name": spec.name, "datatype": spec.datatype,
                                      "shape": [-1 if d is None else d for d in spec.shape]}
            if spec.name in model.labels:
                tensor["parameters"] = {"labels": model.labels[spec.name]}
            described.append(tensor)
        return described

    return {"name": table.endpoint, "versions": table.versions(),
            "platform": "onnxruntime_onnx", "inputs": tensors(model.inputs),
            "outputs": tensors(model.outputs)}

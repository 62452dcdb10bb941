"""Request and response bodies: the Open Inference Protocol v2 and MLflow's
/invocations, checked against the model's ONNX signature. A client's mistake is a
`ClientError` with its HTTP status, never a 500."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

V2_TYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
            "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8,
            "BOOL": np.bool_}
ONNX_TO_V2 = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
              "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16",
              "tensor(int8)": "INT8", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}
V2_NAMES = {np.dtype(v): k for k, v in V2_TYPES.items()}


class ClientError(Exception):
    """`deployment` is set once a deployment was chosen, so metrics count it there."""

    def __init__(self, status: int, message: str, deployment: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.deployment = deployment


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ClientError(400, f"malformed JSON: {err}") from None


def input_dtype(onnx_type: str) -> np.dtype[Any]:
    return np.dtype(V2_TYPES[ONNX_TO_V2.get(onnx_type, "FP32")])


def check_inputs(feeds: dict[str, np.ndarray], signature: list[dict[str, Any]]
                 ) -> dict[str, np.ndarray]:
    """Names, dtypes and shapes must match the ONNX signature (422 otherwise); numbers
    of another dtype are converted. Runs on every request: plain loops, no sets."""
    if len(feeds) != len(signature) or any(i["name"] not in feeds for i in signature):
        expected = sorted(i["name"] for i in signature)
        missing = sorted(set(expected) - set(feeds))
        extra = sorted(set(feeds) - set(expected))
        raise ClientError(422, f"inputs must be {expected}; missing {missing}, "
                          f"unexpected {extra}")
    out = {}
    for item in signature:
        name, want, shape = item["name"], item["dtype"], item["shape"]
        array = feeds[name]
        if array.dtype != want:
            if array.dtype.kind in "fiub" and want.kind in "fiub":
                array = array.astype(want)
            else:
                raise ClientError(422, f"input {name}: expected {ONNX_TO_V2.get(item['type'])}, "
                                  f"got {V2_NAMES.get(array.dtype, str(array.dtype))}")
        fits = len(shape) == array.ndim
        if fits:
            for d, n in zip(shape, array.shape, strict=True):
                if d is not None and d != n:
                    fits = False
                    break
        if not fits:
            pretty = ["-1" if d is None else str(d) for d in shape]
            raise ClientError(422, f"input {name}: expected shape [{', '.join(pretty)}], got "
                              f"{list(array.shape)}")
        out[name] = array
    return out


def decode_v2(data: Any) -> dict[str, np.ndarray]:
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


def encode_v2(model: str, version: str, names: list[str], outputs: list[np.ndarray],
              request_id: str | None = None) -> bytes:
    body: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": [
        {"name": name, "shape": list(value.shape),
         "datatype": V2_NAMES.get(value.dtype, "BYTES"), "data": value.ravel().tolist()}
        for name, value in zip(names, outputs, strict=True)]}
    if request_id is not None:
        body["id"] = request_id
    return orjson.dumps(body)


def decode_invocations(data: Any, signature: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """MLflow's formats: {"inputs": ...}, {"instances": ...}, {"dataframe_split": ...}."""
    if not isinstance(data, dict):
        raise ClientError(400, "expected a JSON object with inputs, instances or "
                          "dataframe_split")
    names = [item["name"] for item in signature]
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


def _array(value: Any, name: str) -> np.ndarray:
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = np.empty(0, dtype=object)  # ragged rows (NumPy 2 refuses them)
    if array.dtype == object or array.dtype.kind not in "biuf":
        raise ClientError(422, f"input {name}: rows must all have the same length and hold "
                          "numbers")
    return array


def encode_invocations(names: list[str], outputs: list[np.ndarray]) -> bytes:
    if len(outputs) == 1:
        return orjson.dumps({"predictions": outputs[0].tolist()})
    return orjson.dumps({"predictions": {name: value.tolist()
                                         for name, value in zip(names, outputs, strict=True)}})

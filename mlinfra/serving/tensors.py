"""Tensors as the protocols name them: V2 datatypes, ONNX types and NumPy dtypes, and
the check of a request's inputs against the model's ONNX signature."""

from __future__ import annotations

from typing import Any

import numpy as np

from mlinfra.serving.errors import ClientError

V2_TYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
            "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT8": np.uint8,
            "BOOL": np.bool_}
ONNX_TO_V2 = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
              "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16",
              "tensor(int8)": "INT8", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}
V2_NAMES = {np.dtype(v): k for k, v in V2_TYPES.items()}


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

"""Tensors as the protocols name them (V2 datatypes, ONNX types, NumPy dtypes), JSON
values made into arrays, and the check of a request's inputs against the model's
signature. Whatever a client sends that does not fit is a 422 that says why; nothing is
silently cast, truncated or wrapped around."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlinfra.serving.errors import ClientError

V2_TYPES: dict[str, type[np.generic]] = {
    "FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64,
    "INT32": np.int32, "INT16": np.int16, "INT8": np.int8, "UINT64": np.uint64,
    "UINT32": np.uint32, "UINT16": np.uint16, "UINT8": np.uint8, "BOOL": np.bool_}
ONNX_TO_V2 = {"tensor(float)": "FP32", "tensor(double)": "FP64", "tensor(float16)": "FP16",
              "tensor(int64)": "INT64", "tensor(int32)": "INT32", "tensor(int16)": "INT16",
              "tensor(int8)": "INT8", "tensor(uint64)": "UINT64", "tensor(uint32)": "UINT32",
              "tensor(uint16)": "UINT16", "tensor(uint8)": "UINT8", "tensor(bool)": "BOOL"}
V2_NAMES = {np.dtype(v): k for k, v in V2_TYPES.items()}
EXACT = 2 ** 53  # floats past this are not every integer: one may have been rounded


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output of a model's ONNX signature; `None` in `shape` is a dimension
    of any size. `datatype` is "BYTES" for ONNX types without a V2 numeric datatype."""

    name: str
    onnx_type: str
    shape: tuple[int | None, ...]
    datatype: str
    dtype: np.dtype[Any]

    @classmethod
    def of(cls, name: str, onnx_type: str, shape: tuple[int | None, ...]) -> TensorSpec:
        datatype = ONNX_TO_V2.get(onnx_type, "BYTES")
        return cls(name, onnx_type, shape, datatype,
                   np.dtype(V2_TYPES.get(datatype, np.float32)))

    def pretty_shape(self) -> str:
        return "[" + ", ".join("-1" if d is None else str(d) for d in self.shape) + "]"


def from_json(name: str, values: Any, dtype: np.dtype[Any], bools: bool = True) -> np.ndarray:
    """JSON `values` (nested lists of numbers) as an array of `dtype`, exactly. Numbers
    convert to a wider or floating type; an integer that does not fit (or would be
    rounded on the way), a fraction for an integer type, a number past a float type's
    range, `true` among numbers, a number for BOOL, null, text or ragged rows are a 422
    naming the input. `bools=False` says the body holds no `true` nor `false` at all,
    which spares the look for them."""
    try:
        array = np.asarray(values)
    except (ValueError, TypeError, OverflowError):
        raise ClientError(422, f"input {name}: rows must all have the same length") from None
    have, want = array.dtype.kind, dtype.kind
    if want == "b":
        if have == "b":
            return array
        raise ClientError(422, f"input {name}: {_misfit(values, dtype)}")
    if bools and have in "iuf" and _holds_bool(values):
        raise ClientError(422, f"input {name}: {_misfit(values, dtype)}")
    if want == "f" and have in "fiu":
        with np.errstate(over="ignore"):
            result = array.astype(dtype, copy=False)
        if result.size and not np.isfinite(result).all():
            raise ClientError(422, f"input {name}: {_misfit(values, dtype)}")
        return result
    if want in "iu" and have in "iu" and _fits_integers(array, dtype):
        return array.astype(dtype, copy=False)
    if want in "iu" and have in "fO":
        # NOTE: numbers of several kinds (2**63-1 beside 0.0) made a float64 array, which
        # rounds large integers: they are taken one by one from what the client sent.
        exact = _exact_integers(values, array.shape, dtype)
        if exact is not None:
            return exact
    raise ClientError(422, f"input {name}: {_misfit(values, dtype)}")


def _holds_bool(values: Any) -> bool:
    stack = [values]
    while stack:
        value = stack.pop()
        if type(value) is list:
            if bool in set(map(type, value)):
                return True
            stack.extend(v for v in value if type(v) is list)
        elif type(value) is bool:
            return True
    return False


def _exact_integers(values: Any, shape: tuple[int, ...], dtype: np.dtype[Any]
                    ) -> np.ndarray | None:
    """`values` as integers of `dtype` without rounding, or None when one is not an
    integer within its range."""
    info = np.iinfo(dtype)
    flat: list[int] = []
    stack = [values]
    while stack:
        value = stack.pop()
        if type(value) is list:
            stack.extend(reversed(value))
        elif type(value) is int:
            flat.append(value)
        elif type(value) is float and abs(value) <= EXACT and value == int(value):
            flat.append(int(value))
        else:
            return None
    if any(not info.min <= v <= info.max for v in flat):
        return None
    return np.array(flat, dtype=dtype).reshape(shape)


def _fits_integers(array: np.ndarray, dtype: np.dtype[Any]) -> bool:
    if array.size == 0 or array.dtype == dtype:
        return True
    info = np.iinfo(dtype)
    return bool(array.min() >= info.min) and bool(array.max() <= info.max)


def _misfit(values: Any, dtype: np.dtype[Any]) -> str:
    """Why `values` cannot be an array of `dtype`: the first value that does not fit."""
    datatype = V2_NAMES.get(dtype, str(dtype))
    stack = [values]
    while stack:
        value = stack.pop()
        if isinstance(value, list):
            stack.extend(reversed(value))
        elif value is None:
            return "null is not a number"
        elif isinstance(value, bool):
            if dtype.kind != "b":
                return f"{'true' if value else 'false'} is not a number"
        elif isinstance(value, int | float):
            if dtype.kind == "b":
                return f"{value} is not true or false (BOOL)"
            if dtype.kind in "iu":
                if isinstance(value, float) and not (math.isfinite(value)
                                                     and value == int(value)):
                    return f"{value} is not an integer ({datatype})"
                info = np.iinfo(dtype)
                if isinstance(value, float) and abs(value) > EXACT:
                    # NOTE: a JSON integer past 64 bits reaches here as a float, rounded
                    return (f"{value} is out of range for {datatype} [{info.min}, "
                            f"{info.max}], or was written with a fraction or exponent "
                            "past 2**53, where it is no longer exact")
                if not info.min <= value <= info.max:
                    return f"{value} is out of range for {datatype} [{info.min}, {info.max}]"
            elif dtype.kind == "f":
                limit = float(np.finfo(dtype).max)
                if not -limit <= value <= limit:
                    return f"{value} is out of range for {datatype} [{-limit:g}, {limit:g}]"
        else:
            return f"{_short(value)} is not a number"
    return f"the values do not make an array of {datatype}"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def names_error(given: list[str], signature: list[TensorSpec]) -> ClientError:
    """A 422 that says which inputs are missing and which unexpected."""
    expected = sorted(s.name for s in signature)
    missing = sorted(set(expected) - set(given))
    extra = sorted(set(given) - set(expected))
    return ClientError(422, f"inputs must be {expected}; missing {missing}, unexpected {extra}")


def check_inputs(feeds: dict[str, np.ndarray], signature: list[TensorSpec]) -> None:
    """Names, dtypes and shapes must match the ONNX signature (422 otherwise). Runs on
    every request: plain loops, no sets."""
    if len(feeds) != len(signature) or any(s.name not in feeds for s in signature):
        raise names_error(list(feeds), signature)
    for spec in signature:
        array = feeds[spec.name]
        if array.dtype != spec.dtype:
            raise ClientError(422, f"input {spec.name}: expected {spec.datatype}, got "
                              f"{V2_NAMES.get(array.dtype, str(array.dtype))}")
        shape = spec.shape
        fits = len(shape) == array.ndim
        if fits:
            for d, n in zip(shape, array.shape, strict=True):
                if d is not None and d != n:
                    fits = False
                    break
        if not fits:
            raise ClientError(422, f"input {spec.name}: expected shape {spec.pretty_shape()}, "
                              f"got {list(array.shape)}")


def check_rows(feeds: dict[str, np.ndarray]) -> None:
    """A batch-major model's inputs hold one row per example each: they must agree on
    their number of rows (422 otherwise), or a batch could not be split back into its
    requests' answers."""
    rows = -1
    for name, array in feeds.items():
        if rows < 0:
            rows, first = len(array), name
        elif len(array) != rows:
            raise ClientError(422, f"inputs {first} and {name} must have the same number "
                              f"of rows: {rows} and {len(array)}")

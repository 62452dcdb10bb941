"""ONNX external data, as the server sees it: a model may keep a tensor's bytes in
another file (`location` in the tensor's external_data), which onnxruntime reads when
it loads the model. A model reads no file outside its own folder: every location must
be a relative path, without "..", to a file inside the folder of the model's file
(symbolic links resolved), or the model is not loaded.

The references are read from the protobuf wire format directly (serving imports
neither onnx nor protobuf). mlinfra.registry.onnx_files uses this reader at
registration, where the data is then written into the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import NamedTuple

# Where TensorProtos live in an ONNX model: message -> {field number: message it holds}.
HOLDS = {
    "model": {7: "graph", 20: "training", 25: "function"},  # ModelProto
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto
    "function": {7: "node", 11: "attribute"},  # FunctionProto
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # GraphProto
    "node": {5: "attribute"},  # NodeProto
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse",
                  23: "sparse"},  # AttributeProto
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto
}
NAME, EXTERNAL_DATA, DATA_LOCATION, EXTERNAL = 8, 13, 14, 1  # TensorProto


class ExternalData(NamedTuple):
    tensor: str
    location: str


class UnsafeModel(Exception):
    """A model that would read a file outside its folder, or is not ONNX at all."""


def external_data(model: bytes) -> list[ExternalData]:
    """Every tensor of `model` whose bytes are in another file."""
    found, stack = [], [(memoryview(model), "model")]
    try:
        while stack:
            data, kind = stack.pop()
            if kind == "tensor":
                reference = _reference(data)
                if reference is not None:
                    found.append(reference)
                continue
            holds = HOLDS[kind]
            for number, value, _, _ in fields(data):
                if isinstance(value, memoryview) and number in holds:
                    stack.append((value, holds[number]))
    except (ValueError, IndexError, UnicodeDecodeError):
        raise UnsafeModel("it is not an ONNX model (its protobuf cannot be read)") from None
    return found


def check_external_data(model: bytes, folder: Path) -> bool:
    """Refuse a model that reads any file but those inside `folder`; whether it reads
    any file at all."""
    root = folder.resolve()
    references = external_data(model)
    for reference in references:
        why = outside(reference.location, root)
        if why:
            raise UnsafeModel(f"tensor {reference.tensor!r} reads its data from "
                              f"{reference.location!r}, {why}: a model may read files "
                              "inside its own folder only")
    return bool(references)


def outside(location: str, root: Path) -> str:
    """Why `location` is not a file inside `root` ("" when it is)."""
    pure = PurePosixPath(location.replace("\\", "/"))
    if not location or pure.is_absolute() or ":" in pure.parts[0]:
        return "an absolute path"
    if ".." in pure.parts:
        return "a path that leaves the model's folder"
    target = (root / pure).resolve()
    if not target.is_relative_to(root):
        return "a link that leads out of the model's folder"
    if not target.is_file():
        return "which is not a file in the model's folder"
    return ""


def _reference(tensor: memoryview) -> ExternalData | None:
    name, location, external = "", None, False
    for number, value, _, _ in fields(tensor):
        if number == NAME and isinstance(value, memoryview):
            name = bytes(value).decode()
        elif number == DATA_LOCATION and isinstance(value, int):
            external = value == EXTERNAL
        elif number == EXTERNAL_DATA and isinstance(value, memoryview):
            key, text = entry(value)
            if key == "location":
                location = text
    if location is None and not external:
        return None
    return ExternalData(name, location or "")


def entry(data: memoryview) -> tuple[str, str]:
    """A StringStringEntryProto: (key, value)."""
    key = text = ""
    for number, value, _, _ in fields(data):
        if isinstance(value, memoryview) and number == 1:
            key = bytes(value).decode()
        elif isinstance(value, memoryview) and number == 2:
            text = bytes(value).decode()
    return key, text


def fields(data: memoryview) -> Iterator[tuple[int, memoryview | int, int, int]]:
    """(field number, value, start, end) of each field of a protobuf message: a varint's
    number, or a view of a length-delimited field's bytes (no copy); [start, end) spans
    the whole field, key included."""
    i, end = 0, len(data)
    while i < end:
        start = i
        key, i = varint(data, i)
        number, wire = key >> 3, key & 7
        value: memoryview | int
        if wire == 0:
            value, i = varint(data, i)
        elif wire == 2:
            size, i = varint(data, i)
            value, i = data[i:i + size], i + size
        elif wire == 1:
            value, i = i, i + 8  # fixed64: its value is not needed, only skipped
        elif wire == 5:
            value, i = i, i + 4  # fixed32, likewise
        elif wire == 3:
            value, i = i, _skip_group(data, i, number)  # deprecated groups: skipped
        else:
            raise ValueError(f"wire type {wire}")
        if i > end:
            raise ValueError("truncated")
        yield number, value, start, i


def _skip_group(data: memoryview, i: int, group: int) -> int:
    """The index past the end of the group `group` that starts at `i`, skipped as
    protobuf skips unknown fields (onnxruntime would, so nothing may hide in one)."""
    while True:
        key, i = varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 4:
            if number != group:
                raise ValueError("unbalanced group")
            return i
        if wire == 0:
            _, i = varint(data, i)
        elif wire == 2:
            size, i = varint(data, i)
            i += size
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        elif wire == 3:
            i = _skip_group(data, i, number)
        else:
            raise ValueError(f"wire type {wire}")
        if i > len(data):
            raise ValueError("truncated")


def varint(data: memoryview, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")

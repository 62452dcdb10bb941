"""ONNX models with external data, at registration.

A model may keep a tensor's bytes in another file (`location` in the tensor's
external_data), which onnxruntime reads when it loads the model. A model reads no file
outside its own folder: every location must be a relative path, without "..", to a
file inside the folder of the model's file (symbolic links resolved). A model that
passes is registered with its data written into it, so the registered version is one
self-contained file that serves from the artifact store alone; one that does not is
refused with the reason, never registered and then unloadable.

The model is read and rewritten in the protobuf wire format directly (onnx is not a
dependency of mlinfra). mlinfra.serving.onnx_files reads the references the same way
in the server, which imports nothing of the registry.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath

from mlinfra.registry.artifacts import ArtifactStore
from mlinfra.registry.evaluate import ModelInvalid

# Where TensorProtos live in an ONNX model: message -> {field number: message it holds}.
_HOLDS = {
    "model": {7: "graph", 20: "training", 25: "function"},  # ModelProto
    "training": {1: "graph", 2: "graph"},  # TrainingInfoProto
    "function": {7: "node", 11: "attribute"},  # FunctionProto
    "graph": {1: "node", 5: "tensor", 15: "sparse"},  # GraphProto
    "node": {5: "attribute"},  # NodeProto
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse",
                  23: "sparse"},  # AttributeProto
    "sparse": {1: "tensor", 2: "tensor"},  # SparseTensorProto
}
_NAME, _RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION, _EXTERNAL = 8, 9, 13, 14, 1  # TensorProto
_PROTOBUF_LIMIT = (2 << 30) - 1  # a serialized message may not be larger

Load = Callable[[str, dict[str, str]], bytes]


def check_external_data(path: Path) -> None:
    """Refuse (ModelInvalid) a model that would read a file outside its folder."""
    _rewrite_model(path.read_bytes(), _reader(path.parent, read=False))


def self_contained(path: Path, store: ArtifactStore) -> Path:
    """`path` itself when the model keeps all its data inside; otherwise a copy with its
    external data written in, stored in `store` (what is registered). Refuses a
    reference outside the model's folder, a file shorter than the tensor it holds, or
    a model that would pass protobuf's 2 GB."""
    data = path.read_bytes()
    inlined = _rewrite_model(data, _reader(path.parent, read=True))
    if inlined is None:
        return path
    if len(inlined) > _PROTOBUF_LIMIT:
        raise ModelInvalid(f"its data written in would make it {len(inlined) >> 20} MiB, "
                           "over protobuf's 2 GB: serve a smaller model")
    incoming = store.root / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=incoming, suffix=".onnx")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(inlined)
        return store.path(store.put_file(Path(tmp)), verify=False)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _reader(folder: Path, read: bool) -> Load:
    """Checks a tensor's reference against `folder` and returns its bytes (none when
    `read` is False)."""
    root = folder.resolve()

    def load(tensor: str, entries: dict[str, str]) -> bytes:
        location = entries.get("location", "")
        why = _outside(location, root)
        if why:
            raise ModelInvalid(f"tensor {tensor!r} reads its data from {location!r}, {why}: "
                               "a model may read files inside its own folder only")
        if not read:
            return b""
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries["length"]) if "length" in entries else -1
        except ValueError:
            raise ModelInvalid(f"tensor {tensor!r}: its external data's offset and length "
                               "must be integers") from None
        if offset < 0:
            raise ModelInvalid(f"tensor {tensor!r}: its external data's offset is negative")
        with open(root / location, "rb") as f:
            f.seek(offset)
            data = f.read(length)
        if length >= 0 and len(data) != length:
            raise ModelInvalid(f"tensor {tensor!r}: {location} holds no {length} bytes at "
                               f"offset {offset}")
        return data

    return load


def _outside(location: str, root: Path) -> str:
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


def _rewrite_model(data: bytes, load: Load) -> bytes | None:
    """None as well for a file that is not a protobuf: onnxruntime refuses it next, with
    its own reason (the server refuses any model it cannot read)."""
    try:
        return _rewrite(memoryview(data), "model", load)
    except (ValueError, IndexError, UnicodeDecodeError, RecursionError):
        return None


def _rewrite(data: memoryview, kind: str, load: Load) -> bytes | None:
    """`data` (a message of `kind`) with every external tensor's bytes written in, or
    None when it holds no external tensor."""
    if kind == "tensor":
        return _inline(data, load)
    holds, out, changed = _HOLDS[kind], bytearray(), False
    for number, value, start, end in _fields(data):
        if isinstance(value, memoryview) and number in holds:
            new = _rewrite(value, holds[number], load)
            if new is not None:
                out += _varint_bytes(number << 3 | 2) + _varint_bytes(len(new)) + new
                changed = True
                continue
        out += data[start:end]
    return bytes(out) if changed else None


def _inline(tensor: memoryview, load: Load) -> bytes | None:
    name, entries, external = "", {}, False
    for number, value, _, _ in _fields(tensor):
        if number == _NAME and isinstance(value, memoryview):
            name = bytes(value).decode()
        elif number == _DATA_LOCATION and isinstance(value, int):
            external = value == _EXTERNAL
        elif number == _EXTERNAL_DATA and isinstance(value, memoryview):
            key, text = _entry(value)
            entries[key] = text
    if not external and "location" not in entries:
        return None
    raw = load(name, entries)
    out = bytearray()
    for number, _, start, end in _fields(tensor):
        if number not in (_RAW_DATA, _EXTERNAL_DATA, _DATA_LOCATION):
            out += tensor[start:end]
    return bytes(out + _varint_bytes(_RAW_DATA << 3 | 2) + _varint_bytes(len(raw)) + raw)


def _entry(data: memoryview) -> tuple[str, str]:
    """A StringStringEntryProto: (key, value)."""
    key = text = ""
    for number, value, _, _ in _fields(data):
        if isinstance(value, memoryview) and number == 1:
            key = bytes(value).decode()
        elif isinstance(value, memoryview) and number == 2:
            text = bytes(value).decode()
    return key, text


def _fields(data: memoryview) -> Iterator[tuple[int, memoryview | int, int, int]]:
    """(field number, value, start, end) of each field of a protobuf message: a
    varint's number or a view of a length-delimited field's bytes; [start, end) spans
    the whole field, key included."""
    i, end = 0, len(data)
    while i < end:
        start = i
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        value: memoryview | int
        if wire == 0:
            value, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
            value, i = data[i:i + size], i + size
        elif wire == 1:
            value, i = i, i + 8  # fixed64: skipped
        elif wire == 5:
            value, i = i, i + 4  # fixed32: skipped
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
        key, i = _varint(data, i)
        number, wire = key >> 3, key & 7
        if wire == 4:
            if number != group:
                raise ValueError("unbalanced group")
            return i
        if wire == 0:
            _, i = _varint(data, i)
        elif wire == 2:
            size, i = _varint(data, i)
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


def _varint(data: memoryview, i: int) -> tuple[int, int]:
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


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)

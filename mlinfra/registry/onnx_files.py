"""ONNX models with external data, at registration.

A model may keep a tensor's bytes in another file (`location` in the tensor's
external_data), which onnxruntime reads when it loads the model. A model reads no file
outside its own folder: every location must be a relative path, without "..", to a
file inside the folder of the model's file (symbolic links resolved). A model that
passes is registered with its data written into it, so the registered version is one
self-contained file that serves from the artifact store alone; one that does not is
refused with the reason, never registered and then unloadable.

The model is read and rewritten in the protobuf wire format directly (onnx is not a
dependency of mlinfra), with the reader the server checks models with
(mlinfra.serving.onnx_files), so both judge a file alike.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from mlinfra.registry.artifacts import ArtifactStore
from mlinfra.registry.evaluate import ModelInvalid
from mlinfra.serving.onnx_files import (
    DATA_LOCATION,
    EXTERNAL,
    EXTERNAL_DATA,
    HOLDS,
    NAME,
    entry,
    fields,
    outside,
)

_RAW_DATA = 9  # TensorProto
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
        why = outside(location, root)
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
    holds, out, changed = HOLDS[kind], bytearray(), False
    for number, value, start, end in fields(data):
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
    for number, value, _, _ in fields(tensor):
        if number == NAME and isinstance(value, memoryview):
            name = bytes(value).decode()
        elif number == DATA_LOCATION and isinstance(value, int):
            external = value == EXTERNAL
        elif number == EXTERNAL_DATA and isinstance(value, memoryview):
            key, text = entry(value)
            entries[key] = text
    if not external and "location" not in entries:
        return None
    raw = load(name, entries)
    out = bytearray()
    for number, _, start, end in fields(tensor):
        if number not in (_RAW_DATA, EXTERNAL_DATA, DATA_LOCATION):
            out += tensor[start:end]
    return bytes(out + _varint_bytes(_RAW_DATA << 3 | 2) + _varint_bytes(len(raw)) + raw)










def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)

"""ONNX models with external data, at registration.

A model may keep a tensor's bytes in another file (`location` in the tensor's
external_data), which onnxruntime reads when it loads the model. A model reads no file
outside its own folder: every location must be a relative path, without "..", to a
file inside the folder of the model's file (symbolic links resolved). A model that
passes is registered with its data written into it, so the registered version is one
self-contained file that serves from the artifact store alone; one that does not is
refused with the reason, never registered and then unloadable.

The model is read, its tensors found and rewritten with the `onnx` package, so every
field ONNX defines (subgraphs, functions, sparse initializers) is seen; the rule for a
location is the server's own (mlinfra.serving.onnx_files.outside), so both judge a
file alike.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlinfra.registry.artifacts import ArtifactStore
from mlinfra.registry.evaluate import ModelInvalid
from mlinfra.serving.onnx_files import outside

_PROTOBUF_LIMIT = (2 << 30) - 1  # a serialized message may not be larger


def check_external_data(path: Path) -> None:
    """Refuse (ModelInvalid) a model that would read a file outside its folder."""
    model = _load(path.read_bytes())
    if model is not None:
        for tensor in _external(model):
            _location(tensor, path.parent.resolve())


def self_contained(path: Path, store: ArtifactStore) -> Path:
    """`path` itself when the model keeps all its data inside; otherwise a copy with its
    external data written in, stored in `store` (what is registered). Refuses a
    reference outside the model's folder, a file shorter than the tensor it holds, or
    a model that would pass protobuf's 2 GB."""
    model = _load(path.read_bytes())
    if model is None:
        return path
    external = list(_external(model))
    if not external:
        return path
    from onnx import TensorProto

    root = path.parent.resolve()
    for tensor in external:
        tensor.raw_data = _read(tensor, root)
        del tensor.external_data[:]
        tensor.data_location = TensorProto.DEFAULT
    size = model.ByteSize()
    if size > _PROTOBUF_LIMIT:
        raise ModelInvalid(f"its data written in would make it {size >> 20} MiB, "
                           "over protobuf's 2 GB: serve a smaller model")
    incoming = store.root / "incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=incoming, suffix=".onnx")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(model.SerializeToString())
        return store.path(store.put_file(Path(tmp)), verify=False)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _load(data: bytes) -> Any:
    """The model, or None for a file that is not an ONNX protobuf: onnxruntime refuses
    it next, with its own reason (the server refuses any model it cannot read)."""
    import onnx
    from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

    try:
        return onnx.load_model_from_string(data)
    except (DecodeError, ValueError):
        return None


def _external(model: Any) -> Iterator[Any]:
    """Every tensor of the model whose data is in another file, wherever ONNX lets a
    tensor be (initializers, sparse ones, attributes, subgraphs, functions, training
    graphs, and any field a later ONNX adds): found through the messages' own
    descriptors, not a table of field numbers."""
    from onnx import TensorProto

    stack = [model]
    while stack:
        message = stack.pop()
        for field, value in message.ListFields():
            if field.message_type is None:
                continue
            for item in (value if _repeated(field) else [value]):
                if isinstance(item, TensorProto):
                    if item.data_location == TensorProto.EXTERNAL or any(
                            e.key == "location" for e in item.external_data):
                        yield item
                else:
                    stack.append(item)


def _repeated(field: Any) -> bool:
    flag = getattr(type(field), "is_repeated", None)  # protobuf 6; label() before
    if flag is not None:
        return bool(field.is_repeated)
    return bool(field.label == field.LABEL_REPEATED)


def _location(tensor: Any, root: Path) -> str:
    entries = {e.key: e.value for e in tensor.external_data}
    location = str(entries.get("location", ""))
    why = outside(location, root)
    if why:
        raise ModelInvalid(f"tensor {tensor.name!r} reads its data from {location!r}, {why}: "
                           "a model may read files inside its own folder only")
    return location


def _read(tensor: Any, root: Path) -> bytes:
    """The bytes a tensor's external data names, checked against its offset and length."""
    location = _location(tensor, root)
    entries = {e.key: e.value for e in tensor.external_data}
    try:
        offset = int(entries.get("offset", "0"))
        length = int(entries["length"]) if "length" in entries else -1
    except ValueError:
        raise ModelInvalid(f"tensor {tensor.name!r}: its external data's offset and length "
                           "must be integers") from None
    if offset < 0:
        raise ModelInvalid(f"tensor {tensor.name!r}: its external data's offset is negative")
    with open(root / location, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if length >= 0 and len(data) != length:
        raise ModelInvalid(f"tensor {tensor.name!r}: {location} holds no {length} bytes at "
                           f"offset {offset}")
    return data

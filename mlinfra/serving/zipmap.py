"""ZipMap outputs served as dense probability tensors.

A scikit-learn classifier converted with skl2onnx's defaults ends in a ZipMap: its
probability output is a sequence of maps, one {class: probability} per row, which no
v2 datatype holds and which costs a Python object per row and class. The server
serves the tensor that ZipMap reads instead: FP32 [N, classes], its columns in the
order of the ZipMap's class labels (skl2onnx writes scikit-learn's `classes_`, sorted),
under the output's own name. The rewrite is done once, on the model's bytes before
onnxruntime loads them: the ZipMap node becomes an Identity and the output's type a
float tensor, so no request pays for it. The labels are kept for the model metadata.

The model is read and written in the protobuf wire format (serving imports neither
onnx nor protobuf), with the reader of mlinfra.serving.onnx_files.
"""

from __future__ import annotations

from typing import NamedTuple

from mlinfra.serving.onnx_files import fields, varint

# Field numbers of onnx.proto.
_MODEL_GRAPH, _MODEL_OPSET = 7, 8  # ModelProto
_OPSET_DOMAIN = 1  # OperatorSetIdProto
_GRAPH_NODE, _GRAPH_OUTPUT, _GRAPH_VALUE_INFO = 1, 12, 13  # GraphProto
_NODE_INPUT, _NODE_OUTPUT, _NODE_NAME, _NODE_OP, _NODE_ATTRIBUTE, _NODE_DOMAIN = (
    1, 2, 3, 4, 5, 7)  # NodeProto
_ATTRIBUTE_NAME, _ATTRIBUTE_INTS, _ATTRIBUTE_STRINGS = 1, 8, 9  # AttributeProto
_VALUE_NAME, _VALUE_TYPE = 1, 2  # ValueInfoProto
_TYPE_TENSOR, _TENSOR_ELEM, _TENSOR_SHAPE, _SHAPE_DIM, _DIM_VALUE = 1, 1, 2, 1, 1
_FLOAT = 1  # TensorProto.DataType.FLOAT: ZipMap's values are always float

Labels = list[int] | list[str]


class Unzipped(NamedTuple):
    """A model whose ZipMap outputs are dense tensors, and each such output's class
    labels, in the order of its columns."""

    model: bytes
    labels: dict[str, Labels]


class _Node(NamedTuple):
    inputs: list[str]
    outputs: list[str]
    name: bytes
    op: str
    domain: str
    labels: Labels | None


def unzip(model: bytes) -> Unzipped:
    """`model` with every ZipMap whose output is a graph output (and feeds no other
    node) replaced by the probability tensor it reads; `model` itself when it has none.
    Raises ValueError when the protobuf cannot be read."""
    if b"ZipMap" not in model:  # the common case, without parsing a byte
        return Unzipped(model, {})
    data = memoryview(model)
    graph = next((value for number, value, _, _ in fields(data)
                  if number == _MODEL_GRAPH and isinstance(value, memoryview)), None)
    if graph is None:
        return Unzipped(model, {})
    rewritten, labels = _unzip_graph(graph)
    if not labels:
        return Unzipped(model, {})
    parts: list[bytes] = []
    default_domain = False
    for number, value, start, end in fields(data):
        if number == _MODEL_GRAPH:
            parts.append(_field(_MODEL_GRAPH, rewritten))
            continue
        if number == _MODEL_OPSET and isinstance(value, memoryview):
            default_domain |= _text(value, _OPSET_DOMAIN) in ("", "ai.onnx")
        parts.append(bytes(data[start:end]))
    if not default_domain:  # Identity is an operator of the default domain, since opset 1
        parts.append(_field(_MODEL_OPSET, _varint_field(2, 1)))
    return Unzipped(b"".join(parts), labels)


def _unzip_graph(graph: memoryview) -> tuple[bytes, dict[str, Labels]]:
    """The graph rewritten, and the labels of each output it made dense."""
    outputs = {_text(value, _VALUE_NAME) for number, value, _, _ in fields(graph)
               if number == _GRAPH_OUTPUT and isinstance(value, memoryview)}
    nodes = [_node(value) for number, value, _, _ in fields(graph)
             if number == _GRAPH_NODE and isinstance(value, memoryview)]
    consumed = {name for node in nodes for name in node.inputs}
    labels: dict[str, Labels] = {}
    for node in nodes:
        if (node.op == "ZipMap" and node.domain == "ai.onnx.ml" and node.labels
                and len(node.inputs) == 1 and len(node.outputs) == 1
                and node.outputs[0] in outputs and node.outputs[0] not in consumed):
            labels[node.outputs[0]] = node.labels
    if not labels:
        return b"", {}
    parts: list[bytes] = []
    for number, value, start, end in fields(graph):
        if number == _GRAPH_NODE and isinstance(value, memoryview):
            node = _node(value)
            if node.op == "ZipMap" and node.outputs and node.outputs[0] in labels:
                parts.append(_field(_GRAPH_NODE, _identity(node)))
                continue
        elif number in (_GRAPH_OUTPUT, _GRAPH_VALUE_INFO) and isinstance(value, memoryview):
            name = _text(value, _VALUE_NAME)
            if name in labels:
                if number == _GRAPH_OUTPUT:
                    parts.append(_field(_GRAPH_OUTPUT, _dense_output(name, len(labels[name]))))
                continue  # a value_info of the old type would contradict the new one
        parts.append(bytes(graph[start:end]))
    return b"".join(parts), labels


def _node(data: memoryview) -> _Node:
    inputs, outputs, name, op, domain = [], [], b"", "", ""
    labels: Labels | None = None
    for number, value, _, _ in fields(data):
        if not isinstance(value, memoryview):
            continue
        if number == _NODE_INPUT:
            inputs.append(bytes(value).decode())
        elif number == _NODE_OUTPUT:
            outputs.append(bytes(value).decode())
        elif number == _NODE_NAME:
            name = bytes(value)
        elif number == _NODE_OP:
            op = bytes(value).decode()
        elif number == _NODE_DOMAIN:
            domain = bytes(value).decode()
        elif number == _NODE_ATTRIBUTE:
            found = _class_labels(value)
            labels = found if found is not None else labels
    return _Node(inputs, outputs, name, op, domain, labels)


def _class_labels(attribute: memoryview) -> Labels | None:
    """ZipMap's `classlabels_int64s` or `classlabels_strings`; None for another
    attribute."""
    name = _text(attribute, _ATTRIBUTE_NAME)
    if name == "classlabels_int64s":
        numbers: list[int] = []
        for number, value, _, _ in fields(attribute):
            if number != _ATTRIBUTE_INTS:
                continue
            if isinstance(value, int):  # one varint a value
                numbers.append(_signed(value))
                continue
            i = 0  # packed: varints one after another
            while i < len(value):
                raw, i = varint(value, i)
                numbers.append(_signed(raw))
        return numbers
    if name == "classlabels_strings":
        return [bytes(value).decode() for number, value, _, _ in fields(attribute)
                if number == _ATTRIBUTE_STRINGS and isinstance(value, memoryview)]
    return None


def _identity(node: _Node) -> bytes:
    parts = [_field(_NODE_INPUT, node.inputs[0].encode()),
             _field(_NODE_OUTPUT, node.outputs[0].encode())]
    if node.name:
        parts.append(_field(_NODE_NAME, node.name))
    parts.append(_field(_NODE_OP, b"Identity"))
    return b"".join(parts)


def _dense_output(name: str, classes: int) -> bytes:
    """A ValueInfoProto: `name`, a float tensor of shape [any, classes]."""
    rows = _field(_SHAPE_DIM, b"")  # a dimension of any size
    columns = _field(_SHAPE_DIM, _varint_field(_DIM_VALUE, classes))
    tensor = _varint_field(_TENSOR_ELEM, _FLOAT) + _field(_TENSOR_SHAPE, rows + columns)
    return _field(_VALUE_NAME, name.encode()) + _field(_VALUE_TYPE,
                                                       _field(_TYPE_TENSOR, tensor))


def _text(message: memoryview, wanted: int) -> str:
    """A message's string field `wanted` ("" when absent)."""
    for number, value, _, _ in fields(message):
        if number == wanted and isinstance(value, memoryview):
            return bytes(value).decode()
    return ""


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def _encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _encode_varint(number << 3 | 2) + _encode_varint(len(payload)) + payload


def _varint_field(number: int, value: int) -> bytes:
    return _encode_varint(number << 3) + _encode_varint(value)

"""Where a well-kept library decides, mlinfra uses it: plain data are dataclasses with
slots (not a hand-written record class)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest


@pytest.mark.parametrize("name", [
    "mlinfra.spec.model:Resource", "mlinfra.spec.model:Stack", "mlinfra.spec.model:Config",
    "mlinfra.plan.model:Desired", "mlinfra.plan.model:Change", "mlinfra.plan.model:Plan",
    "mlinfra.state.model:ResourceState", "mlinfra.handler:Applied",
    "mlinfra.runs.containers:Mount", "mlinfra.runs.containers:Finished",
    "mlinfra.providers.manifests:RenderedObject"])
def test_plain_data_are_slotted_dataclasses(name: str) -> None:
    import importlib

    module, _, attribute = name.partition(":")
    kind = getattr(importlib.import_module(module), attribute)
    assert dataclasses.is_dataclass(kind) and "__slots__" in vars(kind)
    assert kind.__hash__ is None  # mutable: equal by fields, never a dict key


def test_records_compare_and_print_by_their_fields() -> None:
    from mlinfra.state.model import ResourceState

    a = ResourceState("compute.a", "Compute", "a", {"x": 1}, "h")
    assert a == ResourceState("compute.a", "Compute", "a", {"x": 1}, "h")
    assert a != ResourceState("compute.a", "Compute", "a", {"x": 2}, "h")
    assert repr(a).startswith("ResourceState(address='compute.a', kind='Compute'")
    with pytest.raises(AttributeError):
        a.unknown = 1  # type: ignore[attr-defined]
    import mlinfra.errors

    assert not hasattr(mlinfra.errors, "Record")


def _external(name: str, location: str, values: bytes) -> object:
    from onnx import TensorProto

    tensor = TensorProto(name=name, data_type=TensorProto.UINT8, dims=[len(values)],
                         data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", "0"),
                       ("length", str(len(values)))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def test_registration_finds_external_data_wherever_onnx_puts_it(tmp_path: Path) -> None:
    """Read and rewritten with the onnx package: a sparse initializer's values and a
    training graph's initializer are written in, and a location out of the folder in
    either is refused."""
    from onnx import TensorProto, helper, load_model_from_string

    from mlinfra.registry.artifacts import ArtifactStore
    from mlinfra.registry.evaluate import ModelInvalid
    from mlinfra.registry.onnx_files import check_external_data, self_contained

    def model(sparse_at: str, training_at: str) -> bytes:
        sparse = helper.make_sparse_tensor(
            _external("S", sparse_at, b"\x01\x02"),  # type: ignore[arg-type]
            helper.make_tensor("S_idx", TensorProto.INT64, [2], [0, 3]), [4])
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
        graph.sparse_initializer.append(sparse)
        made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        training = made.training_info.add()
        training.algorithm.CopyFrom(helper.make_graph([], "train", [], []))
        training.algorithm.initializer.append(
            _external("T", training_at, b"\x07\x08\x09"))  # type: ignore[arg-type]
        return bytes(made.SerializeToString())

    (tmp_path / "s.bin").write_bytes(b"\x01\x02")
    (tmp_path / "t.bin").write_bytes(b"\x07\x08\x09")
    path = tmp_path / "m.onnx"
    path.write_bytes(model("s.bin", "t.bin"))
    stored = self_contained(path, ArtifactStore(tmp_path / "store"))
    written = load_model_from_string(stored.read_bytes())
    assert written.graph.sparse_initializer[0].values.raw_data == b"\x01\x02"
    assert written.training_info[0].algorithm.initializer[0].raw_data == b"\x07\x08\x09"
    assert not written.graph.sparse_initializer[0].values.external_data
    for sparse_at, training_at in (("../s.bin", "t.bin"), ("s.bin", "/etc/passwd")):
        path.write_bytes(model(sparse_at, training_at))
        with pytest.raises(ModelInvalid, match="a model may read files inside its own"):
            check_external_data(path)

"""a model cannot read files outside its own folder. ONNX external
data is resolved only inside the model's folder, at registration and in the server; a
model with legitimate external data is registered with its data and served."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import Result
from tests.endpoint_client import applied, call, endpoint_files

ENDPOINT = """\
kind: Model
name: {model}
from: {{path: models/{model}.onnx}}
---
kind: Endpoint
name: api
auth: key
deployments: [{{name: blue, model: {model}}}]
traffic: {{blue: 100}}
"""


def leaking_model(location: str, size: int, offset: int = 0) -> bytes:
    """y [size] UINT8 = the tensor W, whose `size` bytes are read from `location`."""
    from onnx import TensorProto, helper

    weights = TensorProto(name="W", data_type=TensorProto.UINT8, dims=[size],
                          data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", str(offset)),
                       ("length", str(size))):
        weights.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])], "leak",
        [helper.make_tensor_value_info("x", TensorProto.UINT8, [size])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [size])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def external_logistic(location: str) -> tuple[bytes, bytes]:
    """The tests' logistic regression with its weights W [2, 1] in the file `location`
    at offset 8: (model, data file)."""
    from onnx import TensorProto, helper

    from tests.conftest import onnx_model

    model = helper.ModelProto()
    model.ParseFromString(onnx_model((0.75, -1.25)))
    weights = next(t for t in model.graph.initializer if t.name == "W")
    data = b"\x00" * 8 + np.array([0.75, -1.25], dtype=np.float32).tobytes()
    weights.ClearField("float_data")
    weights.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "8"), ("length", "8")):
        weights.external_data.add(key=key, value=value)
    return bytes(model.SerializeToString()), data


@pytest.mark.parametrize("where", ["../../operator.key", "absolute", "missing.bin",
                                   "link.bin"])
def test_a_model_reading_outside_its_folder_is_refused_at_registration(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path,
        where: str) -> None:
    secret = tmp_path / "secret.key"
    secret.write_text("mlk_" + "s" * 43)
    location = {"absolute": str(secret)}.get(where, where)
    root = project({"models/evil.onnx": leaking_model(location, 47),
                    "serving.yaml": ENDPOINT.format(model="evil")})
    (root / "operator.key").write_text("mlk_" + "k" * 43)  # ../../operator.key from models/
    if where == "link.bin":
        (root / "models" / "link.bin").symlink_to(secret)
    result = cli("apply", "--auto-approve")
    assert result.code == 1, result.out + result.err
    why = {"../../operator.key": "a path that leaves the model's folder",
           "absolute": "an absolute path", "missing.bin": "which is not a file in the "
           "model's folder", "link.bin": "a link that leads out of the model's folder"}[where]
    assert f"model.evil: refused: tensor 'W' reads its data from {location!r}, {why}" in (
        result.out + result.err)
    assert "model.evil" not in cli("state", "list").out


def test_a_crafted_model_cannot_return_the_operator_key(
        project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    """The attack: a file named operator.key beside the model lets it register; served
    from bytes, onnxruntime read 'operator.key' from the server's working directory,
    the endpoint's folder, and the model returned the real key to any caller."""
    decoy = b"mlk_" + b"d" * 43
    root = project({"models/evil.onnx": leaking_model("operator.key", len(decoy)),
                    "models/operator.key": decoy,
                    "serving.yaml": ENDPOINT.format(model="evil")})
    with applied(cli) as (url, key):
        real = (root / ".mlinfra/dev/endpoints/api/operator.key").read_bytes().strip()
        status, answer, _ = call(url, key, "POST", "/v2/models/api/infer", {"inputs": [
            {"name": "x", "shape": [47], "datatype": "UINT8", "data": [0] * 47}]})
        assert status == 200
        returned = bytes(answer["outputs"][0]["data"])
        assert returned != real and returned == decoy  # registered with its own data


def test_the_server_loads_no_external_data_from_outside_the_model_folder(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the server itself, whatever the registry let through: the working directory
    holds a key, the model names it."""
    from mlinfra.serving.model import LoadedModel, ModelLoadError

    endpoint = tmp_path / "endpoint"
    endpoint.mkdir()
    (endpoint / "operator.key").write_bytes(b"mlk_" + b"k" * 43)
    monkeypatch.chdir(endpoint)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for location, why in (("operator.key", "which is not a file in the model's folder"),
                          ("../endpoint/operator.key", "a path that leaves the model's"),
                          (str(endpoint / "operator.key"), "an absolute path")):
        model = blobs / "evil.onnx"
        model.write_bytes(leaking_model(location, 47))
        with pytest.raises(ModelLoadError, match=why):
            LoadedModel.load("evil", 1, model, hashlib.sha256(model.read_bytes()).hexdigest())


def test_a_model_with_its_data_beside_it_is_registered_with_it_and_served(
        project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    model, data = external_logistic("weights.bin")
    root = project({"models/split.onnx": model, "models/weights.bin": data,
                    "serving.yaml": ENDPOINT.format(model="split")})
    rows = np.array([[0.5, 1.0], [-2.0, 0.25]], dtype=np.float32)
    label, probabilities = ort.InferenceSession(str(root / "models" / "split.onnx")).run(
        None, {"features": rows})
    with applied(cli) as (url, key):
        (root / "models" / "weights.bin").unlink()  # the registered version holds its data
        status, answer, _ = call(url, key, "POST", "/invocations", {"inputs": rows.tolist()})
        assert status == 200, answer
        assert answer["predictions"] == {"label": label.tolist(),
                                         "probabilities": probabilities.tolist()}
        config = json.loads(endpoint_files("config.json")[0].read_text())
        registered = Path(config["deployments"]["blue"]["path"]).read_bytes()
        assert b"weights.bin" not in registered  # one file: it serves from the store alone
        session = ort.InferenceSession(registered)
        assert np.array_equal(session.run(None, {"features": rows})[0], label)

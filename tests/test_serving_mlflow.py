"""MLflow's scoring protocol as `mlflow models serve` answers it.

The request bodies marked "MLflow docs" are byte for byte those of MLflow's
documentation (Deploy MLflow Model as a Local Inference Server, and the serving quick
start): MLflow itself is too heavy a dependency for these tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Result, onnx_model
from tests.endpoint_client import Client, applied, call

ENDPOINT = """\
kind: Endpoint
name: api
auth: key
deployments:
  - {name: two, model: two}
  - {name: four, model: four}
  - {name: plain, model: plain}
  - {name: vector, model: vector}
  - {name: pair, model: pair}
traffic: {two: 100}
"""
MODELS = "".join(f"---\nkind: Model\nname: {name}\nfrom: {{path: models/{name}.onnx}}\n"
                 for name in ("two", "four", "plain", "vector", "pair"))
FEATURES = ["feature1", "feature2", "feature3", "feature4"]


def weighted_sum(features: list[str] | None) -> bytes:
    """y [N, 1] = x [N, 4] . (1, 10, 100, 1000): the order of the columns shows in the
    answer. `features` become the model's feature_names metadata."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "weighted",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("w", TensorProto.FLOAT, [4, 1], [1.0, 10.0, 100.0, 1000.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    if features is not None:
        helper.set_model_props(model, {"feature_names": json.dumps(features)})
    return bytes(model.SerializeToString())


def doubled() -> bytes:
    """y [N] = 2 x [N]."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])], "doubled",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def pair() -> bytes:
    """y [N, 1] = 10 a + b, from two inputs a and b, each [N, 1]."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["a", "ten"], ["a10"]), helper.make_node("Add", ["a10", "b"],
                                                                          ["y"])], "pair",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [None, 1]) for n in "ab"],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("ten", TensorProto.FLOAT, [1], [10.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_mlflow_scoring_protocol(project: Callable[..., Path],
                                 cli: Callable[..., Result]) -> None:
    project({"models/two.onnx": onnx_model(), "models/four.onnx": weighted_sum(FEATURES),
             "models/plain.onnx": weighted_sum(None), "models/vector.onnx": doubled(),
             "models/pair.onnx": pair(), "serving.yaml": ENDPOINT + MODELS})
    with applied(cli) as (url, key), Client(url, key) as client:
        def invoke(deployment: str, body: bytes, content_type: str = "application/json"
                   ) -> tuple[int, Any]:
            status, answer, _ = client.request("POST", "/invocations", body, {
                "content-type": content_type, "mlinfra-deployment": deployment})
            return status, answer

        # MLflow docs: curl ... -H "Content-Type:application/json" --data '{"inputs": ...}'
        status, answer = invoke("two", b'{"inputs": [[1, 2], [3, 4], [5, 6]]}',
                                "application/json")
        assert status == 200 and len(answer["predictions"]["label"]) == 3, answer
        # MLflow docs (serving quick start): dataframe_split with columns
        split = {"dataframe_split": {"columns": ["feature1", "feature2", "feature3",
                                                 "feature4"], "data": [[1, 2, 3, 4]]}}
        assert invoke("four", json.dumps(split).encode()) == (200, {"predictions": [
            {"y": 4321.0}]})
        reordered = {"dataframe_split": {"columns": ["feature4", "feature2", "feature1",
                                                     "feature3"], "data": [[4, 2, 1, 3]]}}
        assert invoke("four", json.dumps(reordered).encode()) == (200, {"predictions": [
            {"y": 4321.0}]})
        records = {"dataframe_records": [{"feature3": 3, "feature1": 1, "feature4": 4,
                                          "feature2": 2}]}
        assert invoke("four", json.dumps(records).encode()) == (200, {"predictions": [
            {"y": 4321.0}]})
        status, answer = invoke("four", json.dumps({"dataframe_split": {
            "columns": ["feature1", "feature2", "feature3"], "data": [[1, 2, 3]]}}).encode())
        assert status == 422 and "missing columns ['feature4']" in answer["error"]
        # a single input with feature names: named columns or records in inputs and
        # instances are a table, as MLflow reads a model with a column signature
        for named in ({"instances": [{"feature3": 3, "feature1": 1, "feature4": 4,
                                      "feature2": 2}]},
                      {"inputs": [{"feature3": 3, "feature1": 1, "feature4": 4,
                                   "feature2": 2}]},
                      {"inputs": {"feature2": [2], "feature1": [1], "feature4": [4],
                                  "feature3": [3]}}):
            assert invoke("four", json.dumps(named).encode()) == (200, {"predictions": [
                {"y": 4321.0}]}), named
        status, answer = invoke("four", b'{"inputs": {"feature1": [1, 2], "feature2": [2]}}')
        assert status == 422 and "one length" in answer["error"], answer
        # MLflow docs: {"instances": [1.0, 2.0, 5.0]}
        assert invoke("vector", b'{"instances": [1.0, 2.0, 5.0]}') == (200, {
            "predictions": {"y": [2.0, 4.0, 10.0]}})
        # inputs and instances in dict forms; a table's columns matched to inputs by name
        assert invoke("pair", b'{"inputs": {"a": [[1], [2]], "b": [[3], [4]]}}') == (200, {
            "predictions": {"y": [[13.0], [24.0]]}})
        assert invoke("pair", b'{"instances": [{"a": [1], "b": [3]}, {"a": [2], "b": [4]}]}'
                      ) == (200, {"predictions": {"y": [[13.0], [24.0]]}})
        assert invoke("pair", b'{"dataframe_split": {"columns": ["b", "a"], '
                              b'"data": [[3, 1], [4, 2]]}}') == (200, {
            "predictions": [{"y": 13.0}, {"y": 24.0}]})
        # MLflow docs: curl ... -H 'Content-Type: application/csv' --data '1,2,3,4'
        # (pandas reads a header and no rows: an empty prediction)
        assert invoke("plain", b"1,2,3,4", "application/csv") == (200, {"predictions": []})
        csv_body = b"feature2,feature1,feature4,feature3\n2,1,4,3\n20,10,40,30\n"
        assert invoke("four", csv_body, "text/csv; charset=utf-8") == (200, {"predictions": [
            {"y": 4321.0}, {"y": 43210.0}]})
        assert invoke("four", csv_body, "text/csv; charset=latin-1")[0] == 415
        assert invoke("four", csv_body, "text/plain")[0] == 415
        status, answer = invoke("two", b'{"inputs": [[1, 2]], "instances": [[1, 2]]}')
        assert status == 400 and "exactly one of" in answer["error"]
        assert invoke("two", b'{"inputs": [[1, 2]], "params": {"k": 1}}')[0] == 200


def test_ping_health_and_version_need_no_key(project: Callable[..., Path],
                                             cli: Callable[..., Result]) -> None:
    project({"models/two.onnx": onnx_model(), "serving.yaml": """\
kind: Model
name: two
from: {path: models/two.onnx}
---
kind: Endpoint
name: api
deployments: [{name: two, model: two}]
traffic: {two: 100}
"""})
    with applied(cli) as (url, _):
        assert call(url, None, "GET", "/ping")[:2] == (200, "\n")
        assert call(url, None, "GET", "/health")[:2] == (200, "\n")
        status, version, _ = call(url, None, "GET", "/version")
        assert (status, version) == (200, "0.1.0")
        assert call(url, None, "POST", "/invocations", {"inputs": [[1, 2]]})[0] == 401

"""a client's mistake is never a 500 (nor a silent cast), and a
rollout is not rolled back because clients send bad tensors."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Result
from tests.endpoint_client import Client, applied, call

ENDPOINT = """\
kind: Model
name: typed
from: {path: models/typed.onnx}
---
kind: Model
name: typed-next
from: {path: models/typed-next.onnx}
---
kind: Endpoint
name: api
auth: key
deployments:
  - name: blue
    model: typed
  - name: green
    model: typed-next
traffic: {blue: 100}
"""


def typed_model(offset: float = 0.0) -> bytes:
    """y = a + b + c + x + offset, from inputs of four datatypes: INT8 a, UINT8 b,
    INT64 c and FP32 x, each [N]."""
    from onnx import TensorProto, helper

    inputs = [("a", TensorProto.INT8), ("b", TensorProto.UINT8), ("c", TensorProto.INT64),
              ("x", TensorProto.FLOAT)]
    nodes = [helper.make_node("Cast", [name], [f"{name}f"], to=TensorProto.FLOAT)
             for name, _ in inputs[:3]]
    nodes += [helper.make_node("Add", ["af", "bf"], ["ab"]),
              helper.make_node("Add", ["ab", "cf"], ["abc"]),
              helper.make_node("Add", ["abc", "x"], ["abcx"]),
              helper.make_node("Add", ["abcx", "offset"], ["y"])]
    graph = helper.make_graph(
        nodes, "typed", [helper.make_tensor_value_info(n, t, [None]) for n, t in inputs],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None])],
        [helper.make_tensor("offset", TensorProto.FLOAT, [1], [offset])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def request(a: str = "[1]", b: str = "[2]", c: str = "[3]", x: str = "[0.5]",
            datatype_x: str = "FP32", shape: str = "[1]", extra: str = "") -> bytes:
    """A v2 request as text, so values JSON can hold and Python cannot (2**70) are sent
    exactly as a client would write them."""
    def one(name: str, datatype: str, data: str) -> str:
        return (f'{{"name": "{name}", "shape": {shape}, "datatype": "{datatype}", '
                f'"data": {data}}}')

    inputs = [one("a", "INT8", a), one("b", "UINT8", b), one("c", "INT64", c),
              one("x", datatype_x, x)]
    return ('{"inputs": [' + ", ".join(inputs) + extra + "]}").encode()


def test_bad_tensors_are_422_with_the_reason_and_wrong_methods_405(
        project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    project({"models/typed.onnx": typed_model(), "models/typed-next.onnx": typed_model(1.0),
             "serving.yaml": ENDPOINT})
    with applied(cli) as (url, key), Client(url, key) as client:
        status, body, _ = client.request("POST", "/v2/models/api/infer", request())
        assert (status, body["outputs"][0]["data"]) == (200, [6.5])
        cases = [
            (request(a="[1000]"), "input a: 1000 is out of range for INT8 [-128, 127]"),
            (request(b="[-1]"), "input b: -1 is out of range for UINT8 [0, 255]"),
            (request(c="[1180591620717411303424]"), "is out of range for INT64"),
            (request(c="[1.5]"), "input c: 1.5 is not an integer (INT64)"),
            (request(x="[0.5]", datatype_x="FP64"),
             "input x: datatype FP64 is not the model's FP32"),
            (request(x="[true]", datatype_x="BOOL"),
             "input x: datatype BOOL is not the model's FP32"),
            (request(x="[null]"), "input x: null is not a number"),
            (request(x='["0.5"]'), "input x: '0.5' is not a number"),
            (request(shape="[-1]"), "input a: shape must be a list of non-negative integers"),
            (request(extra=', {"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}'),
             "input x is given twice"),
            (request(datatype_x='["FP32"]').replace(b'"["FP32"]"', b'["FP32"]'),
             "input x: datatype ['FP32'] is not one of"),
        ]
        for body_bytes, fragment in cases:
            status, answer, _ = client.request("POST", "/v2/models/api/infer", body_bytes)
            assert status == 422 and fragment in answer["error"], (body_bytes, answer)
        for body_json, fragment in (({"inputs": {"a": [1000], "b": [2], "c": [3], "x": [0.5]}},
                                     "input a: 1000 is out of range for INT8"),
                                    ({"inputs": {"a": [1], "b": [None], "c": [3], "x": [0.5]}},
                                     "input b: null is not a number")):
            status, answer, _ = client.request("POST", "/invocations", body_json)
            assert status == 422 and fragment in answer["error"], answer
        for method, path, allowed in (("POST", "/v2/health/live", "GET, HEAD"),
                                      ("DELETE", "/v2/health/ready", "GET, HEAD"),
                                      ("PUT", "/v2/models/api", "GET, HEAD"),
                                      ("POST", "/metrics", "GET, HEAD"),
                                      ("GET", "/invocations", "POST"),
                                      ("PATCH", "/v2/models/api/infer", "POST")):
            status, answer, headers = client.request(method, path, b"{}")
            assert (status, headers.get("allow")) == (405, allowed), (method, path, answer)
        assert client.request("HEAD", "/v2/health/ready")[0] == 200
        metrics = client.request("GET", "/metrics")[1]
        assert 'code="500"' not in metrics and 'code="422"' in metrics


def test_a_rollout_is_not_rolled_back_by_clients_sending_bad_tensors(
        project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    """Before: INT8 1000 was a 500 of the deployment answering it, and those 500s rolled
    a healthy deployment back."""
    project({"models/typed.onnx": typed_model(), "models/typed-next.onnx": typed_model(1.0),
             "serving.yaml": ENDPOINT})
    with applied(cli) as (url, key):
        statuses: Counter[int] = Counter()
        stop = threading.Event()

        def load() -> None:
            deadline = time.monotonic() + 60
            with Client(url, key) as client:
                while not stop.is_set() and time.monotonic() < deadline:
                    bad = statuses[200] > statuses[422] + statuses[500]
                    status = client.request("POST", "/v2/models/api/infer",
                                            request(a="[1000]") if bad else request())[0]
                    statuses[status] += 1

        threads = [threading.Thread(target=load) for _ in range(3)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.3)
            result = cli("endpoints", "rollout", "api", "--to", "green", "--steps", "50,100",
                         "--hold", "0.5s", "--max-error-rate", "0.02")
        finally:
            stop.set()
            for thread in threads:
                thread.join()
        assert result.code == 0, result.out + result.err
        assert set(statuses) == {200, 422}, statuses
        status, answer, _ = call(url, key, "POST", "/v2/models/api/infer", request())
        assert (status, answer["outputs"][0]["data"]) == (200, [7.5])

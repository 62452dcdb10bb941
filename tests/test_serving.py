"""Endpoints on the local provider: real server processes on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import Result, onnx_model
from tests.endpoint_client import Client, call

ENDPOINT = """\
kind: Model
name: fraud
from: {{path: models/fraud.onnx}}
---
kind: Model
name: other
from: {{path: models/other.onnx}}
---
kind: Endpoint
name: api
auth: key
workers: {workers}
max_request_bytes: 2048
deployments:
  - name: blue
    model: fraud
    request: {{max_batch_size: 16, max_batch_delay_ms: 1}}
  - name: green
    model: other
traffic: {traffic}
mirror: {mirror}
collect: {{sample: 1.0}}
"""


class Load:
    """Requests on `threads` keep-alive connections in the background, from `with` until
    its end: at most `limit` requests and `seconds` seconds. A dropped connection is
    reopened and counted in `dropped`."""

    def __init__(self, url: str, key: str | None, threads: int = 4, limit: int = 50_000,
                 seconds: float = 120.0, body: Any = None,
                 headers: dict[str, str] | None = None) -> None:
        self.url, self.key, self.limit, self.seconds = url, key, limit, seconds
        self.body = body if body is not None else {"inputs": [[1, 2]]}
        self.headers = headers
        self.statuses: Counter[int] = Counter()
        self.models: Counter[str] = Counter()
        self.dropped = 0
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run) for _ in range(threads)]

    def _run(self) -> None:
        deadline = time.monotonic() + self.seconds
        client = Client(self.url, self.key)
        while not self.stop.is_set() and time.monotonic() < deadline:
            with self._lock:
                if sum(self.statuses.values()) >= self.limit:
                    break
            try:
                status, _, headers = client.request("POST", "/invocations", self.body,
                                                    self.headers)
            except (ConnectionError, http.client.HTTPException):
                client.close()
                client = Client(self.url, self.key)
                with self._lock:
                    self.dropped += 1
                continue
            with self._lock:
                self.statuses[status] += 1
                self.models[headers.get("mlinfra-model", "-")] += 1
        client.close()

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join()

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self.statuses.values())


def v2(rows: list[list[float]]) -> dict[str, Any]:
    return {"inputs": [{"name": "features", "shape": [len(rows), 2], "datatype": "FP32",
                        "data": [x for row in rows for x in row]}]}


@pytest.fixture
def served(project: Callable[..., Path], cli: Callable[..., Result]
           ) -> Iterator[tuple[Path, Callable[..., Result], str, str]]:
    root = project({"models/fraud.onnx": onnx_model(), "models/other.onnx": onnx_model((0.3, 0.9)),
                    "serving.yaml": ENDPOINT.format(workers=1, traffic="{blue: 100}",
                                                    mirror="{}")})
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    outputs = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]
    key = (root / ".mlinfra" / "dev" / "endpoints" / "api" / "operator.key").read_text().strip()
    try:
        yield root, cli, outputs["url"], key
    finally:
        cli("destroy", "--auto-approve")


def test_an_alias_of_a_model_with_no_version_yet_says_the_whole_way_to_set_it(
        project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    """An endpoint's alias on a fresh project: `models alias` refuses every version
    (there is none), so the hint says to register the model first, then set the alias,
    or add a Promotion; once the model has a version, only the last two."""
    serving = ENDPOINT.format(workers=1, traffic="{blue: 100}", mirror="{}").replace(
        "model: fraud\n", "model: fraud@prod\n").replace("model: other", "model: fraud@prod")
    project({"models/fraud.onnx": onnx_model(), "models/other.onnx": onnx_model(),
             "serving.yaml": serving})
    fresh = cli("plan")
    assert fresh.code == 1
    assert ("alias fraud@prod points nowhere, and model fraud has no version yet: register "
            "it first with mlinfra apply --target model.fraud, then set the alias with "
            "mlinfra models alias fraud@prod VERSION, or add a Promotion") in fresh.err
    assert cli("apply", "--auto-approve", "--target", "model.fraud").code == 0
    plan = cli("plan")
    assert ("alias fraud@prod points nowhere: set it with mlinfra models alias fraud@prod "
            "VERSION, or add a Promotion") in plan.err
    assert cli("models", "alias", "fraud@prod", "1").code == 0
    assert cli("plan").code == 0


def test_answers_match_onnxruntime_in_process(served: Any) -> None:
    root, _, url, key = served
    session = ort.InferenceSession(str(root / "models" / "fraud.onnx"))
    rows = [[0.5, 1.0], [-2.0, 0.25], [3.0, -1.0]]
    label, probabilities = session.run(None, {"features": np.array(rows, dtype=np.float32)})
    client = Client(url, key)
    status, body, headers = client.request("POST", "/v2/models/api/infer", v2(rows) | {"id": "r1"})
    assert status == 200 and body["id"] == "r1" and headers["mlinfra-model"] == "fraud:1"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["label"]["data"] == label.tolist() and outputs["label"]["datatype"] == "INT64"
    assert outputs["probabilities"]["shape"] == [3, 2]
    assert outputs["probabilities"]["data"] == probabilities.ravel().tolist()
    for request in ({"inputs": rows}, {"instances": rows}):
        status, body, _ = client.request("POST", "/invocations", request)
        assert status == 200, body
        assert body["predictions"] == {"label": label.tolist(),
                                       "probabilities": probabilities.tolist()}
    status, body, _ = client.request("POST", "/invocations",
                                     {"dataframe_split": {"columns": ["a", "b"], "data": rows}})
    assert body["predictions"] == [{"label": int(a), "probabilities": p.tolist()}
                                   for a, p in zip(label, probabilities, strict=True)]
    status, meta, _ = client.request("GET", "/v2/models/api")
    assert meta["inputs"] == [{"name": "features", "datatype": "FP32", "shape": [-1, 2]}]
    client.close()


def test_client_mistakes_are_4xx(served: Any) -> None:
    _, _, url, key = served
    client = Client(url, key)
    cases = [
        (b"{not json", "/v2/models/api/infer", 400, "malformed JSON"),
        (v2([[1.0, 2.0, 3.0]]), "/v2/models/api/infer", 422, "does not fit shape"),
        ({"inputs": [{"name": "features", "shape": [1, 3], "datatype": "FP32",
                      "data": [1, 2, 3]}]}, "/v2/models/api/infer", 422,
         "expected shape [-1, 2], got [1, 3]"),
        ({"inputs": [{"name": "wrong", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]},
         "/v2/models/api/infer", 422, "missing ['features']"),
        ({"inputs": [{"name": "features", "shape": [1, 2], "datatype": "BYTES",
                      "data": ["a", "b"]}]}, "/v2/models/api/infer", 422, "datatype BYTES"),
        ({"inputs": [[1, 2], [3]]}, "/invocations", 422, "same length"),
        (v2([[1.0, 2.0]]), "/v2/models/nope/infer", 404, "this endpoint serves 'api'"),
        (b"x" * 4096, "/v2/models/api/infer", 413, "larger than 2048 bytes"),
    ]
    for body, path, status, fragment in cases:
        got, answer, _ = client.request("POST", path, body)
        assert (got, fragment in answer["error"]) == (status, True), (path, answer)
    for parts, status in (([b'{"inputs": [[1.0,', b' 2.0]]}'], 200), ([b"x" * 1500] * 3, 413)):
        # a body streamed in chunks, with no content-length: joined, and still limited
        client.conn.request("POST", "/invocations", body=iter(parts), encode_chunked=True,
                            headers={"authorization": f"Bearer {key}"})
        response = client.conn.getresponse()
        response.read()
        assert response.status == status
    got, answer, _ = client.request("POST", "/v2/models/api/infer", v2([[1, 2]]),
                                    {"mlinfra-deployment": "purple"})
    assert got == 404 and "deployments: blue, green" in answer["error"]
    assert client.request("GET", "/v2/models/api/infer")[0] == 405
    client.close()


def test_auth_keys_and_health(served: Any) -> None:
    root, cli, url, _ = served
    anonymous = Client(url, None)
    assert anonymous.request("GET", "/v2/health/ready")[0] == 200
    assert anonymous.request("GET", "/v2/health/live")[0] == 200
    status, _, headers = anonymous.request("POST", "/v2/models/api/infer", v2([[1, 2]]))
    anonymous.close()
    assert status == 401 and headers["www-authenticate"] == "Bearer"
    assert call(url, "mlk_wrong", "POST", "/invocations", {"inputs": [[1, 2]]})[0] == 401
    shown = cli("endpoints", "keys", "api").out
    keys = dict(line.split(": ") for line in shown.strip().splitlines())
    assert set(keys) == {"primary", "secondary"}
    assert cli("endpoints", "keys", "api").code == 1  # shown once
    primary = Client(url, keys["primary"])
    assert primary.request("POST", "/invocations", {"inputs": [[1, 2]]})[0] == 200
    primary.close()
    regenerated = cli("endpoints", "keys", "api", "--regenerate", "primary").out
    new = regenerated.split(": ")[1].strip()
    assert call(url, keys["primary"], "POST", "/invocations",
                                                {"inputs": [[1, 2]]})[0] == 401
    assert call(url, keys["secondary"], "POST", "/invocations",
                                                  {"inputs": [[1, 2]]})[0] == 200
    assert call(url, new, "POST", "/invocations", {"inputs": [[1, 2]]})[0] == 200
    state = (root / ".mlinfra" / "dev" / "state.db").read_bytes()
    assert keys["secondary"].encode() not in state and new.encode() not in state


def test_invoke_command_and_metrics(served: Any, tmp_path: Path) -> None:
    root, cli, url, key = served
    request = tmp_path / "request.json"
    request.write_text(json.dumps(v2([[1.0, 2.0]])))
    result = cli("endpoints", "invoke", "api", "--data", str(request))
    assert result.code == 0 and "HTTP 200 in" in result.err and "from fraud:1" in result.err
    pinned = cli("endpoints", "invoke", "api", "--data", str(request), "--deployment", "green")
    assert "from other:1" in pinned.err
    import pyarrow.parquet as pq

    deadline = time.monotonic() + 10  # a worker writes its captures once they are quiet
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(rows) < 2:
        rows = [row for p in (root / "data" / "captures" / "api" / "requests").glob(
            "hour=*/*.parquet") for row in pq.read_table(p).to_pylist()]
        time.sleep(0.1)
    assert len(rows) == 2, "collect: sample 1.0 writes every request to the datastore"
    assert {(r["model"], r["version"], r["row"]) for r in rows} == {("fraud", 1, 0),
                                                                    ("other", 1, 0)}
    assert all((r["features.0"], r["features.1"]) == (1.0, 2.0) for r in rows)
    assert all(len(r["request_id"]) == 32 for r in rows)
    status, text, _ = call(url, key, "GET", "/metrics")
    assert status == 200
    assert 'mlinfra_requests_total{endpoint="api",deployment="blue",code="200"}' in text
    assert 'mlinfra_request_seconds_bucket{endpoint="api",deployment="blue",le="+Inf"}' in text


def test_mirror_is_scored_and_never_answered(served: Any) -> None:
    root, cli, url, key = served
    (root / "serving.yaml").write_text(ENDPOINT.format(workers=1, traffic="{blue: 100}",
                                                       mirror="{green: 50}"))
    assert cli("apply", "--auto-approve").code == 0
    client = Client(url, key)
    models = {client.request("POST", "/invocations", {"inputs": [[1, 2]]})[2]["mlinfra-model"]
              for _ in range(200)}
    assert models == {"fraud:1"}
    time.sleep(0.3)
    text = client.request("GET", "/metrics")[1]
    client.close()
    differ = [line for line in text.splitlines()
              if line.startswith('mlinfra_mirror_total{endpoint="api",deployment="green",'
                                 'outcome="differ"}')]
    assert differ and 50 <= int(differ[0].split()[-1]) <= 150


def test_killed_server_is_drift_and_restarted(served: Any) -> None:
    import signal

    _, cli, url, key = served
    pid = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]["pid"]
    os.killpg(pid, signal.SIGKILL)
    time.sleep(0.2)
    plan = cli("plan", "--detailed-exitcode")
    assert plan.code == 2 and f"its server (pid {pid}) is not running" in plan.out
    assert cli("apply", "--auto-approve").code == 0
    url = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]["url"]
    assert call(url, key, "POST", "/invocations", {"inputs": [[1, 2]]})[0] == 200


def test_20000_requests_while_models_and_traffic_change(served: Any) -> None:
    """Two model changes and traffic 0 -> 50 -> 100, under load that lasts until all of
    them are applied (and at least 20,000 requests): every answer is 200."""
    root, cli, url, key = served
    before = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]
    (root / "serving.yaml").write_text(ENDPOINT.format(workers=2, traffic="{blue: 100}",
                                                       mirror="{}"))
    assert cli("apply", "--auto-approve").code == 0  # workers 2: a restart, before the load
    after = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]
    assert after["pid"] != before["pid"] and after["url"] == url and after["workers"] == 2
    assert json.loads(cli("endpoints", "show", "api").out)["workers"] == 2
    minimum, threads = 20_000, 8
    statuses: Counter[int] = Counter()
    models: Counter[str] = Counter()
    lock = threading.Lock()
    changed = threading.Event()  # every change applied: the load may stop past minimum
    deadline = time.monotonic() + 240

    def load() -> None:
        local_status: Counter[int] = Counter()
        local_models: Counter[str] = Counter()
        with Client(url, key) as client:
            while time.monotonic() < deadline and not (
                    changed.is_set() and local_status.total() >= minimum // threads):
                status, _, headers = client.request("POST", "/v2/models/api/infer",
                                                    v2([[1, 2]]))
                local_status[status] += 1
                local_models[headers.get("mlinfra-model", "-")] += 1
        with lock:
            statuses.update(local_status)
            models.update(local_models)

    workers = [threading.Thread(target=load) for _ in range(threads)]
    for worker in workers:
        worker.start()
    steps = [("{blue: 50, green: 50}", None), ("{blue: 50, green: 50}", (2.0, 1.0)),
             ("{blue: 0, green: 100}", None), ("{blue: 0, green: 100}", (0.1, 0.1))]
    try:
        for traffic, weights in steps:
            time.sleep(0.3)
            if weights is not None:
                (root / "models" / "other.onnx").write_bytes(onnx_model(weights))
            (root / "serving.yaml").write_text(ENDPOINT.format(workers=2, traffic=traffic,
                                                               mirror="{}"))
            applied = cli("apply", "--auto-approve")
            assert applied.code == 0, applied.err
            assert "endpoint.api: Modifications complete" in applied.out
        time.sleep(0.3)  # requests answered by the last change too
    finally:
        changed.set()
        for worker in workers:
            worker.join()
    total = sum(statuses.values())
    assert total >= minimum and statuses == Counter({200: total}), statuses
    assert {"fraud:1", "other:1", "other:2", "other:3"} <= set(models), models


def failing_model() -> bytes:
    """Answers the all-zero warm-up, fails on any request whose first feature is not 0
    (an out-of-range Gather): it loads, then fails every real request."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Gather", ["features", "zero"], ["first"], axis=1),
        helper.make_node("Cast", ["first"], ["index"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "index"], ["y0"], axis=0),
        helper.make_node("Reshape", ["y0", "shape"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "fails",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
         helper.make_tensor("table", TensorProto.FLOAT, [1], [0.5]),
         helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_rollout_of_a_failing_model_rolls_back_by_itself(
        project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    project({"models/fraud.onnx": onnx_model(), "models/other.onnx": failing_model(),
             "serving.yaml": ENDPOINT.format(workers=2, traffic="{blue: 100, green: 0}",
                                             mirror="{}")})
    assert cli("apply", "--auto-approve").code == 0
    try:
        root = Path.cwd()
        url = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]["url"]
        key = (root / ".mlinfra/dev/endpoints/api/operator.key").read_text().strip()
        statuses: Counter[int] = Counter()
        stop = threading.Event()

        def load() -> None:
            client = Client(url, key)
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline:
                statuses[client.request("POST", "/invocations", {"inputs": [[1, 2]]})[0]] += 1
            client.close()

        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        result = cli("endpoints", "rollout", "api", "--to", "green", "--steps", "10,50,100",
                     "--hold", "1s", "--max-error-rate", "0.02")
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        assert result.code == 1, result.out + result.err
        assert "Rolled back to" in result.err and "error rate 1.000 > 0.02 at 10%" in result.err
        total = sum(statuses.values())
        assert set(statuses) <= {200, 500} and total > 200
        assert statuses[500] / total <= 0.10, statuses  # bounded by the first step's 10%
        after = {call(url, key, "POST", "/invocations", {"inputs": [[1, 2]]})[0]
                 for _ in range(50)}
        assert after == {200}
        audit = (root / ".mlinfra/dev/state.db").read_bytes()
        assert b"rolled back green: error rate" in audit
    finally:
        cli("destroy", "--auto-approve")


def test_rollout_of_a_good_deployment_completes(served: Any) -> None:
    _, cli, url, key = served
    with Load(url, key) as load:
        result = cli("endpoints", "rollout", "api", "--to", "green", "--steps", "50,100",
                     "--hold", "0.5s", "--min-requests", "20")
    assert result.code == 0, result.err
    assert "Rollout complete: green takes 100% of traffic" in result.out
    assert set(load.statuses) == {200}
    assert {call(url, key, "POST", "/invocations", {"inputs": [[1, 2]]})[2]["mlinfra-model"]
            for _ in range(20)} == {"other:1"}
    listed = cli("endpoints", "list").out  # the live split, not the YAML's
    assert '{"blue": 0, "green": 100}' in listed and "ready" in listed
    shown = json.loads(cli("endpoints", "show", "api").out)
    assert shown["traffic"] == {"blue": 0, "green": 100}
    assert shown["configured_traffic"] == {"blue": 100}
    plan = cli("plan", "--detailed-exitcode")  # the YAML still says blue 100
    assert plan.code == 2
    assert 'traffic is {"blue": 0, "green": 100}; the configuration says {"blue": 100}' in (
        plan.out)
    assert cli("apply", "--auto-approve").code == 0
    assert {call(url, key, "POST", "/invocations", {"inputs": [[1, 2]]})[2]["mlinfra-model"]
            for _ in range(20)} == {"fraud:1"}
    assert cli("plan", "--detailed-exitcode").code == 0


def test_a_rollout_with_no_traffic_says_so_and_stops(served: Any) -> None:
    """A hold with no request at all is not a success."""
    _, cli, url, key = served
    result = cli("endpoints", "rollout", "api", "--to", "green", "--steps", "50,100",
                 "--hold", "0.3s")
    assert result.code == 1, result.out
    assert "no request reached the endpoint in 0.3s at 50%" in result.err
    assert 'traffic back to {"blue": 100, "green": 0}' in result.err
    assert {call(url, key, "POST", "/invocations", {"inputs": [[1, 2]]})[2]["mlinfra-model"]
            for _ in range(20)} == {"fraud:1"}
    assert cli("plan", "--detailed-exitcode").code == 0


def test_a_hold_with_too_few_requests_is_inconclusive(served: Any) -> None:
    """Traffic that never reaches the deployment (every request pinned to blue)
    holds the step again, then stops as inconclusive."""
    _, cli, url, key = served
    with Load(url, key, threads=2, headers={"mlinfra-deployment": "blue"}):
        result = cli("endpoints", "rollout", "api", "--to", "green", "--steps", "50,100",
                     "--hold", "0.3s", "--min-requests", "5")
    assert result.code == 1, result.out
    assert result.out.count("inconclusive (0 of 5 requests needed); holding again") == 9
    assert "Rollout inconclusive, traffic back to " in result.err, result.err
    assert ("0 requests reached green in 3s at 50%, fewer than the 5 needed to judge"
            in result.err), result.err
    assert "Rolled back" not in result.err  # no verdict: not a rollback
    assert cli("plan", "--detailed-exitcode").code == 0  # the split it started from


def slow_when_asked(products: int = 100) -> bytes:
    """Fast, except for a request whose largest feature is above 0.5: that one runs a
    chain of 1000x1000 matrix products (an If on the input)."""
    from onnx import TensorProto, helper

    size = 1000
    slow_nodes = [helper.make_node("Tile", ["features", "repeats"], ["x0"])]
    for i in range(products):
        slow_nodes.append(helper.make_node("MatMul", [f"x{i}", "w"], [f"x{i + 1}"]))
    slow_nodes += [helper.make_node("ReduceMean", [f"x{products}"], ["m"], axes=[1],
                                    keepdims=1),
                   helper.make_node("Slice", ["m", "start", "end"], ["slow_y"])]
    floats = TensorProto.FLOAT
    slow = helper.make_graph(slow_nodes, "slow", [],
                             [helper.make_tensor_value_info("slow_y", floats, [None, 1])])
    fast = helper.make_graph(
        [helper.make_node("Slice", ["features", "start", "end", "one"], ["fast_y"])], "fast",
        [], [helper.make_tensor_value_info("fast_y", floats, [None, 1])])
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("ReduceMax", ["features"], ["top"], keepdims=0),
         helper.make_node("Greater", ["top", "half"], ["asked"]),
         helper.make_node("If", ["asked"], ["y"], then_branch=slow, else_branch=fast)],
        "slow-when-asked", [helper.make_tensor_value_info("features", floats, [None, 2])],
        [helper.make_tensor_value_info("y", floats, [None, 1])],
        [helper.make_tensor("repeats", TensorProto.INT64, [2], [size, size // 2]),
         helper.make_tensor("w", floats, [size, size],
                            (rng.standard_normal((size, size)) / size).astype(
                                np.float32).ravel().tolist()),
         helper.make_tensor("start", TensorProto.INT64, [1], [0]),
         helper.make_tensor("end", TensorProto.INT64, [1], [1]),
         helper.make_tensor("one", TensorProto.INT64, [1], [1]),
         helper.make_tensor("half", floats, [], [0.5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_a_rollout_judges_each_hold_on_its_own_requests(
        project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    """Green answered slowly before the rollout, fast during it. Its lifetime p99
    is high; each hold window's is low, and the rollout completes."""
    project({"models/fraud.onnx": onnx_model(), "models/other.onnx": slow_when_asked(),
             "serving.yaml": ENDPOINT.format(workers=1, traffic="{blue: 100, green: 0}",
                                             mirror="{}")})
    assert cli("apply", "--auto-approve").code == 0
    try:
        root = Path.cwd()
        url = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]["url"]
        key = (root / ".mlinfra/dev/endpoints/api/operator.key").read_text().strip()
        green = {"mlinfra-deployment": "green"}
        for _ in range(5):
            started = time.monotonic()
            assert call(url, key, "POST", "/invocations", {"inputs": [[1, 1]]}, green)[0] == 200
            assert time.monotonic() - started > 0.6  # slow: past the 500 ms threshold
        with Load(url, key, body={"inputs": [[0.1, 0.2]]}) as load:
            result = cli("endpoints", "rollout", "api", "--to", "green", "--steps", "20,100",
                         "--hold", "0.5s", "--min-requests", "20", "--max-p99-ms", "500")
        assert result.code == 0, result.out + result.err
        assert "Rollout complete: green takes 100% of traffic" in result.out
        assert set(load.statuses) == {200}
    finally:
        cli("destroy", "--auto-approve")


def slow_model(products: int = 30) -> bytes:
    """A chain of 1000x1000 matrix products: long enough to notice (on one thread)."""
    from onnx import TensorProto, helper

    size = 1000
    nodes = [helper.make_node("Tile", ["features", "repeats"], ["x0"])]
    for i in range(products):
        nodes.append(helper.make_node("MatMul", [f"x{i}", "w"], [f"x{i + 1}"]))
    nodes.append(helper.make_node("ReduceMean", [f"x{products}"], ["m"], axes=[1],
                                  keepdims=1))
    nodes.append(helper.make_node("Slice", ["m", "start", "end"], ["y"]))
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("repeats", TensorProto.INT64, [2], [size, size // 2]),
         helper.make_tensor("w", TensorProto.FLOAT, [size, size],
                            (rng.standard_normal((size, size)) / size).astype(
                                np.float32).ravel().tolist()),
         helper.make_tensor("start", TensorProto.INT64, [1], [0]),
         helper.make_tensor("end", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_a_slow_model_stalls_nothing_else(project: Callable[..., Path],
                                          cli: Callable[..., Result]) -> None:
    slow_endpoint = ENDPOINT.format(workers=1, traffic="{blue: 100}", mirror="{}").replace(
        "  - name: green\n    model: other\n",
        "  - name: green\n    model: other\n    request: {timeout_ms: 60000}\n"
        "  - name: hasty\n    model: other\n    request: {timeout_ms: 5}\n")
    project({"models/fraud.onnx": onnx_model(), "models/other.onnx": slow_model(),
             "serving.yaml": slow_endpoint})
    assert cli("apply", "--auto-approve").code == 0
    try:
        root = Path.cwd()
        url = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]["url"]
        key = (root / ".mlinfra/dev/endpoints/api/operator.key").read_text().strip()
        started = time.monotonic()
        status, _, _ = call(url, key, "POST", "/invocations", {"inputs": [[1, 2]]},
                            {"mlinfra-deployment": "green"})
        slow_s = time.monotonic() - started
        assert status == 200 and slow_s > 0.1, slow_s
        result: dict[str, Any] = {}
        slow = threading.Thread(target=lambda: result.update(answer=call(
            url, key, "POST", "/invocations", {"inputs": [[1, 2]]},
            {"mlinfra-deployment": "green"})))
        slow.start()
        time.sleep(slow_s / 4)
        for path, headers in (("/v2/health/ready", {}), ("/invocations",
                                                         {"mlinfra-deployment": "blue"})):
            body = {"inputs": [[1, 2]]} if path == "/invocations" else None
            got = call(url, key, "POST" if body else "GET", path, body, headers)[0]
            assert got == 200, path
        assert slow.is_alive()  # those answers came while the slow one was computing
        slow.join()
        assert result["answer"][0] == 200
        status, answer, _ = call(url, key, "POST", "/invocations", {"inputs": [[1, 2]]},
                                 {"mlinfra-deployment": "hasty"})
        assert status == 504 and "longer than 5 ms" in answer["error"]
    finally:
        cli("destroy", "--auto-approve")


def test_changed_request_settings_take_effect_and_unchanged_ones_are_kept(
        tmp_path: Path) -> None:
    from mlinfra.serving.table import build

    model = tmp_path / "m.onnx"
    model.write_bytes(onnx_model())
    import hashlib

    spec = {"model": "m", "version": 1, "path": str(model), "timeout_ms": 5000,
            "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
            "max_batch_size": 32, "max_batch_delay_ms": 2}
    config = {"endpoint": "e", "generation": 1, "deployments": {"d": spec},
              "traffic": {"d": 100}}
    first = build(config)
    same = build({**config, "generation": 2}, first)
    assert same.deployments["d"] is first.deployments["d"]  # nothing reloaded
    smaller = build({**config, "generation": 3,
                     "deployments": {"d": {**spec, "max_batch_size": 4}}}, same)
    assert smaller.deployments["d"] is not first.deployments["d"]
    assert smaller.deployments["d"].batcher.max_batch == 4


def test_a_batch_fills_while_requests_keep_coming(tmp_path: Path) -> None:
    """In-process: requests arriving on consecutive turns of the loop share a batch up to
    max_batch_size; a lone request is scored after one quiet turn, not after the delay."""
    import asyncio
    import hashlib

    from mlinfra.serving.batcher import Batcher
    from mlinfra.serving.model import LoadedModel

    data = onnx_model()
    (tmp_path / "m.onnx").write_bytes(data)
    model = LoadedModel.load("m", 1, tmp_path / "m.onnx", hashlib.sha256(data).hexdigest())
    batcher = Batcher(model, max_batch=4, max_delay_s=30.0)
    assert batcher.inline
    rows = [np.array([[float(i), 1.0]], dtype=np.float32) for i in range(6)]

    async def one_per_turn() -> list[list[np.ndarray]]:
        tasks = []
        for row in rows:
            tasks.append(asyncio.ensure_future(batcher.infer({"features": row})))
            await asyncio.sleep(0)
        return await asyncio.gather(*tasks)

    answers = asyncio.run(one_per_turn())
    assert batcher.batch_sizes == [4, 2]
    for row, (label, probabilities) in zip(rows, answers, strict=True):
        expected = model.run({"features": row})
        assert np.array_equal(label, expected[0]) and np.allclose(probabilities, expected[1])
    # A lone request is not held for the 30 s delay (it would time out here).
    asyncio.run(asyncio.wait_for(batcher.infer({"features": rows[0]}), timeout=20))
    assert batcher.batch_sizes[-1] == 1
    batcher.close()

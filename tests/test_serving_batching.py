"""Batching never mixes clients, and what a client sends never crashes the server nor is
cast: rows that disagree, shapes that cannot be, numbers past a datatype's range are
422; a request that makes the model fail fails alone; anything unhandled is a 500 from
the catch-all, logged once. In-process, through ASGI."""

from __future__ import annotations

import asyncio
import logging
import random
from pathlib import Path
from typing import Any

import pytest

from tests.serving_inprocess import InProcess, v2, write_config

INFER = "/v2/models/api/infer"


def gather_model() -> bytes:
    """y = 10 * a + b for two INT64 [N, 1] inputs; `a` indexes a table of ten values, so
    an `a` outside 0..9 makes onnxruntime fail the call."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "a"], ["tens"], axis=0),
         helper.make_node("Add", ["tens", "b"], ["y"])], "gather",
        [helper.make_tensor_value_info("a", TensorProto.INT64, [None, 1]),
         helper.make_tensor_value_info("b", TensorProto.INT64, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.INT64, [None, 1])],
        [helper.make_tensor("table", TensorProto.INT64, [10], [10 * i for i in range(10)])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def identity_model(datatype: int, shape: list[Any]) -> bytes:
    from onnx import helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", datatype, shape)],
        [helper.make_tensor_value_info("y", datatype, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def pair(a: list[int], b: list[int]) -> dict[str, Any]:
    return v2({"a": ("INT64", [len(a), 1], [[x] for x in a]),
               "b": ("INT64", [len(b), 1], [[x] for x in b])})


def test_inputs_that_disagree_on_rows_are_422(tmp_path: Path) -> None:
    async def go() -> None:
        async with InProcess(write_config(tmp_path, gather_model())) as app:
            status, body = await app.request("POST", INFER, pair([1, 2, 3], [4]))
            assert status == 422, body
            assert "inputs a and b must have the same number of rows: 3 and 1" in body["error"]
            status, body = await app.request("POST", INFER, pair([1, 2], [4, 5]))
            assert (status, body["outputs"][0]["data"]) == (200, [14, 25])

    asyncio.run(go())


def test_concurrent_clients_each_get_their_own_rows_and_a_failing_one_fails_alone(
        tmp_path: Path) -> None:
    """Requests of 1 to 4 rows sent together, some with rows that disagree and some that
    make the model fail: every valid one gets exactly its own answer."""
    rng = random.Random(7)

    async def go() -> None:
        async with InProcess(write_config(tmp_path, gather_model(), delay_ms=50)) as app:
            for _ in range(5):
                cases = []
                for _ in range(24):
                    rows = rng.randint(1, 4)
                    a = [rng.randint(0, 9) for _ in range(rows)]
                    b = [rng.randint(0, 1000) for _ in range(rows)]
                    kind = rng.choice(["ok", "ok", "ok", "short", "fails"])
                    if kind == "short":
                        b = [*b, 1]
                    elif kind == "fails":
                        a[0] = 50
                    cases.append((kind, a, b))
                answers = await asyncio.gather(*(app.request("POST", INFER, pair(a, b))
                                                 for _, a, b in cases))
                for (kind, a, b), (status, body) in zip(cases, answers, strict=True):
                    if kind == "ok":
                        assert status == 200, body
                        assert body["outputs"][0]["data"] == [10 * x + y for x, y in
                                                              zip(a, b, strict=True)]
                    elif kind == "short":
                        assert status == 422, body
                    else:
                        assert status == 500 and "inference failed" in body["error"], body
            table = app.app.table
            assert max(table.deployments["blue"].batcher.batch_sizes or [0]) > 1

    asyncio.run(go())


def test_requests_of_other_shapes_are_never_batched_together(tmp_path: Path) -> None:
    """A model whose second dimension is free: requests of width 2 and of width 3 wait
    for batches of their own."""
    from onnx import TensorProto

    async def go() -> None:
        model = identity_model(TensorProto.FLOAT, [None, None])
        async with InProcess(write_config(tmp_path, model, delay_ms=50)) as app:
            bodies = [v2({"x": ("FP32", [1, 2 + i % 2], [[float(i)] * (2 + i % 2)])})
                      for i in range(8)]
            answers = await asyncio.gather(*(app.request("POST", INFER, b) for b in bodies))
            for i, (status, body) in enumerate(answers):
                assert status == 200, body
                assert body["outputs"][0]["data"] == [float(i)] * (2 + i % 2)

    asyncio.run(go())


def test_impossible_shapes_are_422(tmp_path: Path) -> None:
    from onnx import TensorProto

    async def go() -> None:
        model = identity_model(TensorProto.FLOAT, [None])
        async with InProcess(write_config(tmp_path, model)) as app:
            for shape, fragment in (([1] * 65, "65 dimensions, at most 64"),
                                    ([2 ** 63], "larger than any array can be"),
                                    ([0, 2 ** 62], "larger than any array can be")):
                status, body = await app.request(
                    "POST", INFER, v2({"x": ("FP32", shape, [])}))
                assert status == 422 and fragment in body["error"], (shape, body)

    asyncio.run(go())


@pytest.mark.parametrize(("datatype", "onnx_type", "data", "expected"), [
    ("INT64", 7, "[9223372036854775807, 0.0]", [9223372036854775807, 0]),
    ("INT64", 7, "[-9223372036854775808, 1]", [-9223372036854775808, 1]),
    ("UINT64", 13, "[18446744073709551615, 0]", [18446744073709551615, 0]),
    ("INT64", 7, "[9223372036854775808, 0]", "9223372036854775808 is out of range for INT64"),
    ("INT64", 7, "[-9223372036854775809, 0]", "is out of range for INT64"),
    ("UINT64", 13, "[18446744073709551616, 0]", "is out of range for UINT64"),
    ("FP32", 1, "[1e39, 0]", "1e+39 is out of range for FP32"),
    ("FP32", 1, "[1.5, true]", "true is not a number"),
    ("INT64", 7, "[1, true]", "true is not a number"),
])
def test_numbers_are_taken_exactly_or_refused(tmp_path: Path, datatype: str, onnx_type: int,
                                              data: str, expected: Any) -> None:
    """Sent as text, so integers past float64's precision reach the server as written."""
    async def go() -> None:
        model = identity_model(onnx_type, [None])
        async with InProcess(write_config(tmp_path, model)) as app:
            body = (f'{{"inputs": [{{"name": "x", "datatype": "{datatype}", "shape": [2], '
                    f'"data": {data}}}]}}').encode()
            status, answer = await app.request("POST", INFER, body)
            if isinstance(expected, list):
                assert (status, answer["outputs"][0]["data"]) == (200, expected), answer
            else:
                assert status == 422 and expected in answer["error"], answer

    asyncio.run(go())


def test_an_unhandled_error_is_a_500_logged_once(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    from onnx import TensorProto

    from mlinfra.serving import v2 as protocol

    def broken(*_: Any) -> Any:
        raise RuntimeError("a bug nobody handled")

    async def go() -> None:
        model = identity_model(TensorProto.FLOAT, [None])
        async with InProcess(write_config(tmp_path, model)) as app:
            monkeypatch.setattr(protocol, "metadata", broken)
            with caplog.at_level(logging.ERROR, logger="mlinfra.serving"):
                status, body = await app.request("GET", "/v2/models/api")
            assert status == 500 and "internal server error" in body["error"]
            errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert len(errors) == 1 and "GET /v2/models/api" in errors[0].getMessage()
            assert errors[0].exc_info is not None
            assert (await app.request("GET", "/v2/health/ready"))[0] == 200

    asyncio.run(go())


def test_the_server_log_rotates(tmp_path: Path) -> None:
    """What a server writes reaches server.log through the pump, which keeps it and its
    older files within their bounds however much is written."""
    import subprocess
    import sys

    log = tmp_path / "server.log"
    writer = ("import sys\nfor i in range(3000):\n"
              "    sys.stderr.write(f'line {i:05d} ' + 'x' * 40 + '\\n')\n")
    pump = subprocess.Popen([sys.executable, "-m", "mlinfra.serving.server_log", str(log),
                             "20000", "2"], stdin=subprocess.PIPE)
    assert pump.stdin is not None
    subprocess.run([sys.executable, "-c", writer], stderr=pump.stdin, check=True,
                   timeout=60)
    pump.stdin.close()
    assert pump.wait(timeout=30) == 0
    files = {f.name: f for f in tmp_path.glob("server*.log")}
    assert set(files) == {"server.log", "server.1.log", "server.2.log"}
    assert all(f.stat().st_size < 20000 + (64 << 10) for f in files.values())
    # server.log is empty when the last write filled it and rotated it away (a rotation
    # leaves the newest file there, empty, as logrotate's `create` does)
    newest = files["server.log"] if files["server.log"].stat().st_size else \
        files["server.1.log"]
    assert newest.read_text().splitlines()[-1].startswith("line 02999 ")


def test_a_new_server_takes_every_new_connection_of_its_port() -> None:
    """Two servers on one port (a replacement starting beside the server it replaces):
    every new connection goes to the newer, so none waits in the queue of the one about
    to stop; once it stopped, the newer takes them all."""
    import socket

    from mlinfra.serving.__main__ import listen

    old = listen("127.0.0.1", 0)
    port = old.getsockname()[1]
    new = listen("127.0.0.1", port)
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(40)]

    def accepted(sock: socket.socket) -> int:
        sock.setblocking(False)
        count = 0
        while True:
            try:
                conn, _ = sock.accept()
            except BlockingIOError:
                return count
            conn.close()
            count += 1

    try:
        assert (accepted(old), accepted(new)) == (0, 40)
        old.close()
        clients += [socket.create_connection(("127.0.0.1", port), timeout=5)
                    for _ in range(10)]
        assert accepted(new) == 10
    finally:
        for client in clients:
            client.close()
        new.close()

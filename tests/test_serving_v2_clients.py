"""Triton's client (tritonclient.http) with its defaults, which send
and ask for the binary tensor data extension, and model metadata that lists the
versions actually served."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests.conftest import Result, onnx_model
from tests.endpoint_client import applied, call

FIRST = """\
kind: Model
name: fraud
from: {path: models/fraud.onnx}
---
kind: Endpoint
name: api
auth: key
deployments:
  - {name: blue, model: "fraud:1"}
traffic: {blue: 100}
"""
BOTH = FIRST.replace('traffic: {blue: 100}', 'traffic: {blue: 50, green: 50}').replace(
    '  - {name: blue, model: "fraud:1"}\n',
    '  - {name: blue, model: "fraud:1"}\n  - {name: green, model: "fraud:2"}\n')


def expected(model: bytes, rows: np.ndarray) -> list[np.ndarray]:
    return list(ort.InferenceSession(model).run(None, {"features": rows}))


def test_tritonclient_with_its_defaults(project: Callable[..., Path],
                                        cli: Callable[..., Result]) -> None:
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    first, second = onnx_model(), onnx_model((0.2, 2.0), bias=-1.0)
    root = project({"models/fraud.onnx": first, "serving.yaml": FIRST})
    assert cli("apply", "--auto-approve").code == 0  # fraud:1
    (root / "models" / "fraud.onnx").write_bytes(second)
    (root / "serving.yaml").write_text(BOTH)
    with applied(cli) as (url, key):
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        def auth() -> dict[str, str]:
            """A new dict each call: tritonclient adds its own headers to the one given."""
            return {"Authorization": f"Bearer {key}"}

        try:
            assert client.is_server_live() and client.is_server_ready()
            assert client.is_model_ready("api", headers=auth())
            assert "binary_tensor_data" in client.get_server_metadata(headers=auth())[
                "extensions"]
            metadata = client.get_model_metadata("api", headers=auth())
            assert sorted(metadata["versions"]) == ["1", "2"]
            assert metadata["inputs"] == [{"name": "features", "datatype": "FP32",
                                           "shape": [-1, 2]}]
            rows = np.array([[0.5, 1.0], [-2.0, 0.25], [3.0, -1.0]], dtype=np.float32)
            for version, model in (("1", first), ("2", second)):
                features = triton.InferInput("features", [3, 2], "FP32")
                features.set_data_from_numpy(rows)  # binary, tritonclient's default
                result = client.infer("api", [features], model_version=version, headers=auth())
                label, probabilities = expected(model, rows)
                assert np.array_equal(result.as_numpy("label"), label)
                assert np.array_equal(result.as_numpy("probabilities"), probabilities)
                assert result.get_response()["model_version"] == version
            # JSON inputs; one output asked for, as JSON; then the other one as binary
            features = triton.InferInput("features", [3, 2], "FP32")
            features.set_data_from_numpy(rows, binary_data=False)
            wanted = [triton.InferRequestedOutput("probabilities", binary_data=False)]
            result = client.infer("api", [features], model_version="1", outputs=wanted,
                                  headers=auth())
            assert [o["name"] for o in result.get_response()["outputs"]] == ["probabilities"]
            assert np.allclose(result.as_numpy("probabilities"), expected(first, rows)[1])
            wanted = [triton.InferRequestedOutput("label", binary_data=True)]
            result = client.infer("api", [features], model_version="1", outputs=wanted,
                                  headers=auth())
            assert np.array_equal(result.as_numpy("label"), expected(first, rows)[0])
            # a client's mistakes, binary or not, are 4xx with the reason
            wrong = triton.InferInput("features", [3, 2], "FP64")
            wrong.set_data_from_numpy(rows.astype(np.float64))
            with pytest.raises(InferenceServerException) as raised:
                client.infer("api", [wrong], headers=auth())
            assert raised.value.status() == "422"
            assert "datatype FP64 is not the model's FP32" in raised.value.message()
            with pytest.raises(InferenceServerException) as raised:
                client.infer("api", [features], model_version="3", headers=auth())
            assert raised.value.status() == "404" and "versions: 1, 2" in raised.value.message()
        finally:
            client.close()
        (root / "serving.yaml").write_text(BOTH.replace("{blue: 50, green: 50}",
                                                        "{blue: 0, green: 100}"))
        assert cli("apply", "--auto-approve").code == 0
        status, metadata, _ = call(url, key, "GET", "/v2/models/api")
        assert (status, metadata["versions"]) == (200, ["2"])


def test_binary_requests_that_do_not_add_up_are_400(project: Callable[..., Path],
                                                     cli: Callable[..., Result]) -> None:
    project({"models/fraud.onnx": onnx_model(), "serving.yaml": FIRST})
    with applied(cli) as (url, key):
        header = (b'{"inputs": [{"name": "features", "shape": [1, 2], "datatype": "FP32", '
                  b'"parameters": {"binary_data_size": 8}}]}')
        data = np.array([[1.0, 2.0]], dtype=np.float32).tobytes()
        length = {"inference-header-content-length": str(len(header))}
        status, answer, _ = call(url, key, "POST", "/v2/models/api/infer", header + data,
                                 length)
        assert status == 200 and answer["outputs"][0]["name"] == "label", answer
        twelve = header.replace(b"8}", b"12}")
        for head, tail, fragment in ((header, data[:4], "ends before its 8 bytes"),
                                     (header, data + b"xx", "binary_data_size add up to 8"),
                                     (twelve, data + b"xxxx",
                                      "binary_data_size 12 does not hold shape [1, 2]")):
            status, answer, _ = call(url, key, "POST", "/v2/models/api/infer", head + tail,
                                     {"inference-header-content-length": str(len(head))})
            assert status in (400, 422) and fragment in answer["error"], answer
        status, answer, _ = call(url, key, "POST", "/v2/models/api/infer", header + data,
                                 {"inference-header-content-length": "9999"})
        assert status == 400 and "at most the body's" in answer["error"]

"""A scikit-learn classifier converted with skl2onnx's defaults (ZipMap on: its
probabilities a sequence of {class: probability} maps) is served as every client expects
a tensor: FP32 [N, classes], its columns in the order of the class labels that the
model metadata gives, through the v2 JSON and binary protocols, /invocations and
`mlinfra endpoints invoke`; integer and string classes alike."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import Result
from tests.endpoint_client import applied, call

PROJECT = """\
kind: Model
name: numbers
from: {path: models/numbers.onnx}
---
kind: Model
name: words
from: {path: models/words.onnx}
---
kind: Endpoint
name: api
auth: key
deployments:
  - {name: numbers, model: numbers}
  - {name: words, model: words}
traffic: {numbers: 100}
"""
FEATURES = ["f1", "f2", "f3", "f4"]
ROWS = np.array([[0.1, 0.9, 0.3, 0.2], [0.8, 0.1, 0.5, 0.7], [0.4, 0.4, 0.9, 0.1]],
                dtype=np.float32)


def zipmap_classifier(classes: list[Any]) -> tuple[Any, bytes]:
    """A fitted LogisticRegression and its skl2onnx export with the defaults (ZipMap)."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    x = rng.random((90, 4)).astype(np.float32)
    y = np.array([classes[int(i)] for i in (x[:, 0] * 3 + x[:, 2]) % len(classes)])
    fitted = LogisticRegression(max_iter=500).fit(x, y)
    model = to_onnx(fitted, initial_types=[("features", FloatTensorType([None, 4]))])
    return fitted, bytes(model.SerializeToString())


def zipped_answer(model: bytes, rows: np.ndarray) -> list[dict[Any, float]]:
    """What onnxruntime itself answers for the probability output: one map per row."""
    import onnxruntime as ort

    session = ort.InferenceSession(model)
    assert session.get_outputs()[1].type.startswith("seq(map(")  # the ZipMap form
    return list(session.run(["output_probability"], {"features": rows})[0])


@pytest.mark.slow
def test_a_zipmap_classifier_is_served_as_a_dense_tensor(
        project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    import tritonclient.http as triton

    numbers, numbers_onnx = zipmap_classifier([11, 3, 7])
    words, words_onnx = zipmap_classifier(["spam", "ham", "eggs"])
    root = project({"models/numbers.onnx": numbers_onnx, "models/words.onnx": words_onnx,
                    "serving.yaml": PROJECT})
    cases = [("numbers", numbers, numbers_onnx, [3, 7, 11], "INT64"),
             ("words", words, words_onnx, ["eggs", "ham", "spam"], "BYTES")]
    with applied(cli) as (url, key):
        for deployment, fitted, onnx_bytes, labels, label_type in cases:
            pin = {"mlinfra-deployment": deployment}
            probabilities = fitted.predict_proba(ROWS)
            predicted = fitted.predict(ROWS).tolist()
            zipped = zipped_answer(onnx_bytes, ROWS)
            assert np.allclose([[row[c] for c in labels] for row in zipped], probabilities,
                               atol=1e-5)
            # v2 JSON, every output
            request = {"inputs": [{"name": "features", "shape": [3, 4], "datatype": "FP32",
                                   "data": ROWS.ravel().tolist()}]}
            status, answer, _ = call(url, key, "POST", "/v2/models/api/infer", request, pin)
            assert status == 200, answer
            by_name = {o["name"]: o for o in answer["outputs"]}
            assert by_name["output_label"]["data"] == predicted
            dense = by_name["output_probability"]
            assert (dense["datatype"], dense["shape"]) == ("FP32", [3, 3])
            assert np.allclose(np.reshape(dense["data"], (3, 3)), probabilities, atol=1e-5)
            # the metadata describes the outputs as served, with the columns' classes
            status, metadata, _ = call(url, key, "GET", "/v2/models/api", headers=pin)
            assert status == 200, metadata
            assert metadata["outputs"] == [
                {"name": "output_label", "datatype": label_type, "shape": [-1]},
                {"name": "output_probability", "datatype": "FP32", "shape": [-1, 3],
                 "parameters": {"labels": labels}}]
            # v2 binary, tritonclient's defaults
            client = triton.InferenceServerClient(url.removeprefix("http://"))
            try:
                features = triton.InferInput("features", [3, 4], "FP32")
                features.set_data_from_numpy(ROWS)
                result = client.infer("api", [features], headers={
                    "Authorization": f"Bearer {key}", **pin})
                got = result.as_numpy("output_probability")
                assert got is not None and got.dtype == np.float32 and got.shape == (3, 3)
                assert np.allclose(got, probabilities, atol=1e-5)
                label_array = result.as_numpy("output_label")
                assert label_array is not None
                assert [v.decode() if isinstance(v, bytes) else v
                        for v in label_array.tolist()] == predicted
            finally:
                client.close()
            # /invocations, a table (records) and a tensor
            table = {"dataframe_split": {"columns": FEATURES, "data": ROWS.tolist()}}
            status, answer, _ = call(url, key, "POST", "/invocations", table, pin)
            assert status == 200, answer
            assert [r["output_label"] for r in answer["predictions"]] == predicted
            assert np.allclose([r["output_probability"] for r in answer["predictions"]],
                               probabilities, atol=1e-5)
            status, answer, _ = call(url, key, "POST", "/invocations",
                                     {"inputs": ROWS.tolist()}, pin)
            assert status == 200, answer
            assert answer["predictions"]["output_label"] == predicted
            assert np.allclose(answer["predictions"]["output_probability"], probabilities,
                               atol=1e-5)
            # the command line, both protocols
            for name, body in (("v2.json", request), ("table.json", table)):
                (root / name).write_text(json.dumps(body))
                invoked = cli("endpoints", "invoke", "api", "--data", name,
                              "--deployment", deployment)
                assert invoked.code == 0 and "HTTP 200" in invoked.err, invoked.err
                assert "output_probability" in invoked.out


def test_a_zipmap_model_with_external_data_is_served_dense(tmp_path: Path) -> None:
    """A model that keeps its weights in another file (not one mlinfra registered,
    which has its data written in) is rewritten through a copy beside it, which
    reads the same data file and is gone once loaded."""
    import hashlib

    import onnx
    from onnx import numpy_helper
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.neural_network import MLPClassifier

    from mlinfra.serving.model import LoadedModel

    rng = np.random.default_rng(3)
    x = rng.random((60, 4)).astype(np.float32)
    y = np.where(x[:, 0] > x[:, 1], "up", "down")
    fitted = MLPClassifier(hidden_layer_sizes=(8,), solver="lbfgs", max_iter=2000,
                           random_state=0).fit(x, y)
    model = to_onnx(fitted, initial_types=[("features", FloatTensorType([None, 4]))])
    for tensor in model.graph.initializer:  # only raw bytes are written to another file
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor), tensor.name))
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True,
                    location="weights.bin", size_threshold=64)
    path = folder / "model.onnx"
    assert (folder / "weights.bin").stat().st_size > 0
    loaded = LoadedModel.load("m", 1, path, hashlib.sha256(path.read_bytes()).hexdigest())
    assert loaded.labels == {"output_probability": ["down", "up"]}
    assert [(o.name, o.datatype) for o in loaded.outputs] == [
        ("output_label", "BYTES"), ("output_probability", "FP32")]
    label, probabilities = loaded.run({"features": ROWS})
    assert label.tolist() == fitted.predict(ROWS).tolist()
    assert np.allclose(probabilities, fitted.predict_proba(ROWS), atol=1e-5)
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", "weights.bin"]

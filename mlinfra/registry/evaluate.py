"""Loading an ONNX model, reading its signature, and scoring it on labelled data.

Metrics are computed with NumPy alone: auc, accuracy, f1, precision, recall and
logloss for classifiers; rmse, mae and r2 for regressors.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from mlinfra.errors import MlinfraError

CLASSIFIER_METRICS = ("auc", "accuracy", "f1", "precision", "recall", "logloss")
REGRESSOR_METRICS = ("rmse", "mae", "r2")
_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32}


class ModelInvalid(MlinfraError):
    pass


def load_session(path: Path) -> Any:
    import onnxruntime as ort

    from mlinfra.registry.onnx_files import check_external_data

    check_external_data(path)  # before onnxruntime reads any file it names

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own types for bad files
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelInvalid(f"onnxruntime cannot load it: {first[:300]}") from None


def signature(session: Any) -> dict[str, Any]:
    def describe(items: Any) -> list[dict[str, Any]]:
        return [{"name": i.name, "type": i.type,
                 "shape": [d if isinstance(d, int) else None for d in i.shape]}
                for i in items]

    return {"inputs": describe(session.get_inputs()),
            "outputs": describe(session.get_outputs())}


def _read_table(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        return header, [row for row in reader if row]


def score(path: Path, data: Path, label: str, metrics: list[str]) -> dict[str, float]:
    """Score the model on a CSV with a `label` column; the other columns, in order, are
    the features of a single 2-D input (or one column per input, by name)."""
    session = load_session(path)
    header, rows = _read_table(data)
    if label not in header:
        raise ModelInvalid(f"evaluation data {data.name} has no column '{label}'")
    y = np.array([float(r[header.index(label)]) for r in rows])
    features = [c for c in header if c != label]
    inputs = session.get_inputs()
    feeds: dict[str, Any] = {}
    if len(inputs) == 1:
        columns = [header.index(c) for c in features]
        dtype = _NUMPY.get(inputs[0].type, np.float32)
        feeds[inputs[0].name] = np.array([[float(r[i]) for i in columns] for r in rows],
                                         dtype=dtype)
    else:
        for item in inputs:
            if item.name not in header:
                raise ModelInvalid(f"evaluation data has no column for input '{item.name}'")
            column = header.index(item.name)
            feeds[item.name] = np.array([[float(r[column])] for r in rows],
                                        dtype=_NUMPY.get(item.type, np.float32))
    outputs = session.run(None, feeds)
    names = [o.name for o in session.get_outputs()]
    return compute(metrics, y, dict(zip(names, outputs, strict=True)))


def compute(metrics: list[str], y: np.ndarray, outputs: dict[str, np.ndarray]
            ) -> dict[str, float]:
    probabilities = next((v for v in outputs.values() if v.ndim == 2 and v.shape[1] >= 2
                          and np.issubdtype(v.dtype, np.floating)), None)
    labels = next((v for v in outputs.values() if v.ndim == 1 and
                   np.issubdtype(v.dtype, np.integer)), None)
    regression = next((v.reshape(len(y), -1)[:, 0] for v in outputs.values()
                       if np.issubdtype(v.dtype, np.floating) and v.size == len(y)), None)
    out: dict[str, float] = {}
    for metric in metrics:
        if metric in CLASSIFIER_METRICS:
            p = probabilities[:, 1] if probabilities is not None else None
            predicted = labels if labels is not None else (
                (p >= 0.5).astype(int) if p is not None else None)
            if predicted is None:
                raise ModelInvalid(f"metric {metric} needs class labels or probabilities; "
                                   "the model gives neither")
            out[metric] = _classifier(metric, y.astype(int), predicted.astype(int), p)
        elif metric in REGRESSOR_METRICS:
            if regression is None:
                raise ModelInvalid(f"metric {metric} needs one numeric output per row")
            out[metric] = _regressor(metric, y, regression.astype(float))
    return out


def _classifier(metric: str, y: np.ndarray, predicted: np.ndarray,
                p: np.ndarray | None) -> float:
    tp = float(np.sum((predicted == 1) & (y == 1)))
    fp = float(np.sum((predicted == 1) & (y == 0)))
    fn = float(np.sum((predicted == 0) & (y == 1)))
    if metric == "accuracy":
        return float(np.mean(predicted == y))
    if metric == "precision":
        return tp / (tp + fp) if tp + fp else 0.0
    if metric == "recall":
        return tp / (tp + fn) if tp + fn else 0.0
    if metric == "f1":
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    if p is None:
        raise ModelInvalid(f"metric {metric} needs probabilities; the model gives labels only")
    if metric == "logloss":
        clipped = np.clip(p.astype(float), 1e-15, 1 - 1e-15)
        return float(-np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped)))
    return auc(y, p)


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve: the Mann-Whitney U statistic, ties counted half."""
    positives, negatives = int(np.sum(y == 1)), int(np.sum(y == 0))
    if not positives or not negatives:
        raise ModelInvalid("auc needs both classes in the evaluation data")
    order = np.argsort(p, kind="mergesort")
    ranks = np.empty(len(p))
    sorted_p = p[order]
    i = 0
    while i < len(p):  # average ranks over ties
        j = i
        while j + 1 < len(p) and sorted_p[j + 1] == sorted_p[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def _regressor(metric: str, y: np.ndarray, predicted: np.ndarray) -> float:
    error = predicted - y
    if metric == "rmse":
        return float(np.sqrt(np.mean(error ** 2)))
    if metric == "mae":
        return float(np.mean(np.abs(error)))
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum(error ** 2)) / total if total else 0.0

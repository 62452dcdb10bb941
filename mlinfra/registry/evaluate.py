"""Loading an ONNX model, reading its signature, and scoring it on labelled data.

The task is read from the model's outputs: a label output or class probabilities
make a classifier (binary with two classes, multiclass with more), one number per
row a regressor. The classes are the label values as they are in the data. Metrics
are scikit-learn's (sklearn.metrics), imported only when a model is scored.
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlinfra.errors import MlinfraError
from mlinfra.spec.schemas import EVALUATION_METRICS

_NUMPY = {"tensor(float)": np.float32, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32}
# Metrics that need the probability of each class, not only the predicted label.
_PROBABILISTIC = {"auc", "logloss"}


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
        raise ModelInvalid(f"onnxruntime cannot load it: {first[:300]}") from err


def signature(session: Any) -> dict[str, Any]:
    def describe(items: Any) -> list[dict[str, Any]]:
        return [{"name": i.name, "type": i.type,
                 "shape": [d if isinstance(d, int) else None for d in i.shape]}
                for i in items]

    return {"inputs": describe(session.get_inputs()),
            "outputs": describe(session.get_outputs())}


@dataclass(frozen=True)
class Table:
    """Labelled data: column names and rows of values (text when read from CSV)."""

    name: str
    columns: list[str]
    rows: list[list[Any]]

    def column(self, name: str) -> list[Any]:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]


def read_table(path: Path, fmt: str, name: str) -> Table:
    """A csv, jsonl or parquet file as a Table; `name` says which data it is."""
    if fmt == "csv":
        try:
            with open(path, newline="", encoding="utf-8") as f:
                reader = csv.reader(f)
                header = next(reader, None)
                rows = [row for row in reader if row]
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise ModelInvalid(f"cannot read evaluation data {name} as csv: {err}") from err
        if header is None:
            raise ModelInvalid(f"evaluation data {name} is empty")
        for number, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise ModelInvalid(f"evaluation data {name}: row {number} has {len(row)} "
                                   f"values for {len(header)} columns")
        return Table(name, [c.strip() for c in header], rows)
    import pandas as pd

    try:
        frame = (pd.read_json(path, lines=True) if fmt == "jsonl"
                 else pd.read_parquet(path))
    except Exception as err:  # pandas and its engines raise many types for bad files
        raise ModelInvalid(f"cannot read evaluation data {name} as {fmt}: "
                           f"{str(err).splitlines()[0][:200] if str(err) else err!r}") from err
    return Table(name, [str(c) for c in frame.columns], frame.astype(object).values.tolist())


def score(model: Path, table: Table, label: str, metrics: list[str] | None = None,
          features: list[str] | None = None, positive: Any = None) -> dict[str, float]:
    """Score the model on `table`. `features` are the columns it reads (default: every
    column but `label`, in file order): all of them as one 2-D input, or each input by
    its name. `metrics` default to auc and accuracy for a classifier, rmse, mae and r2
    for a regressor."""
    return predictions(model, table, label, metrics, features, positive).score()


def predictions(model: Path, table: Table, label: str, metrics: list[str] | None = None,
                features: list[str] | None = None, positive: Any = None) -> Predictions:
    """The model's predictions on `table`, checked and ready to be scored (see `score`),
    on every row or on a resample of them."""
    session = load_session(model)
    if label not in table.columns:
        raise ModelInvalid(f"evaluation data {table.name} has no column '{label}' "
                           f"(its columns: {', '.join(table.columns)})")
    if not table.rows:
        raise ModelInvalid(f"evaluation data {table.name} has no rows")
    feeds = _feeds(session, table, label, features)
    try:
        results = session.run(None, feeds)
    except Exception as err:  # onnxruntime's own error types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelInvalid(f"the model fails on evaluation data {table.name}: "
                           f"{first[:300]}") from err
    outputs = {o.name: (o.type, value)
               for o, value in zip(session.get_outputs(), results, strict=True)}
    found = prepare(outputs, table.column(label), metrics, positive)
    found.data = table.name
    return found


def _feeds(session: Any, table: Table, label: str, named: list[str] | None
           ) -> dict[str, Any]:
    if named is not None:
        unknown = [c for c in named if c not in table.columns]
        if unknown:
            raise ModelInvalid(f"evaluation.features: {', '.join(unknown)} "
                               f"{'is not a column' if len(unknown) == 1 else 'are not columns'}"
                               f" of {table.name} (its columns: {', '.join(table.columns)})")
        if label in named:
            raise ModelInvalid(f"evaluation.features lists the label column '{label}'")
    features = named if named is not None else [c for c in table.columns if c != label]
    inputs = session.get_inputs()
    if len(inputs) == 1:
        item = inputs[0]
        shape = list(item.shape)
        width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
        if len(shape) not in (1, 2) or (len(shape) == 1 and len(features) != 1) or (
                width is not None and width != len(features)):
            takes = (f"{width} feature{'s' if width != 1 else ''}" if width is not None
                     else "a different layout")
            raise ModelInvalid(
                f"evaluation gives {len(features)} feature column"
                f"{'s' if len(features) != 1 else ''} ({', '.join(features)}) but the "
                f"model's input '{item.name}' takes {takes} (shape "
                f"{_shape(shape)}); name the columns with evaluation.features")
        columns = [_column(table, c, item) for c in features]
        array = np.stack(columns, axis=1) if len(shape) == 2 else columns[0]
        return {item.name: array}
    missing = [i.name for i in inputs if i.name not in features]
    if missing:
        raise ModelInvalid(
            f"the model's input{'s' if len(missing) != 1 else ''} {', '.join(missing)} "
            f"{'has' if len(missing) == 1 else 'have'} no column among the evaluation "
            f"features of {table.name} ({', '.join(features)}); the model takes "
            f"{', '.join(i.name for i in inputs)}")
    unused = [c for c in named or [] if c not in {i.name for i in inputs}]
    if unused:
        raise ModelInvalid(f"evaluation.features {', '.join(unused)} "
                           f"{'is not an input' if len(unused) == 1 else 'are not inputs'} "
                           f"of the model (its inputs: {', '.join(i.name for i in inputs)})")
    feeds = {}
    for item in inputs:
        column = _column(table, item.name, item)
        feeds[item.name] = column.reshape(-1, 1) if len(item.shape) == 2 else column
    return feeds


def _shape(shape: list[Any]) -> str:
    return "[" + ", ".join(str(d) if isinstance(d, int) else "None" for d in shape) + "]"


def _column(table: Table, name: str, item: Any) -> np.ndarray:
    values = table.column(name)
    if item.type == "tensor(string)":
        return np.array([str(v) for v in values], dtype=object)
    dtype = _NUMPY.get(item.type)
    if dtype is None:
        raise ModelInvalid(f"the model's input '{item.name}' has type {item.type}, which "
                           "evaluation cannot feed (it feeds float, double, int32, int64 "
                           "and string)")
    out = np.empty(len(values), dtype=dtype)
    for row, value in enumerate(values):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ModelInvalid(f"evaluation data {table.name}: column '{name}' row "
                               f"{row + 2}: {value!r} is not a number") from None
        if np.issubdtype(dtype, np.integer) and not number.is_integer():
            raise ModelInvalid(f"evaluation data {table.name}: column '{name}' row "
                               f"{row + 2}: {value!r} is not an integer (input "
                               f"'{item.name}' is {item.type})")
        out[row] = number
    return out


@dataclass(frozen=True)
class _Prediction:
    """What a classifier says: its classes (sorted), the predicted class per row and,
    when it gives them, one probability per class per row (columns in class order)."""

    classes: list[Any]
    predicted: list[Any]
    probabilities: np.ndarray | None


class Predictions:
    """A model's predictions on labelled data, checked once, scored on every row or on
    any selection of rows (a bootstrap resample picks rows with repeats)."""

    def __init__(self, metrics: list[str], truth: np.ndarray,
                 prediction: _Prediction | None = None, positive: Any = None,
                 predicted: np.ndarray | None = None) -> None:
        self.metrics, self.truth, self.prediction = metrics, truth, prediction
        self.positive, self.predicted = positive, predicted
        self.data = ""  # which data they were made on, when the caller knows

    @property
    def rows(self) -> int:
        return len(self.truth)

    def score(self, rows: np.ndarray | None = None) -> dict[str, float]:
        """The metrics on `rows` (indices, repeats allowed; default: every row)."""
        if self.prediction is None:  # a regressor
            assert self.predicted is not None
            y, guess = (self.truth, self.predicted) if rows is None else (
                self.truth[rows], self.predicted[rows])
            return _regression(self.metrics, y, guess)
        prediction = self.prediction
        if rows is None:
            y = list(self.truth)
        else:
            y = self.truth[rows].tolist()
            prediction = _Prediction(
                prediction.classes, np.asarray(prediction.predicted, dtype=object)[rows].tolist(),
                None if prediction.probabilities is None else prediction.probabilities[rows])
        return {metric: _classifier(metric, y, prediction, self.positive)
                for metric in self.metrics}


def compute(outputs: dict[str, tuple[str, Any]], truth: list[Any],
            metrics: list[str] | None = None, positive: Any = None) -> dict[str, float]:
    """Metrics from a model's outputs (name -> (ONNX type, value)) and the true labels
    as they are in the data."""
    return prepare(outputs, truth, metrics, positive).score()


def prepare(outputs: dict[str, tuple[str, Any]], truth: list[Any],
            metrics: list[str] | None = None, positive: Any = None) -> Predictions:
    """Check a model's outputs against the labels and the metrics asked, once."""
    rows = len(truth)
    labels = [v for t, v in outputs.values()
              if t.startswith("tensor(") and isinstance(v, np.ndarray) and v.size == rows
              and v.ndim in (1, 2) and not np.issubdtype(v.dtype, np.floating)]
    maps = [v for t, v in outputs.values() if t.startswith("seq(map(")]
    tables = [v for t, v in outputs.values() if isinstance(v, np.ndarray) and v.ndim == 2
              and v.shape[0] == rows and v.shape[1] >= 2
              and np.issubdtype(v.dtype, np.floating)]
    if not labels and not maps and not tables:
        numbers = [v for t, v in outputs.values() if isinstance(v, np.ndarray)
                   and np.issubdtype(v.dtype, np.floating) and v.size == rows]
        if not numbers:
            raise ModelInvalid("the model gives neither class labels, class probabilities "
                               f"nor one number per row for the {rows} rows")
        if positive is not None:
            raise ModelInvalid("evaluation.positive is for binary classifiers; this model is "
                               "a regressor")
        chosen = metrics or list(EVALUATION_METRICS["regression"])
        for metric in chosen:
            if metric not in EVALUATION_METRICS["regression"]:
                raise ModelInvalid(_not_for(metric, "regression", []))
        return Predictions(chosen, _numbers(truth),
                           predicted=numbers[0].reshape(rows).astype(np.float64))
    prediction = _classify(labels[0].reshape(rows) if labels else None,
                           maps[0] if maps else None, tables[0] if tables else None, truth)
    y = _as_classes(truth, prediction.classes, "the label column")
    task = "binary" if len(prediction.classes) <= 2 else "multiclass"
    chosen = metrics or (["auc", "accuracy"] if prediction.probabilities is not None
                         else ["accuracy"])
    for metric in chosen:
        if metric not in EVALUATION_METRICS[task]:
            raise ModelInvalid(_not_for(metric, task, prediction.classes))
        if metric in _PROBABILISTIC and prediction.probabilities is None:
            raise ModelInvalid(f"metric {metric} needs class probabilities; the model "
                               "gives labels only")
    pos = None
    if task == "multiclass" and positive is not None:
        raise ModelInvalid(f"evaluation.positive is for binary models; this model has "
                           f"{len(prediction.classes)} classes ({_names(prediction.classes)})")
    if task == "binary":
        pos = (prediction.classes[-1] if positive is None
               else _as_classes([positive], prediction.classes, "evaluation.positive")[0])
        if pos not in prediction.classes:
            raise ModelInvalid(f"evaluation.positive {positive!r} is not a class of the "
                               f"model (classes: {_names(prediction.classes)})")
    return Predictions(list(chosen), np.array(y, dtype=object), prediction, pos)


def _not_for(metric: str, task: str, classes: list[Any]) -> str:
    if task == "multiclass" and metric in ("f1", "precision", "recall"):
        return (f"metric {metric} is for binary models; this model has {len(classes)} "
                f"classes ({_names(classes)}): use {metric}_macro or {metric}_weighted")
    owners = [t for t, names in EVALUATION_METRICS.items() if metric in names]
    owner = ("regressors" if owners == ["regression"] else "binary classifiers"
             if owners == ["binary"] else "classifiers")
    this = {"binary": "a binary classifier", "multiclass": "a multiclass classifier",
            "regression": "a regressor"}[task]
    return (f"metric {metric} is for {owner}; this model is {this}: its metrics are "
            f"{', '.join(EVALUATION_METRICS[task])}")


def _names(classes: list[Any]) -> str:
    return ", ".join(str(c) for c in classes)


def _numbers(truth: list[Any]) -> np.ndarray:
    try:
        return np.array([float(v) for v in truth], dtype=np.float64)
    except (TypeError, ValueError):
        bad = next(v for v in truth if not _is_number(v))
        raise ModelInvalid(f"the model is a regressor, but the label column holds "
                           f"{bad!r}, which is not a number") from None


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _python(value: Any) -> Any:
    """A NumPy scalar as the Python value it stands for."""
    return value.item() if isinstance(value, np.generic) else value


def _classify(labels: np.ndarray | None, maps: list[dict[Any, Any]] | None,
              table: np.ndarray | None, truth: list[Any]) -> _Prediction:
    predicted = [_python(v) for v in labels] if labels is not None else None
    if maps is not None:
        # ZipMap: each row maps class -> probability, so the columns name their classes.
        classes = sorted(_python(k) for k in maps[0])
        probabilities = np.array([[float(row[c]) for c in classes] for row in maps],
                                 dtype=np.float64)
    elif table is not None:
        # Columns in index order: skl2onnx's order, which is the sorted classes.
        known = [*predicted] if predicted is not None else []
        kind = known[0] if known else None
        seen = set(known) | set(_as_classes(truth, [kind] if kind is not None else None,
                                            "the label column"))
        classes = sorted(seen)
        if len(classes) != table.shape[1]:
            raise ModelInvalid(
                f"the model gives {table.shape[1]} probability columns, but the evaluation "
                f"data and the model's predictions hold {len(classes)} classes "
                f"({_names(classes)}); without ZipMap the columns are taken as the sorted "
                "classes, so each class must occur: export the model with ZipMap (skl2onnx's"
                " default) or evaluate on data that holds every class")
        probabilities = table.astype(np.float64)
    else:
        assert predicted is not None
        return _Prediction(sorted(set(predicted) | set(_as_classes(
            truth, predicted[:1], "the label column"))), predicted, None)
    if predicted is None:
        predicted = [classes[i] for i in np.argmax(probabilities, axis=1)]
    else:
        _check_columns(classes, predicted, probabilities)
    return _Prediction(classes, predicted, probabilities)


def _check_columns(classes: list[Any], predicted: list[Any], probabilities: np.ndarray
                   ) -> None:
    """The predicted label is the most probable class wherever one class is clearly
    most probable; otherwise the columns are not the classes mlinfra takes them for."""
    ordered = np.sort(probabilities, axis=1)
    for row, label in enumerate(predicted):
        best = int(np.argmax(probabilities[row]))
        if ordered[row, -1] - ordered[row, -2] > 1e-6 and classes[best] != label:
            raise ModelInvalid(
                f"the model's probability columns do not match its labels (row {row + 2}: "
                f"label {label!r}, most probable column {best} = class {classes[best]!r}); "
                "export the model with ZipMap so its probabilities name their classes")


def _as_classes(values: list[Any], classes: list[Any] | None, what: str) -> list[Any]:
    """Values from the data as the model's class type: integers when the model's
    classes are integers (or, with unknown classes, when every value is one)."""
    kind = type(classes[0]) if classes else None
    if kind is str:
        return [str(v) for v in values]
    if kind is bool:
        return [v if isinstance(v, bool) else str(v).strip().lower() == "true"
                for v in values]
    out = []
    for value in values:
        number = _integer(value)
        if number is None:
            if kind is None:
                return [str(v) for v in values]
            raise ModelInvalid(f"{what} holds {value!r}, but the model's classes are "
                               f"integers ({_names(classes or [])})")
        out.append(number)
    return out


def _integer(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | np.integer):
        return int(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def _classifier(metric: str, y: list[Any], prediction: _Prediction, pos: Any) -> float:
    from sklearn import metrics as sk

    predicted = prediction.predicted
    if metric == "accuracy":
        return float(sk.accuracy_score(_encoded(y), _encoded(predicted)))
    if metric in _PROBABILISTIC:
        assert prediction.probabilities is not None
        return _probabilistic(metric, y, prediction.classes, prediction.probabilities, pos)
    name, _, average = metric.partition("_")
    scorer = {"precision": sk.precision_score, "recall": sk.recall_score,
              "f1": sk.f1_score}[name]
    # Classes as their index in one sorted list: scikit-learn compares labels of one
    # type, and the data's labels and the model's may be ints and strings alike.
    labels = sorted(set(y) | set(predicted), key=_order)
    index = {label: i for i, label in enumerate(labels)}
    truth, guess = [index[v] for v in y], [index[v] for v in predicted]
    if average:
        return float(scorer(truth, guess, labels=list(range(len(labels))), average=average,
                            zero_division=0.0))
    return float(scorer(truth, guess, labels=[index.get(pos, len(labels))], average="macro",
                        zero_division=0.0))


def _order(value: Any) -> tuple[str, Any]:
    return (type(value).__name__, value)


def _encoded(values: list[Any]) -> list[str]:
    """Labels as text with their type, so that 1 and "1" stay apart, as == keeps them."""
    return [f"{type(v).__name__}:{v}" for v in values]


def _probabilistic(metric: str, y: list[Any], classes: list[Any], probabilities: np.ndarray,
                   pos: Any) -> float:
    from sklearn import metrics as sk

    unknown = sorted({str(v) for v in y if v not in classes})
    if unknown:
        raise ModelInvalid(f"metric {metric}: the evaluation data holds class "
                           f"{', '.join(unknown)}, which the model gives no probability for "
                           f"(its classes: {_names(classes)})")
    index = {c: i for i, c in enumerate(classes)}
    truth = np.array([index[v] for v in y])
    if metric == "logloss":
        if len(classes) == 1:  # a one-class model is sure of it: no loss
            return 0.0
        with warnings.catch_warnings():
            # ONNX computes in float32: a row sums to 1 within float32's precision only,
            # which scikit-learn warns about without changing anything.
            warnings.filterwarnings("ignore", "The y_prob values do not sum to one")
            return float(sk.log_loss(truth, probabilities,
                                     labels=list(range(len(classes)))))
    if len(classes) <= 2:
        return auc((truth == index[pos]).astype(int), probabilities[:, index[pos]])
    absent = [str(c) for i, c in enumerate(classes) if not np.any(truth == i)]
    if absent:
        raise ModelInvalid(f"auc (one-vs-rest) needs every class in the evaluation data; "
                           f"{', '.join(absent)} {'has' if len(absent) == 1 else 'have'} "
                           "no row")
    return float(np.mean([auc((truth == i).astype(int), probabilities[:, i])
                          for i in range(len(classes))]))


def auc(y: np.ndarray, p: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn's roc_auc_score), for 0/1 labels `y`."""
    from sklearn.metrics import roc_auc_score

    positives, negatives = int(np.sum(y == 1)), int(np.sum(y == 0))
    if not positives or not negatives:
        raise ModelInvalid("auc needs both classes in the evaluation data")
    return float(roc_auc_score(y, p))


def _regression(metrics: list[str], y: np.ndarray, predicted: np.ndarray
                ) -> dict[str, float]:
    from sklearn import metrics as sk

    out = {}
    for metric in metrics:
        if metric == "rmse":
            out[metric] = float(np.sqrt(sk.mean_squared_error(y, predicted)))
        elif metric == "mae":
            out[metric] = float(sk.mean_absolute_error(y, predicted))
        else:
            # scikit-learn's convention for constant truth: 1 when exact, else 0.
            out[metric] = float(sk.r2_score(y, predicted)) if len(y) > 1 else (
                1.0 if bool(np.all(y == predicted)) else 0.0)
    return out

"""Model evaluation: every metric equals scikit-learn's on the same predictions, for
binary, multiclass and regression models exported by skl2onnx with and without
ZipMap; mistakes (a binary metric on a multiclass model, features that do not fit the
model's signature) are clear errors; `evaluation.data` may be a run's output."""

from __future__ import annotations

import json
import re
import textwrap
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn import metrics as skm
from sklearn.linear_model import LinearRegression, LogisticRegression

from mlinfra.registry.evaluate import ModelInvalid, Table, read_table, score
from tests.conftest import Result, onnx_model

FEATURES = ["a", "b", "c"]


def _data(classes: list[Any] | None, rows: int = 90, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray]:
    """Features with some signal, and labels drawn from `classes` (None: a number)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 3))
    if classes is None:
        return x, x @ np.array([1.5, -2.0, 0.5]) + rng.normal(scale=0.5, size=rows)
    score_ = x[:, 0] - x[:, 1] + rng.normal(scale=0.8, size=rows)
    cuts = np.quantile(score_, np.linspace(0, 1, len(classes) + 1)[1:-1])
    return x, np.array(classes, dtype=object)[np.searchsorted(cuts, score_)]


def _onnx(model: Any, x: np.ndarray, zipmap: bool = True) -> bytes:
    from skl2onnx import to_onnx

    options = None if isinstance(model, LinearRegression) else {id(model): {
        "zipmap": zipmap}}
    return bytes(to_onnx(model, x[:1].astype(np.float32), options=options,
                         target_opset=17).SerializeToString())


def _csv(path: Path, x: np.ndarray, y: np.ndarray, columns: list[str] = FEATURES) -> Path:
    lines = [",".join([*columns, "y"])]
    lines += [",".join([*(repr(float(v)) for v in row), str(label)])
              for row, label in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _outputs(model: bytes, x: np.ndarray) -> tuple[list[Any], np.ndarray | None, list[Any]]:
    """What the ONNX model predicts: labels, probabilities (columns in class order) and
    its classes, read the way a person would from its outputs."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    results = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
    labels = [v.item() if isinstance(v, np.generic) else v for v in results[0]]
    if isinstance(results[1], list):  # ZipMap
        classes = sorted(results[1][0])
        return labels, np.array([[row[c] for c in classes] for row in results[1]],
                                dtype=np.float64), classes
    return labels, results[1].astype(np.float64), sorted(set(labels))


def _score(tmp_path: Path, model: bytes, x: np.ndarray, y: np.ndarray, metrics: list[str],
           **kw: Any) -> dict[str, float]:
    (tmp_path / "m.onnx").write_bytes(model)
    table = read_table(_csv(tmp_path / "d.csv", x, y), "csv", "holdout:1")
    return score(tmp_path / "m.onnx", table, "y", metrics, **kw)


def _log_loss(y: list[Any], p: np.ndarray, classes: list[Any] | None = None) -> float:
    """scikit-learn's log loss. ONNX computes in float32, so a row's probabilities sum to
    1 only within float32's precision, and scikit-learn warns (without changing them)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The y_prob values do not sum to one")
        return float(skm.log_loss(y, p, labels=classes))


MULTICLASS = ["auc", "accuracy", "logloss", "f1_macro", "f1_weighted", "precision_macro",
              "precision_weighted", "recall_macro", "recall_weighted"]


def _sklearn_multiclass(y: list[Any], labels: list[Any], p: np.ndarray,
                        classes: list[Any]) -> dict[str, float]:
    out = {"auc": skm.roc_auc_score(y, p, multi_class="ovr", average="macro",
                                    labels=classes),
           "accuracy": skm.accuracy_score(y, labels),
           "logloss": _log_loss(y, p, classes)}
    for name, function in (("f1", skm.f1_score), ("precision", skm.precision_score),
                           ("recall", skm.recall_score)):
        for average in ("macro", "weighted"):
            out[f"{name}_{average}"] = function(y, labels, average=average,
                                                zero_division=0)
    return out


@pytest.mark.parametrize("zipmap", [True, False])
@pytest.mark.parametrize("classes", [["cat", "dog", "eel"], [10, 20, 30], [0, 1, 2, 3]])
def test_multiclass_metrics_equal_sklearns(tmp_path: Path, zipmap: bool,
                                           classes: list[Any]) -> None:
    x, y = _data(classes)
    model = _onnx(LogisticRegression(max_iter=1000).fit(x, list(y)), x, zipmap)
    ours = _score(tmp_path, model, x, y, MULTICLASS)
    labels, p, model_classes = _outputs(model, x)
    assert model_classes == sorted(classes)
    expected = _sklearn_multiclass(list(y), labels, p, model_classes)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert 0.5 < ours["auc"] <= 1.0  # not the 1.954 of a binary formula on 3 classes


BINARY = ["auc", "accuracy", "f1", "precision", "recall", "logloss", "f1_macro",
          "f1_weighted", "precision_macro", "precision_weighted", "recall_macro",
          "recall_weighted"]


@pytest.mark.parametrize("zipmap", [True, False])
@pytest.mark.parametrize(("classes", "positive"), [([0, 1], None), (["fraud", "ok"], "fraud"),
                                                  (["fraud", "ok"], None)])
def test_binary_metrics_equal_sklearns(tmp_path: Path, zipmap: bool, classes: list[Any],
                                       positive: Any) -> None:
    x, y = _data(classes, seed=1)
    model = _onnx(LogisticRegression(max_iter=1000).fit(x, list(y)), x, zipmap)
    ours = _score(tmp_path, model, x, y, BINARY, positive=positive)
    labels, p, model_classes = _outputs(model, x)
    pos = positive if positive is not None else model_classes[1]
    column = model_classes.index(pos)
    expected = {
        "auc": skm.roc_auc_score([t == pos for t in y], p[:, column]),
        "accuracy": skm.accuracy_score(list(y), labels),
        "logloss": _log_loss(list(y), p, model_classes),
        "f1": skm.f1_score(list(y), labels, pos_label=pos),
        "precision": skm.precision_score(list(y), labels, pos_label=pos),
        "recall": skm.recall_score(list(y), labels, pos_label=pos)}
    for name, function in (("f1", skm.f1_score), ("precision", skm.precision_score),
                           ("recall", skm.recall_score)):
        for average in ("macro", "weighted"):
            expected[f"{name}_{average}"] = function(list(y), labels, average=average)
    assert ours == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_regression_metrics_equal_sklearns(tmp_path: Path) -> None:
    x, y = _data(None)
    model = _onnx(LinearRegression().fit(x, y), x)
    ours = _score(tmp_path, model, x, y, ["rmse", "mae", "r2"])
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    # The CSV holds repr() of the values: the same float32 inputs as here.
    predicted = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)}
                            )[0].reshape(-1).astype(np.float64)
    assert ours == pytest.approx({
        "rmse": np.sqrt(skm.mean_squared_error(y, predicted)),
        "mae": skm.mean_absolute_error(y, predicted),
        "r2": skm.r2_score(y, predicted)}, rel=1e-9)
    assert _score(tmp_path, model, x, y, []) .keys() == {"rmse", "mae", "r2"}


def test_default_metrics_follow_the_task(tmp_path: Path) -> None:
    x, y = _data(["a", "b", "c"])
    model = _onnx(LogisticRegression(max_iter=1000).fit(x, list(y)), x)
    assert _score(tmp_path, model, x, y, []).keys() == {"auc", "accuracy"}


@pytest.mark.parametrize(("metric", "message"), [
    ("f1", "metric f1 is for binary models; this model has 3 classes (a, b, c): use "
           "f1_macro or f1_weighted"),
    ("recall", "use recall_macro or recall_weighted"),
    ("rmse", "metric rmse is for regressors; this model is a multiclass classifier"),
])
def test_a_metric_the_task_has_not_is_a_clear_error(tmp_path: Path, metric: str,
                                                     message: str) -> None:
    x, y = _data(["a", "b", "c"])
    model = _onnx(LogisticRegression(max_iter=1000).fit(x, list(y)), x)
    with pytest.raises(ModelInvalid, match=re.escape(message)):
        _score(tmp_path, model, x, y, [metric])


def test_classifier_metrics_on_a_regressor_are_refused(tmp_path: Path) -> None:
    x, y = _data(None)
    model = _onnx(LinearRegression().fit(x, y), x)
    with pytest.raises(ModelInvalid, match="metric auc is for classifiers; this model is a "
                                           "regressor: its metrics are rmse, mae, r2"):
        _score(tmp_path, model, x, y, ["auc"])
    with pytest.raises(ModelInvalid, match=r"evaluation\.positive is for binary classifiers; "
                       "this model is a regressor"):
        _score(tmp_path, model, x, y, ["rmse"], positive=1)


def test_a_class_missing_from_the_data(tmp_path: Path) -> None:
    """Without ZipMap the probability columns can only be mapped to classes that occur;
    with ZipMap the model names them and only one-vs-rest auc needs every class."""
    x, y = _data(["a", "b", "c"])
    fitted = LogisticRegression(max_iter=1000).fit(x, list(y))
    keep = (y != "c") & (fitted.predict(x) != "c")  # neither the data nor a prediction
    with pytest.raises(ModelInvalid, match="the model gives 3 probability columns, but the "
                       "evaluation data and the model's predictions hold 2 classes"):
        _score(tmp_path, _onnx(fitted, x, zipmap=False), x[keep], y[keep], ["accuracy"])
    zipmapped = _onnx(fitted, x)
    with pytest.raises(ModelInvalid, match="needs every class in the evaluation data; c "
                       "has no row"):
        _score(tmp_path, zipmapped, x[keep], y[keep], ["auc"])
    ours = _score(tmp_path, zipmapped, x[keep], y[keep], ["logloss", "accuracy"])
    labels, p, classes = _outputs(zipmapped, x[keep])
    assert ours == pytest.approx({"logloss": _log_loss(list(y[keep]), p, classes),
                                  "accuracy": skm.accuracy_score(list(y[keep]), labels)})


def test_labels_the_model_cannot_predict(tmp_path: Path) -> None:
    x, y = _data([0, 1, 2])
    model = _onnx(LogisticRegression(max_iter=1000).fit(x, list(y)), x)
    words = np.array(["x", "y", "z"], dtype=object)[y.astype(int)]
    with pytest.raises(ModelInvalid, match=r"the label column holds '[xyz]', but the model's "
                       "classes are integers"):
        _score(tmp_path, model, x, words, ["accuracy"])


def test_features_must_fit_the_models_input(tmp_path: Path) -> None:
    x, y = _data(["a", "b", "c"])
    model = _onnx(LogisticRegression(max_iter=1000).fit(x[:, :2], list(y)), x[:, :2])
    with pytest.raises(ModelInvalid, match=r"evaluation gives 3 feature columns \(a, b, c\) "
                       r"but the model's input 'X' takes 2 features \(shape \[None, 2\]\)"):
        _score(tmp_path, model, x, y, ["accuracy"])
    named = _score(tmp_path, model, x, y, ["accuracy"], features=["a", "b"])
    labels, _, _ = _outputs(model, x[:, :2])
    assert named["accuracy"] == pytest.approx(skm.accuracy_score(list(y), labels))
    with pytest.raises(ModelInvalid, match=r"evaluation.features: d is not a column of "
                       r"holdout:1 \(its columns: a, b, c, y\)"):
        _score(tmp_path, model, x, y, ["accuracy"], features=["a", "d"])
    with pytest.raises(ModelInvalid, match=r"evaluation\.features lists the label column 'y'"):
        _score(tmp_path, model, x, y, ["accuracy"], features=["a", "y"])


def _two_input_model() -> bytes:
    """A model with one input per column, named `a` and `b`: label = a + b > 0."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Add", ["a", "b"], ["s"]),
             helper.make_node("Greater", ["s", "zero"], ["g"]),
             helper.make_node("Cast", ["g"], ["l2"], to=TensorProto.INT64),
             helper.make_node("Reshape", ["l2", "flat"], ["label"])]
    graph = helper.make_graph(
        nodes, "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 1]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [1], [0.0]),
         helper.make_tensor("flat", TensorProto.INT64, [1], [-1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_inputs_by_name(tmp_path: Path) -> None:
    x, _ = _data(None)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    y[:5] = 1 - y[:5]  # five wrong
    ours = _score(tmp_path, _two_input_model(), x, y, ["accuracy"])
    assert ours["accuracy"] == pytest.approx((len(y) - 5) / len(y))
    with pytest.raises(ModelInvalid, match=r"the model's input b has no column among the "
                       r"evaluation features of holdout:1 \(a, c\); the model takes a, b"):
        _score(tmp_path, _two_input_model(), x, y, ["accuracy"], features=["a", "c"])
    with pytest.raises(ModelInvalid, match="evaluation.features c is not an input of the "
                       r"model \(its inputs: a, b\)"):
        _score(tmp_path, _two_input_model(), x, y, ["accuracy"], features=["a", "b", "c"])


def test_probability_columns_must_match_the_labels(tmp_path: Path) -> None:
    """Without ZipMap, columns are taken as the sorted classes; a model whose labels say
    otherwise is refused rather than scored on a wrong mapping."""
    from onnx import load_model_from_string

    model = load_model_from_string(onnx_model())
    model.graph.node[-1].op_type = "ArgMin"  # labels now contradict the columns
    x, _ = _data(None)
    y = (x[:, 0] > 0).astype(int)
    with pytest.raises(ModelInvalid, match="the model's probability columns do not match its "
                       "labels"):
        _score(tmp_path, model.SerializeToString(), x, y, ["accuracy"],
               features=["a", "b"])


def test_labels_only_model_has_no_auc(tmp_path: Path) -> None:
    x, _ = _data(None)
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    with pytest.raises(ModelInvalid, match="metric auc needs class probabilities; the "
                       "model gives labels only"):
        _score(tmp_path, _two_input_model(), x, y, ["auc"])
    assert _score(tmp_path, _two_input_model(), x, y, []) == {"accuracy": 1.0}


def test_bad_values_are_named(tmp_path: Path) -> None:
    x, y = _data(["a", "b", "c"])
    model = _onnx(LogisticRegression(max_iter=1000).fit(x, list(y)), x)
    (tmp_path / "m.onnx").write_bytes(model)
    table = read_table(_csv(tmp_path / "d.csv", x, y), "csv", "holdout:1")
    table.rows[3][1] = "n/a"
    with pytest.raises(ModelInvalid, match="evaluation data holdout:1: column 'b' row 5: "
                       "'n/a' is not a number"):
        score(tmp_path / "m.onnx", table, "y", ["accuracy"])
    with pytest.raises(ModelInvalid, match=r"has no column 'label' \(its columns: a, b, c, "
                       r"y\)"):
        score(tmp_path / "m.onnx", table, "label", ["accuracy"])
    with pytest.raises(ModelInvalid, match="has no rows"):
        score(tmp_path / "m.onnx", Table("empty", table.columns, []), "y", ["accuracy"])


# -- through mlinfra apply, as a user would -------------------------------------------


def _project_files(model: bytes, x: np.ndarray, y: np.ndarray, evaluation: str,
                   tmp_path: Path) -> dict[str, str | bytes]:
    holdout = _csv(tmp_path / "holdout.csv", x, y).read_text()
    return {"model.onnx": model, "data/holdout.csv": holdout, "models.yaml": textwrap.dedent(f"""\
        kind: Data
        name: holdout
        path: holdout.csv
        ---
        kind: Model
        name: species
        from: {{path: model.onnx}}
        evaluation: {evaluation}
        """)}


def test_three_classes_through_apply(tmp_path: Path, project: Callable[..., Path],
                                     cli: Callable[..., Result]) -> None:
    x, y = _data(["setosa", "versicolor", "virginica"], rows=120, seed=3)
    model = _onnx(LogisticRegression(max_iter=1000).fit(x, list(y)), x)
    metrics = json.dumps(MULTICLASS)
    project(_project_files(model, x, y, f"{{data: holdout, label: y, metrics: {metrics}}}",
                           tmp_path))
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    recorded = json.loads(cli("models", "show", "species:1").out)["metrics"]
    assert recorded.pop("evaluated_on") == "holdout:1"
    labels, p, classes = _outputs(model, x)
    assert recorded == pytest.approx(_sklearn_multiclass(list(y), labels, p, classes),
                                     rel=1e-9, abs=1e-12)


def test_binary_metric_on_a_multiclass_model_fails_its_apply(
        tmp_path: Path, project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    x, y = _data(["a", "b", "c"])
    model = _onnx(LogisticRegression(max_iter=1000).fit(x, list(y)), x)
    project(_project_files(model, x, y, "{data: holdout, label: y, metrics: [f1]}",
                           tmp_path))
    applied = cli("apply", "--auto-approve")
    assert applied.code == 1
    assert ("model.species: evaluation failed: metric f1 is for binary models; this model "
            "has 3 classes (a, b, c): use f1_macro or f1_weighted") in applied.err
    assert "Traceback" not in applied.err


PREP = """\
import csv, json, shutil, sys
source, target = sys.argv[1], sys.argv[2]
if target.endswith(".jsonl"):
    with open(source) as f, open(target, "w") as out:
        for row in csv.DictReader(f):
            out.write(json.dumps({k: float(v) if k != "y" else int(v)
                                  for k, v in row.items()}) + "\\n")
else:
    shutil.copyfile(source, target)
print("holdout prepared")
"""


@pytest.mark.parametrize("filename", ["holdout.csv", "holdout.jsonl"])
def test_evaluation_data_from_a_jobs_output(tmp_path: Path, project: Callable[..., Path],
                                            cli: Callable[..., Result], filename: str) -> None:
    """The holdout is a job's output: the plan runs the job before the model, and the
    metrics are computed on the file that run stored, read as its name says."""
    x, y = _data([0, 1], seed=5)
    model = _onnx(LogisticRegression(max_iter=1000).fit(x, list(y)), x, zipmap=False)
    files = _project_files(model, x, y, "{data: {job: prep, output: holdout}, label: y, "
                           "metrics: [auc, f1, logloss]}", tmp_path)
    files["data/raw.csv"] = files.pop("data/holdout.csv")
    files["models.yaml"] = str(files["models.yaml"]).replace(
        "name: holdout\npath: holdout.csv", "name: raw\npath: raw.csv") + textwrap.dedent("""\
        ---
        kind: Job
        name: prep
        code: ./prep
        command: python prep.py ${inputs.raw} ${outputs.holdout}
        inputs: {raw: raw}
        outputs: {holdout: FILENAME}
        """).replace("FILENAME", filename)
    files["prep/prep.py"] = PREP
    project(files)
    plan = cli("plan")
    assert plan.code == 0, plan.err
    assert plan.out.index("job.prep") < plan.out.index("model.species")
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    assert applied.out.index("holdout prepared") < applied.out.index("model.species: registered")
    recorded = json.loads(cli("models", "show", "species:1").out)["metrics"]
    run_id = json.loads(cli("output", "job.prep", "--json").out)["job.prep"]["run_id"]
    assert recorded.pop("evaluated_on") == f"job prep output holdout of run {run_id}"
    labels, p, _ = _outputs(model, x)
    assert recorded == pytest.approx({"auc": skm.roc_auc_score(list(y), p[:, 1]),
                                      "f1": skm.f1_score(list(y), labels),
                                      "logloss": _log_loss(list(y), p)}, rel=1e-9)
    assert cli("plan", "--detailed-exitcode").code == 0


@pytest.mark.parametrize(("evaluation", "message"), [
    ("{data: {job: prepp, output: holdout}, label: y}",
     "evaluation.data.job: unknown job 'prepp' (did you mean 'prep'?)"),
    ("{data: {job: prep, output: holdot}, label: y}",
     "evaluation.data.output: job 'prep' has no output 'holdot' (did you mean 'holdout'?)"),
    ("{data: {pipeline: flow, step: prepp, output: holdout}, label: y}",
     "evaluation.data.step: pipeline 'flow' has no step 'prepp' (did you mean 'prep'?)"),
    ("{data: {pipeline: flow, step: prep, output: out}, label: y}",
     "evaluation.data.output: job 'step-job' has no output 'out'"),
    ("{data: {job: step-job, output: holdout}, label: y}",
     "evaluation.data.job: job 'step-job' runs only as a step of pipeline 'flow': name "
     "{pipeline: flow, step: STEP, output: OUTPUT}"),
    ("{data: {job: prep}, label: y}",
     "evaluation.data: must be a Data reference (NAME or NAME:VERSION), {job: NAME, output: "
     "NAME} or {pipeline: NAME, step: NAME, output: NAME}"),
    ("{data: holdout, label: y, metrics: [f1_micro]}",
     "evaluation.metrics[0]: must be one of: auc, accuracy"),
])
def test_validate_checks_evaluation_data(tmp_path: Path, project: Callable[..., Path],
                                         cli: Callable[..., Result], evaluation: str,
                                         message: str) -> None:
    x, y = _data([0, 1])
    files = _project_files(b"not used", x, y, evaluation, tmp_path)
    files["jobs.yaml"] = textwrap.dedent("""\
        kind: Job
        name: prep
        command: python prep.py ${outputs.holdout}
        outputs: {holdout: holdout.csv}
        ---
        kind: Job
        name: step-job
        command: python prep.py ${outputs.holdout}
        outputs: {holdout: holdout.csv}
        ---
        kind: Pipeline
        name: flow
        steps:
          prep: {job: step-job}
        """)
    project(files)
    checked = cli("validate")
    assert checked.code == 1
    assert f"model/species: {message}" in checked.err, checked.err


def test_every_metric_is_computed_by_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    """No metric of mlinfra's own: each goes through sklearn.metrics."""
    from sklearn import metrics as skm

    from mlinfra.registry.evaluate import compute

    called: list[str] = []
    for name in ("accuracy_score", "precision_score", "recall_score", "f1_score", "log_loss",
                 "roc_auc_score", "mean_squared_error", "mean_absolute_error", "r2_score"):
        real = getattr(skm, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            called.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(skm, name, spy)
    probabilities = np.array([[0.8, 0.2], [0.3, 0.7], [0.6, 0.4], [0.1, 0.9]], dtype=np.float32)
    outputs = {"label": ("tensor(int64)", np.array([0, 1, 0, 1])),
               "probabilities": ("tensor(float)", probabilities)}
    compute(outputs, [0, 1, 1, 1], ["accuracy", "precision", "recall", "f1", "logloss", "auc"])
    compute({"y": ("tensor(float)", np.array([[1.0], [2.0], [2.5]], dtype=np.float32))},
            [1.0, 2.5, 2.0], ["rmse", "mae", "r2"])
    assert sorted(called) == sorted(["accuracy_score", "precision_score", "recall_score",
                                     "f1_score", "log_loss", "roc_auc_score",
                                     "mean_squared_error", "mean_absolute_error", "r2_score"])

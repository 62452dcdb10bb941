"""Monitoring: reference profiles, drift metrics, windows of captures, verdicts, the
commands and what a plan says; bad monitors and damaged captures."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlinfra.monitoring import metrics, profile
from mlinfra.monitoring.captures import hour_start, retention
from mlinfra.monitoring.records import Window
from mlinfra.monitoring.verdicts import Verdict
from tests.conftest import Result, onnx_model
from tests.endpoint_client import Client, applied, call

Cli = Callable[..., Result]


# --- metrics -----------------------------------------------------------------------------

def test_wasserstein_is_calm_on_resamples_and_sees_half_a_std() -> None:
    rng = np.random.default_rng(0)
    reference = profile.numeric(rng.normal(100, 20, 100_000))
    calm = [metrics.measure("normalized_wasserstein", reference,
                            rng.normal(100, 20, 10_000), 0.1) for _ in range(20)]
    assert not any(m.drifted for m in calm) and max(m.value for m in calm) < 0.05
    shifted = metrics.measure("normalized_wasserstein", reference,
                              rng.normal(110, 20, 10_000), 0.1)
    assert shifted.drifted and 0.4 < shifted.value < 0.6


def test_ks_flags_a_twentieth_of_a_std_at_10k_rows_where_wasserstein_stays_calm() -> None:
    rng = np.random.default_rng(1)
    reference = profile.numeric(rng.normal(0, 1, 200_000))
    current = rng.normal(0.05, 1, 10_000)
    ks = metrics.measure("ks", reference, current, 0.05)
    assert ks.drifted and ks.value < 1e-3
    assert not metrics.measure("normalized_wasserstein", reference, current, 0.1).drifted
    assert not metrics.measure("ks", reference, rng.normal(0, 1, 2_000), 0.05).drifted


def test_categorical_metrics_and_bonferroni() -> None:
    rng = np.random.default_rng(2)
    kinds = np.array(["visa", "mastercard", "amex"], dtype=object)
    reference = profile.categorical(rng.choice(kinds, 50_000, p=[0.6, 0.3, 0.1]))
    same = rng.choice(kinds, 5_000, p=[0.6, 0.3, 0.1])
    moved = rng.choice(kinds, 5_000, p=[0.3, 0.3, 0.4])
    for metric, threshold in (("jensen_shannon", 0.1), ("psi", 0.2), ("l_infinity", 0.1),
                              ("chi_squared", 0.05)):
        assert not metrics.measure(metric, reference, same, threshold, tests=5).drifted
        assert metrics.measure(metric, reference, moved, threshold, tests=5).drifted
    corrected = metrics.measure("chi_squared", reference, same, 0.05, tests=5)
    assert corrected.threshold == pytest.approx(0.01)
    unseen = np.array(["visa"] * 90 + ["diners"] * 10, dtype=object)
    assert metrics.quality(reference, unseen) == (0.0, pytest.approx(0.1))


def test_profile_of_a_column_and_its_quality() -> None:
    values = np.array([1.0, 2.0, np.nan, 4.0, 5.0])
    found = profile.numeric(values)
    assert found["null_rate"] == pytest.approx(0.2) and found["min"] == 1.0
    assert found["max"] == 5.0 and len(found["quantiles"]) == profile.QUANTILES
    nulls, outside = metrics.quality(found, np.array([np.nan, 0.0, 3.0, 9.0]))
    assert nulls == pytest.approx(0.25) and outside == pytest.approx(2 / 3)
    assert profile.column(["1", "2", "x"])["type"] == profile.CATEGORICAL
    assert profile.column(["1", "2", ""])["type"] == profile.NUMERIC


def test_accuracy_compares_class_labels_as_they_are() -> None:
    from mlinfra.monitoring.monitor import _performance

    table = pa.table({"request_id": ["a", "b", "c", "d"], "row": [0, 0, 0, 0],
                      "output.output_label": ["cheap", "mid", "luxury", "mid"],
                      "output.output_probability.cheap": [0.9, 0.1, 0.0, 0.2]})
    labels = {("a", 0): "cheap", ("b", 0): "mid", ("c", 0): "luxury", ("d", 0): "cheap"}
    found = _performance({"metric": "accuracy", "min": 0.5}, table, labels)
    assert found is not None and found.value == pytest.approx(0.75) and found.verdict == "ok"
    numeric = pa.table({"request_id": ["a", "b"], "row": [0, 0],
                        "output.label": [1, 0], "output.probabilities.1": [0.8, 0.3]})
    found = _performance({"metric": "accuracy", "min": 0.9}, numeric,
                         {("a", 0): "1.0", ("b", 0): "1"})
    assert found is not None and found.value == pytest.approx(0.5) and found.verdict == "drift"


def test_auc_of_a_multiclass_model_is_one_vs_rest_macro() -> None:
    from sklearn.metrics import roc_auc_score

    from mlinfra.monitoring.monitor import _performance

    rng = np.random.default_rng(11)
    classes = ["cheap", "luxury", "mid"]
    truth = rng.integers(0, 3, 300)
    raw = rng.random((300, 3)) + np.eye(3)[truth] * rng.random(300)[:, None]
    probabilities = raw / raw.sum(axis=1, keepdims=True)
    ids = [f"r{i}" for i in range(300)]
    table = pa.table({"request_id": ids, "row": [0] * 300,
                      "output.output_label": [classes[k] for k in probabilities.argmax(1)],
                      **{f"output.output_probability.{c}": probabilities[:, k]
                         for k, c in enumerate(classes)}})
    labels = {(rid, 0): classes[k] for rid, k in zip(ids, truth, strict=True)}
    found = _performance({"metric": "auc", "min": 0.99}, table, labels)
    expected = roc_auc_score(truth, probabilities, multi_class="ovr", average="macro")
    assert found is not None and found.value == pytest.approx(expected)
    assert found.verdict == "drift" and 0.6 < found.value < 0.99


def test_a_window_line_with_a_score_and_no_reason_ends_with_the_score() -> None:
    from mlinfra.cli.monitoring import _window_line
    from mlinfra.monitoring.records import Signal

    window = Window("watch", 0.0, 60.0, 100, "ok", model="fraud:1",
                    signals=[Signal("performance", "*", "auc", 0.9, 0.8, "ok", 100)])
    assert _window_line(window).endswith("auc 0.9 >= 0.8 (100 labelled rows)")


def test_retention_reads_sizes_and_days() -> None:
    assert retention("500Mi") == (500 << 20, None)
    assert retention("7d") == (None, 7 * 86400.0)
    assert retention(None) == (None, None)
    assert hour_start("hour=1970-01-01T01") == 3600.0


# --- a project with a monitored endpoint ----------------------------------------------

MONITORED = """\
kind: Data
name: reference
path: reference.csv
format: csv
---
kind: Model
name: fraud
from: {{path: models/fraud.onnx}}
evaluation: {{data: reference, label: is_fraud, features: [amount, age], metrics: [auc]}}
---
kind: Endpoint
name: api
auth: key
workers: 1
deployments: [{{name: blue, model: fraud}}]
traffic: {{blue: 100}}
collect: {{sample: 1.0}}
---
kind: Monitor
name: watch
endpoint: api
rows: 500
min_rows: 200
signals:
  data_drift: {{features: all}}
  prediction_drift: {{threshold: 0.1}}
  data_quality: {{null_rate: 0.05, out_of_range_rate: 0.05}}
  performance: {{metric: auc, min: 0.6}}
alert_after: {alert_after}
"""


def reference_csv(rng: np.random.Generator, rows: int = 4000) -> str:
    amount = rng.normal(50, 10, rows)
    age = rng.normal(40, 8, rows)
    label = (rng.random(rows) < 1 / (1 + np.exp(-(0.1 * (amount - 50))))).astype(int)
    lines = ["amount,age,is_fraud"] + [f"{a:.3f},{b:.3f},{y}" for a, b, y in
                                       zip(amount, age, label, strict=True)]
    return "\n".join(lines) + "\n"


def named_model() -> bytes:
    """The tests' logistic regression on (amount, age), naming its features."""
    import onnx
    from onnx.helper import set_model_props

    model = onnx.load_from_string(onnx_model((0.1, 0.0), -5.0))
    set_model_props(model, {"feature_names": json.dumps(["amount", "age"])})
    return bytes(model.SerializeToString())


def monitored(project: Callable[..., Path], alert_after: int = 2) -> Path:
    rng = np.random.default_rng(7)
    root = project({"models/fraud.onnx": named_model(),
                    "data/reference.csv": reference_csv(rng),
                    "serving.yaml": MONITORED.format(alert_after=alert_after)})
    return root


def send(url: str, key: str, rows: np.ndarray, batch: int = 50) -> list[str]:
    """Score `rows` in requests of `batch` rows; the request ids answered."""
    ids = []
    with Client(url, key) as client:
        for start in range(0, len(rows), batch):
            chunk = rows[start:start + batch].tolist()
            status, _, headers = client.request(
                "POST", "/invocations",
                {"dataframe_split": {"columns": ["amount", "age"], "data": chunk}})
            assert status == 200
            ids.append(headers["x-request-id"])
    return ids


def audit_events(root: Path) -> list[str]:
    from mlinfra.state.sqlite import SqliteStore

    store = SqliteStore(root / ".mlinfra" / "dev" / "state.db", command="test",
                        readonly=True)
    try:
        return [json.dumps([event.type, event.subject, event.data])
                for _, event in store.events()]
    finally:
        store.close()


def captured_rows(root: Path, endpoint: str = "api") -> int:
    return sum(pq.read_metadata(p).num_rows for p in
               (root / "data" / "captures" / endpoint / "requests").glob("hour=*/*.parquet"))


def wait_captured(root: Path, rows: int, seconds: float = 15.0, endpoint: str = "api"
                  ) -> None:
    deadline = time.monotonic() + seconds
    while captured_rows(root, endpoint) < rows and time.monotonic() < deadline:
        time.sleep(0.1)
    assert captured_rows(root, endpoint) >= rows


def test_an_endpoint_monitored_from_calm_to_breach_with_labels(
        project: Callable[..., Path], cli: Cli) -> None:
    root = monitored(project)
    rng = np.random.default_rng(11)
    with applied(cli) as (url, key):
        shown = json.loads(cli("models", "show", "fraud:1").out)["reference_profile"]
        assert shown["source"] == "reference:1" and shown["rows"] == 4000
        assert shown["columns"]["amount"].startswith("numeric  mean 49.8")
        assert "output.probabilities.1" in shown["columns"]
        calm = np.column_stack([rng.normal(50, 10, 1000), rng.normal(40, 8, 1000)])
        ids = send(url, key, calm)
        # a client's own request id is kept
        status, _, headers = call(url, key, "POST", "/invocations",
                                  {"dataframe_split": {"columns": ["amount", "age"],
                                                       "data": [[50.0, 40.0]]}},
                                  {"x-request-id": "client-7"})
        assert status == 200 and headers["x-request-id"] == "client-7"
        wait_captured(root, 1001)
        # labels for the calm rows' first rows, posted to the feedback route
        labels = [int(rng.random() < 1 / (1 + np.exp(-0.1 * (a - 50))))
                  for a in calm[::50, 0]]
        status, body, _ = call(url, key, "POST", "/v2/models/api/feedback",
                               {"request_ids": ids, "labels": labels})
        assert (status, body) == (200, {"accepted": 20})
        assert call(url, None, "POST", "/v2/models/api/feedback",
                    {"request_ids": ids, "labels": labels})[0] == 401
        assert call(url, key, "POST", "/v2/models/api/feedback",
                    {"request_ids": ids, "labels": labels[:3]})[0] == 422
        first = cli("monitor", "run", "watch")
        assert first.code == 0, first.out + first.err
        assert "monitor.watch: ok: 500 rows in the last window, no drift" in first.out
        assert first.out.count("500 rows  fraud:1") == 2
        state = json.loads(cli("monitors", "show", "watch", "--json").out)
        assert [w["status"] for w in state["windows"]] == ["ok", "ok"]
        assert all(w["rows"] == 500 for w in state["windows"])
        performance = [s for w in state["windows"] for s in w["signals"]
                       if s["signal"] == "performance"]
        assert performance and sum(s["rows"] for s in performance) == 20
        # amount shifted by one std: drift on amount only, breached after two windows
        shifted = np.column_stack([rng.normal(60, 10, 999), rng.normal(40, 8, 999)])
        send(url, key, shifted, batch=37)
        wait_captured(root, 2000)
        breached = cli("monitor", "run")
        assert breached.code == 3, breached.out + breached.err
        assert "monitor.watch: breached: drifted for 2 windows (amount: W" in breached.out
        state = json.loads(cli("monitors", "show", "watch", "--json").out)
        assert state["breached"] and state["streak"] == 2
        announced = [row for row in audit_events(root) if "monitor.breached" in row]
        assert len(announced) == 1 and '"streak": 2' in announced[0]
        last = state["windows"][-1]
        drifted = {(s["signal"], s["feature"]) for s in last["signals"]
                   if s["verdict"] == "drift"}
        assert ("data_drift", "amount") in drifted
        assert ("data_drift", "age") not in drifted
        listed = cli("monitors", "list")
        assert listed.code == 3 and "breached" in listed.out
        trend = cli("monitors", "show", "watch")
        assert trend.code == 3 and "data_drift" in trend.out and "*" in trend.out
        # nothing new: no window is computed twice, and the breach is not announced again
        again = cli("monitor", "run", "watch", "--json")
        assert json.loads(again.out)[0]["computed"] == []
        assert sum("monitor.breached" in row for row in audit_events(root)) == 1
        plan = cli("plan")
        assert plan.code == 0
        assert "monitor.watch: drifted for 2 windows (amount: W" in plan.out


def test_damaged_and_foreign_captures_are_skipped_with_the_reason(
        project: Callable[..., Path], cli: Cli) -> None:
    root = monitored(project, alert_after=1)
    rng = np.random.default_rng(3)
    with applied(cli) as (url, key):
        send(url, key, np.column_stack([rng.normal(50, 10, 500), rng.normal(40, 8, 500)]))
        wait_captured(root, 500)
        hour = next((root / "data" / "captures" / "api" / "requests").glob("hour=*"))
        (hour / "part-broken.parquet").write_bytes(b"PAR1 not really")
        pq.write_table(pa.table({"request_id": ["x"], "color": ["red"]}),
                       hour / "part-foreign.parquet")
        result = cli("monitor", "run", "watch", "--json")
        assert result.code == 0, result.out + result.err
        window = json.loads(result.out)[0]["computed"][0]
        assert window["status"] == "ok" and window["rows"] == 500
        assert "part-broken.parquet: damaged" in window["reason"]
        assert "part-foreign.parquet: another schema" in window["reason"]


def test_captures_of_a_version_a_destroy_forgot_are_skipped_saying_so(
        project: Callable[..., Path], cli: Cli) -> None:
    root = monitored(project, alert_after=1)
    rng = np.random.default_rng(4)
    with applied(cli) as (url, key):
        send(url, key, np.column_stack([rng.normal(50, 10, 500), rng.normal(40, 8, 500)]))
        wait_captured(root, 500)
    assert cli("apply", "--auto-approve").code == 0       # fraud:2 now; fraud:1 forgotten
    try:
        result = cli("monitor", "run", "watch", "--json")
        assert result.code == 0, result.out + result.err
        window = json.loads(result.out)[0]["computed"][0]
        assert window["status"] == "skipped" and window["model"] == "fraud:1"
        assert "fraud:1 is not in the registry" in window["reason"], window["reason"]
    finally:
        cli("destroy", "--auto-approve")


def test_too_few_rows_is_insufficient_never_an_alert(project: Callable[..., Path],
                                                     cli: Cli) -> None:
    root = project({"models/fraud.onnx": named_model(),
                    "data/reference.csv": reference_csv(np.random.default_rng(5)),
                    "serving.yaml": MONITORED.format(alert_after=1).replace(
                        "rows: 500\nmin_rows: 200", "window: 1s\nmin_rows: 1000")})
    with applied(cli) as (url, key):
        send(url, key, np.column_stack([np.full(100, 500.0), np.full(100, 40.0)]))
        wait_captured(root, 100)
        time.sleep(1.1)
        result = cli("monitor", "run", "watch")
        assert result.code == 0, result.out
        assert "insufficient: 100 rows, fewer than min_rows 1000" in result.out


def test_a_verdict_line_says_its_state_once() -> None:
    skipped = Window("watch", 0.0, 60.0, 200, "skipped", model="fraud:4",
                     reason="model fraud:4 has no reference profile")
    line = Verdict("watch", [], skipped, 0, 1).line()
    assert line == "monitor.watch: skipped: model fraud:4 has no reference profile"
    few = Window("watch", 0.0, 60.0, 10, "insufficient", reason="10 rows")
    assert Verdict("watch", [], few, 0, 1).line() == "monitor.watch: insufficient: 10 rows"
    assert Verdict("watch", [], None, 0, 1).line() == (
        "monitor.watch: no data: no window computed yet")


# --- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize(("monitor", "message"), [
    ("endpoint: bare", "monitor/bad: endpoint: endpoint 'bare' has no collect:"),
    ("endpoint: api\nsignals: {data_drift: {features: [amount, colour]}}",
     "model 'fraud' has no feature 'colour' (its features: amount, age)"),
    ("endpoint: api\nsignals: {data_drift: {numeric: {metric: chi_squared}}}",
     "signals.data_drift.numeric.metric: must be one of"),
    ("endpoint: api\nsignals: {data_drift: {categorical: {threshold: 2}}}",
     "jensen_shannon is a distance below 0.8326: a threshold of 2 would never drift"),
    ("endpoint: api\nsignals: {performance: {labels: nolabels, metric: auc, min: 0.7}}",
     "labels 'nolabels' have no request_id column"),
    ("endpoint: api\non_breach: [{retrain: trian}]", "no pipeline or job 'trian'"),
    ("endpoint: api\nsignals: {performance: {metric: rmse, max: 5}}",
     "signals.performance.metric: rmse is a regressor's metric; model 'fraud' is a "
     "classifier (its evaluation gives auc)"),
    ("endpoint: api\nsignals: {performance: {metric: accuracy, max: 0.9}}",
     "signals.performance: accuracy is better higher: give min: (the lowest accuracy that "
     "passes)"),
    ("endpoint: api\nwindow: 1h\nrows: 10", "give window: (time) or rows:, not both"),
])
def test_a_bad_monitor_is_a_validation_error_with_its_line(
        project: Callable[..., Path], cli: Cli, monitor: str, message: str) -> None:
    project({"models/fraud.onnx": onnx_model(),
             "data/reference.csv": "amount,age,is_fraud\n1,2,0\n",
             "data/nolabels.csv": "id,label\n1,0\n",
             "serving.yaml": MONITORED.format(alert_after=1).split("---\nkind: Monitor")[0]
             + "---\nkind: Data\nname: nolabels\npath: nolabels.csv\n"
             + "---\nkind: Endpoint\nname: bare\ndeployments: [{name: b, model: fraud}]\n"
             + "traffic: {b: 100}\n",
             "monitor.yaml": f"kind: Monitor\nname: bad\n{monitor}\n"})
    result = cli("validate")
    assert result.code == 1
    assert message in result.err, result.err
    assert "monitor.yaml:" in result.err and "Traceback" not in result.err


def test_the_monitor_schema_is_exported(tmp_path: Path, cli: Cli) -> None:
    exported = cli("schema", "Monitor")
    schema: dict[str, Any] = json.loads(exported.out)
    assert schema["title"] == "Monitor"
    assert (Path(__file__).parent.parent / "schemas" / "monitor.json").exists()


def test_the_distances_are_scipys() -> None:
    from scipy import stats
    from scipy.spatial import distance

    rng = np.random.default_rng(4)
    for u, v in ((rng.normal(0, 1, 50_000), rng.normal(0.3, 2, 20_000)),
                 (rng.normal(0, 1, 50_000), rng.normal(0, 1, 20_000)),
                 (rng.integers(0, 6, 50_000).astype(float), rng.integers(1, 7, 20_000)
                  .astype(float)),
                 (rng.exponential(3, 50_000), rng.exponential(4, 20_000))):
        sketch = profile.numeric(u)["quantiles"]
        exact = stats.wasserstein_distance(u, v)
        assert metrics.wasserstein(np.asarray(sketch), v) == pytest.approx(exact, rel=0.03,
                                                                           abs=0.003)
    p, q = rng.random(9), rng.random(9)
    q[3] = 0.0
    assert metrics.jensen_shannon(p, q) == pytest.approx(distance.jensenshannon(p, q))


def test_counting_a_window_below_each_sketch_point_is_exact() -> None:
    rng = np.random.default_rng(7)
    cases = [(rng.normal(100, 5, 200_000), rng.normal(102, 5, 100_000)),
             (rng.integers(0, 6, 50_000).astype(float), rng.integers(1, 7, 30_000)
              .astype(float)),
             (rng.exponential(3, 50_000), rng.exponential(4, 30_000)),
             (np.round(rng.normal(0, 1, 50_000), 1), np.round(rng.normal(0.5, 1, 30_000), 2)),
             (rng.normal(0, 1, 50_000), np.concatenate([rng.normal(0, 1, 30_000),
                                                        [np.inf, -np.inf, 1e300, -1e300]])),
             (np.full(5_000, 3.0), rng.normal(3, 1, 30_000))]
    for reference, window in cases:
        grid = np.asarray(profile.numeric(reference)["quantiles"])
        # the points themselves and their neighbours: where a bucket could misplace one
        window = np.concatenate([window, grid, np.nextafter(grid, np.inf),
                                 np.nextafter(grid, -np.inf)])
        expected = np.searchsorted(np.sort(window), grid, side="right")
        assert np.array_equal(metrics.at_or_below(grid, window), expected)


def test_window_columns_are_read_from_arrow_without_pandas(tmp_path: Path) -> None:
    import subprocess
    import sys

    table = pa.table({"x": pa.chunked_array([[1.0, None, 3.0], [4.0]]),
                      "n": pa.array([1, 2, None, 4], pa.int64()),
                      "c": pa.array(["a", "", None, "b"]),
                      "model": ["m"] * 4, "version": [2] * 4})
    pq.write_table(table, tmp_path / "part.parquet")
    script = f"""
import sys
from pathlib import Path
from mlinfra.monitoring import captures, monitor, verdicts
read = captures.read([Path({str(tmp_path / "part.parquet")!r})], ["x", "n", "c", "model",
                     "version"], ("c", "model"))
t = read.table
print(t.schema.field("c").type, t.schema.field("model").type)
print(monitor.column_values(t, "x", "numeric").tolist())
print(monitor.column_values(t, "n", "numeric").tolist())
counts = monitor.column_values(t, "c", "categorical")
print(sorted(zip(counts.kinds, counts.counts.tolist())), counts.nulls)
print(verdicts._served(t), "pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.splitlines()
    assert out[0].startswith("dictionary<values=string") and out[0].count("dictionary") == 2
    assert out[1] == "[1.0, nan, 3.0, 4.0]"
    assert out[2] == "[1.0, 2.0, nan, 4.0]"
    assert out[3] == "[('a', 1), ('b', 1)] 2"
    assert out[4] == "m:2 False"


def test_a_window_read_from_several_files_counts_across_their_dictionaries(
        tmp_path: Path) -> None:
    from mlinfra.monitoring import captures, monitor, verdicts

    pq.write_table(pa.table({"c": ["a", "b", "a"], "x": [1.0, 2.0, 3.0],
                             "model": ["m", "m", "m"], "version": [1, 1, 1]}),
                   tmp_path / "one.parquet")
    pq.write_table(pa.table({"c": ["b", "c", "b", "b", "c"], "x": [4.0, None, 6.0, 7.0, 8.0],
                             "model": ["m", "m", "n", "m", "m"], "version": [2] * 5}),
                   tmp_path / "two.parquet")
    read = captures.read([tmp_path / "one.parquet", tmp_path / "two.parquet"],
                         ["c", "x", "model", "version"], ("c", "model"))
    table = read.table
    counts = monitor.column_values(table, "c", "categorical")
    assert isinstance(counts, metrics.Counts)
    assert sorted(zip(counts.kinds, counts.counts.tolist(), strict=True)) == [
        ("a", 2), ("b", 4), ("c", 2)]
    values = monitor.column_values(table, "x", "numeric")
    assert isinstance(values, np.ndarray)
    assert np.array_equal(values, [1, 2, 3, 4, np.nan, 6, 7, 8], equal_nan=True)
    assert verdicts._served(table) == "m:2"  # 4 rows of m:2, 3 of m:1, 1 of n:2
    assert verdicts._served(table.slice(0, 3)) == "m:1"


def test_a_value_that_could_not_be_computed_is_kept_as_null(tmp_path: Path) -> None:
    from mlinfra.monitoring import records
    from mlinfra.state.sqlite import SqliteStore

    store = SqliteStore(tmp_path / "state.db", command="test")
    try:
        window = records.Window("watch", 3600.0, 7200.0, 800, records.OK, model="m:1")
        window.signals = [records.Signal("performance", "*", "auc", float("nan"), 0.8,
                                         records.OK, 12)]
        records.save_windows(store, [window])
        kept = records.windows(store, "watch")
        assert len(kept) == 1 and kept[0].signals[0].value != kept[0].signals[0].value
        assert kept[0].to_json()["signals"][0]["value"] is None
        assert json.dumps(kept[0].to_json(), allow_nan=False)
    finally:
        store.close()


DATA_MONITOR = """\
kind: Data
name: reference
path: reference.csv
---
kind: Data
name: production
path: production.csv
---
kind: Model
name: fraud
from: {path: models/fraud.onnx}
evaluation: {data: reference, label: is_fraud, features: [amount, age], metrics: [auc]}
---
kind: Monitor
name: batch-watch
model: fraud
data: production
min_rows: 100
"""


def test_a_monitor_of_a_data_asset_judges_each_new_content_once(
        project: Callable[..., Path], cli: Cli) -> None:
    rng = np.random.default_rng(9)
    root = project({"models/fraud.onnx": named_model(),
                    "data/reference.csv": reference_csv(rng),
                    "data/production.csv": reference_csv(rng, 1000),
                    "monitor.yaml": DATA_MONITOR})
    assert cli("apply", "--auto-approve").code == 0
    first = cli("monitor", "run", "--json")
    assert first.code == 0, first.out + first.err
    window = json.loads(first.out)[0]["computed"][0]
    assert (window["status"], window["rows"], window["model"]) == ("ok", 1000, "fraud:1")
    assert json.loads(cli("monitor", "run", "--json").out)[0]["computed"] == []
    shifted = reference_csv(np.random.default_rng(10), 1000).splitlines()
    moved = [shifted[0]] + [f"{float(a) + 15:.3f},{b},{y}" for a, b, y in
                            (line.split(",") for line in shifted[1:])]
    (root / "data" / "production.csv").write_text("\n".join(moved) + "\n")
    second = cli("monitor", "run", "--json")
    assert second.code == 3, second.out
    drifted = {s["feature"] for s in json.loads(second.out)[0]["computed"][0]["signals"]
               if s["verdict"] == "drift"}
    assert drifted == {"amount"}


def test_captures_are_hourly_parquet_files_kept_for_their_retention(tmp_path: Path) -> None:
    import hashlib
    import os

    from mlinfra.serving.app import request_id_of
    from mlinfra.serving.batcher import Batcher
    from mlinfra.serving.captures import Captures, hour_of
    from mlinfra.serving.model import LoadedModel
    from mlinfra.serving.table import Deployment, Table

    model_file = tmp_path / "m.onnx"
    model_file.write_bytes(named_model())
    model = LoadedModel.load("fraud", 3, model_file,
                             hashlib.sha256(model_file.read_bytes()).hexdigest())
    deployment = Deployment("blue", model, Batcher(model, 8), 5.0)
    folder = tmp_path / "captures" / "api"
    table = Table("api", 1, {"blue": deployment}, [("blue", 100.0)], collect_sample=1.0,
                  collect_path=str(folder), collect_retention_s=7 * 86400.0)
    old = folder / "requests" / "hour=2000-01-01T00"
    old.mkdir(parents=True)
    (old / "part-old.parquet").write_bytes(b"old")
    captures = Captures(retention_bytes=1 << 30)
    features = {"features": np.array([[50.0, 40.0], [60.0, 41.0]], dtype=np.float32)}
    captures.write(table, "req-1", deployment, features, model.run(features))
    captures.close()
    written = list((folder / "requests").glob("hour=*/*.parquet"))
    assert [p.parent.name for p in written] == [hour_of(time.time())]
    file = pq.ParquetFile(written[0])
    rows = file.read().to_pylist()
    assert [(r["request_id"], r["row"], r["amount"], r["age"]) for r in rows] == [
        ("req-1", 0, 50.0, 40.0), ("req-1", 1, 60.0, 41.0)]
    assert rows[0]["output.label"] in (0, 1) and "output.probabilities.1" in rows[0]
    assert file.schema_arrow.metadata[b"mlinfra.features"] == b"amount,age"
    assert not old.exists()  # older than the 7 days kept
    assert not any(name.startswith(".") for name in os.listdir(written[0].parent))
    deployment.batcher.close()
    # a client's request id is kept when usable, else the server makes one
    assert request_id_of([(b"x-request-id", b"abc-1")]) == "abc-1"
    assert len(request_id_of([(b"x-request-id", b"x" * 201)])) == 32
    assert len(request_id_of([])) == 32


def test_a_version_without_reference_data_is_registered_and_its_windows_skipped(
        project: Callable[..., Path], cli: Cli) -> None:
    root = project({"models/fraud.onnx": named_model(),
                    "serving.yaml": MONITORED.format(alert_after=1).replace(
                        "evaluation: {data: reference, label: is_fraud, features: [amount, "
                        "age], metrics: [auc]}\n", "").split("---\n", 1)[1].replace(
                        "  performance: {metric: auc, min: 0.6}\n", "")})
    result = cli("apply", "--auto-approve")
    try:
        assert result.code == 0, result.out + result.err
        assert "no reference profile for monitoring: no data to profile" in result.out
        url = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]["url"]
        key = (root / ".mlinfra" / "dev" / "endpoints" / "api" / "operator.key").read_text()
        send(url, key.strip(), np.column_stack([np.full(500, 50.0), np.full(500, 40.0)]))
        wait_captured(root, 500)
        found = cli("monitor", "run", "watch", "--json")
        assert found.code == 0, found.out + found.err
        window = json.loads(found.out)[0]["computed"][0]
        assert window["status"] == "skipped"
        assert window["reason"].startswith("model fraud:1 has no reference profile")
    finally:
        cli("destroy", "--auto-approve")

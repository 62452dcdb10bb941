"""Promotions decide, record and roll out by themselves: a rejected
candidate is tagged with why, every decision is in `mlinfra history`, and a promoted
version goes live on its endpoint step by step, rolled back (traffic and alias) when it
answers with errors; a quiet endpoint is judged on its replayed captures."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlinfra.registry.decisions import figures
from mlinfra.registry.evaluate import auc
from tests.conftest import Result, onnx_model
from tests.test_serving import Client, call

Cli = Callable[..., Result]

# Feature a decides the label; b is noise. Weights on a make a good model.
ROWS = [(a, b, int(a > 0)) for a, b in
        [(1.0, 0.3), (-1.0, 0.8), (0.5, -0.7), (-0.4, -0.2), (2.0, 0.1), (-2.0, 0.9),
         (0.2, -1.0), (-0.1, 0.4), (1.5, -0.3), (-1.2, -0.6)]]
DATA = "a,b,y\n" + "".join(f"{a},{b},{y}\n" for a, b, y in ROWS)
WEIGHTS = {"good": (2.0, 0.0), "fair": (1.0, 0.8), "poor": (0.2, 1.0)}

PROJECT = """\
kind: Data
name: holdout
path: holdout.csv
expectations:
  - expect_column_values_to_not_be_null: {{column: y}}
---
kind: Model
name: fraud
from: {{path: models/fraud.onnx}}
evaluation: {{data: holdout, label: y, metrics: [auc, accuracy]}}
---
kind: Endpoint
name: api
auth: key
workers: 1
deployments:
  - name: blue
    model: fraud@champion
    request: {{max_batch_size: 1, max_batch_delay_ms: 1}}
traffic: {{blue: 100}}
collect: {{sample: 1.0}}
---
kind: Promotion
name: fraud
model: fraud
compare: {{metric: auc, direction: max, min_delta: 0.01}}
gates: {{metrics: {{auc: {{min: 0.3}}}}, data: [holdout]}}
{rollout}
"""
ROLLOUT = ("rollout: {endpoint: api, steps: [20, 60, 100], hold_s: 0.6, min_requests: 10,"
           " replay: %s, rollback_on: {error_rate: 0.05}}")


def model_auc(weights: tuple[float, float]) -> float:
    x = np.array([[a, b] for a, b, _ in ROWS])
    return auc(np.array([y for *_, y in ROWS]), 1 / (1 + np.exp(-(x @ np.array(weights) + 0.1))))


def failing_on_single_rows(weights: tuple[float, float]) -> bytes:
    """A logistic regression that scores an even number of rows, and fails on an odd
    number of rows unless they are all zero: it loads, warms up (one row of zeros) and
    is evaluated (10 rows), then answers every single-row request with an error."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("MatMul", ["features", "W"], ["z0"]),
        helper.make_node("Add", ["z0", "B"], ["z"]),
        helper.make_node("Sigmoid", ["z"], ["p0"]),
        helper.make_node("Abs", ["features"], ["magnitude"]),
        helper.make_node("ReduceSum", ["magnitude"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["live"]),
        helper.make_node("Where", ["live", "pairs", "rows"], ["shape"]),
        helper.make_node("Reshape", ["p0", "shape"], ["p1"]),
        helper.make_node("Reshape", ["p1", "rows"], ["p"]),
        helper.make_node("Sub", ["one", "p"], ["q"]),
        helper.make_node("Concat", ["q", "p"], ["probabilities"], axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "odd-rows-fail",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor("W", TensorProto.FLOAT, [2, 1], list(weights)),
         helper.make_tensor("B", TensorProto.FLOAT, [1], [0.1]),
         helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0]),
         helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
         helper.make_tensor("pairs", TensorProto.INT64, [2], [-1, 2]),
         helper.make_tensor("rows", TensorProto.INT64, [2], [-1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


@pytest.fixture
def promoted(project: Callable[..., Path], cli: Cli) -> Iterator[Path]:
    """fraud:1 (fair) promoted and served by endpoint api; destroyed at the end."""
    root = project({"models/fraud.onnx": onnx_model(WEIGHTS["fair"]),
                    "data/holdout.csv": DATA,
                    "serving.yaml": PROJECT.format(rollout=ROLLOUT % "false")})
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    try:
        yield root
    finally:
        cli("destroy", "--auto-approve")


def history(cli: Cli, *args: str) -> list[dict[str, Any]]:
    shown = cli("history", *args, "--json")
    assert shown.code == 0, shown.err
    return list(json.loads(shown.out))


def champion(cli: Cli) -> int:
    shown = cli("models", "show", "fraud@champion")
    assert shown.code == 0, shown.err
    return int(json.loads(shown.out)["version"])


def endpoint_url(cli: Cli) -> str:
    return str(json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]["url"])


class Requests:
    """One client sending single-row requests until stopped, counting the answers."""

    def __init__(self, url: str, key: str, body: Any = None) -> None:
        self.url, self.key = url, key
        self.body = body if body is not None else {"inputs": [[1.0, 2.0]]}
        self.statuses: Counter[int] = Counter()
        self.models: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        client = Client(self.url, self.key)
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            status, _, headers = client.request("POST", "/invocations", self.body)
            self.statuses[status] += 1
            self.models[headers.get("mlinfra-model", "-")] += 1
            time.sleep(0.004)
        client.close()

    def __enter__(self) -> Requests:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def operator_key(root: Path) -> str:
    return (root / ".mlinfra/dev/endpoints/api/operator.key").read_text().strip()


# --- a rejected candidate stays registered with why; the first is promoted -----

def test_a_rejected_candidate_is_tagged_with_why(promoted: Path, cli: Cli) -> None:
    assert champion(cli) == 1  # the first version, with no champion, passed its gates
    (promoted / "models" / "fraud.onnx").write_bytes(onnx_model(WEIGHTS["poor"]))
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err  # rightly rejected is not a failure
    assert champion(cli) == 1
    tags = json.loads(cli("models", "show", "fraud:2").out)["tags"]
    poor, fair = figures(model_auc(WEIGHTS["poor"]), model_auc(WEIGHTS["fair"]))
    expected = f"auc {poor} < champion {fair} + 0.01"
    assert tags["mlinfra.rejected"] == expected, tags
    assert "mlinfra.gates" not in tags
    assert json.loads(cli("models", "show", "fraud").out)["version"] == 2  # still latest


# --- history -------------------------------------------------------------------

def test_history_shows_every_decision(promoted: Path, cli: Cli) -> None:
    (promoted / "models" / "fraud.onnx").write_bytes(onnx_model(WEIGHTS["poor"]))
    assert cli("apply", "--auto-approve").code == 0
    first, second = history(cli)
    assert (first["from"], first["to"], first["candidate"], first["outcome"]) == (
        None, 1, 1, "promoted")
    assert (second["from"], second["to"], second["candidate"], second["outcome"]) == (
        1, 1, 2, "rejected")
    assert second["metrics"]["candidate"]["auc"] == pytest.approx(model_auc(WEIGHTS["poor"]))
    assert second["metrics"]["champion"]["auc"] == pytest.approx(model_auc(WEIGHTS["fair"]))
    assert second["trigger"]["command"] == "apply" and second["user"]
    assert second["gates"] == [{"gate": "auc >= 0.3", "passed": True},
                               {"gate": "data holdout:1 expectations", "passed": True}]
    assert history(cli, "other") == []
    text = cli("history", "fraud").out
    assert "REJECTED" in text and "PROMOTED" in text and "auc <" not in text
    assert f"why: {second['reason']}" in text


# --- a promotion rolls out by itself -------------------------------------------

def test_a_promoted_version_rolls_out_step_by_step_without_a_failed_request(
        promoted: Path, cli: Cli) -> None:
    (promoted / "models" / "fraud.onnx").write_bytes(onnx_model(WEIGHTS["good"]))
    with Requests(endpoint_url(cli), operator_key(promoted)) as load:
        time.sleep(0.3)
        applied = cli("apply", "--auto-approve")
        time.sleep(0.3)
    assert applied.code == 0, applied.out + applied.err
    assert load.statuses == Counter({200: sum(load.statuses.values())}), load.statuses
    assert load.models["fraud:1"] and load.models["fraud:2"], load.models
    assert champion(cli) == 2
    served = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]
    assert served["served"] == {"blue": "fraud:2"} and served["traffic"] == {"blue": 100}
    decision = history(cli)[-1]
    assert decision["outcome"] == "promoted" and decision["rollout"]["status"] == "complete"
    shares = [s["share"] for s in decision["rollout"]["steps"] if s["verdict"] == "passed"]
    assert shares == [20, 60, 100], decision["rollout"]
    assert "No changes" in cli("plan").out


def test_a_rollout_whose_version_fails_rolls_back_traffic_and_alias(
        promoted: Path, cli: Cli) -> None:
    """Done when: a rollout whose new version answers with errors rolls back traffic and
    alias by itself, with the reason in mlinfra history."""
    from tests.test_ci import commit, git

    (promoted / ".gitignore").write_text(".mlinfra/\ndata/captures/\n")
    git(promoted, "init", "-q")
    commit(promoted, "fraud:1 served")
    bad = failing_on_single_rows(WEIGHTS["good"])
    (promoted / "models" / "fraud.onnx").write_bytes(bad)
    commit(promoted, "a model that fails on live requests")
    report = promoted.parent / "report.md"
    with Requests(endpoint_url(cli), operator_key(promoted)) as load:
        time.sleep(0.3)
        applied = cli("ci", "run", "--report", str(report))
        time.sleep(0.3)
    assert applied.code == 1, applied.out + applied.err
    assert "rollout rolled back: error rate" in applied.out, applied.out
    text = report.read_text()
    assert "#### ❌ `promotion.fraud`: fraud:2 rolled back (fraud@champion stays 1)" in text
    assert "Rollout on `api`: **rolled back**: error rate" in text
    assert re.search(r"^\| 20% \| \d+ \| \d+ \| 1\.000 \| [^|]+ \| breach \|$", text, re.M), text
    assert champion(cli) == 1
    served = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]
    assert served["served"] == {"blue": "fraud:1"} and served["traffic"] == {"blue": 100}
    after = {call(endpoint_url(cli), operator_key(promoted), "POST", "/invocations",
                  {"inputs": [[1, 2]]})[0] for _ in range(20)}
    assert after == {200}
    total = sum(load.statuses.values())
    assert load.statuses[500] and load.statuses[500] / total <= 0.3, load.statuses
    tags = json.loads(cli("models", "show", "fraud:2").out)["tags"]
    assert tags["mlinfra.rollout"] == "rolled back"
    decision = history(cli)[-1]
    assert decision["outcome"] == "rolled back" and decision["to"] == 1
    assert decision["reason"].startswith("rollout rolled back: error rate")
    assert "at 20%" in decision["reason"]
    assert "ROLLED BACK" in cli("history").out
    # The next apply does not try that version again: it keeps the champion, and succeeds.
    again = cli("apply", "--auto-approve")
    assert again.code == 0, again.err
    assert champion(cli) == 1 and history(cli)[-1]["outcome"] == "kept"


def test_a_quiet_endpoint_is_judged_on_its_replayed_captures(
        promoted: Path, cli: Cli) -> None:
    url, key = endpoint_url(cli), operator_key(promoted)
    for a in (0.5, -0.5, 1.5, 2.5, -1.0):  # captured, then the endpoint goes quiet
        assert call(url, key, "POST", "/invocations", {"inputs": [[a, 0.2]]})[0] == 200
    time.sleep(1.6)  # captures are written once a worker took no row for a second
    (promoted / "serving.yaml").write_text(PROJECT.format(rollout=ROLLOUT % "true"))
    (promoted / "models" / "fraud.onnx").write_bytes(failing_on_single_rows(WEIGHTS["good"]))
    applied = cli("apply", "--auto-approve")
    assert applied.code == 1, applied.out + applied.err
    assert "replaying captured requests" in applied.out
    decision = history(cli)[-1]
    assert decision["outcome"] == "rolled back", decision
    assert decision["rollout"]["replayed"] > 0
    assert champion(cli) == 1
    # A good version on the same quiet endpoint: judged on replays, and promoted.
    (promoted / "models" / "fraud.onnx").write_bytes(onnx_model((2.0, 0.1)))
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.out + applied.err
    assert champion(cli) == 3
    assert history(cli)[-1]["rollout"]["status"] == "complete"


def test_a_quiet_endpoint_without_replay_leaves_the_candidate_pending(
        promoted: Path, cli: Cli) -> None:
    """No traffic is no verdict: the traffic goes back, the candidate is not rejected
    but pending, judged again by the next apply; `on_no_traffic: promote` promotes it."""
    (promoted / "models" / "fraud.onnx").write_bytes(onnx_model(WEIGHTS["good"]))
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.out + applied.err
    assert "fraud:2 is pending" in applied.out and "replay: true" in applied.out
    assert champion(cli) == 1
    decision = history(cli)[-1]
    assert (decision["outcome"], decision["rollout"]["status"]) == ("pending", "inconclusive")
    tags = json.loads(cli("models", "show", "fraud:2").out)["tags"]
    assert "mlinfra.rejected" not in tags
    plan = cli("plan", "--detailed-exitcode")
    assert plan.code == 2 and "fraud:2 is pending" in plan.out, plan.out
    (promoted / "serving.yaml").write_text(PROJECT.format(
        rollout=(ROLLOUT % "false").replace("replay: false", "replay: false, "
                                            "on_no_traffic: promote")))
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.out + applied.err
    assert champion(cli) == 2
    assert "promoted unjudged" in history(cli)[-1]["rollout"]["why"]
    served = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]
    assert served["served"] == {"blue": "fraud:2"}
    assert cli("plan", "--detailed-exitcode").code == 0


def test_history_lists_every_alias_move(promoted: Path, cli: Cli) -> None:
    """A move by hand is in the history beside the promotions' decisions: who, when,
    from, to and why."""
    (promoted / "models" / "fraud.onnx").write_bytes(onnx_model(WEIGHTS["poor"]))
    assert cli("apply", "--auto-approve").code == 0  # fraud:2, rejected
    assert cli("models", "alias", "fraud@champion", "2").code == 0
    entries = history(cli)
    moved = entries[-1]
    assert (moved["outcome"], moved["from"], moved["to"]) == ("moved", 1, 2)
    assert moved["reason"] == "set by mlinfra models alias" and moved["user"]
    assert moved["trigger"]["command"] == "models alias"
    assert [e["outcome"] for e in entries] == ["promoted", "rejected", "moved"]
    shown = cli("history").out
    assert "fraud@champion  1 -> 2  MOVED  by models alias" in shown, shown


# --- bad input: a metric the evaluation does not produce -------------------------------

def test_a_promotion_on_a_metric_its_evaluation_does_not_produce_is_refused(
        project: Callable[..., Path], cli: Cli) -> None:
    text = PROJECT.format(rollout="").replace("metric: auc,", "metric: f1,")
    text = text.replace("{auc: {min: 0.3}}", "{aucc: {min: 0.3}}")
    root = project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
                    "serving.yaml": text})
    checked = cli("validate")
    assert checked.code == 1
    assert ("serving.yaml:26:19: promotion/fraud: compare.metric: the evaluation of model 'fraud' "
            "does not produce 'f1' (it produces auc, accuracy)") in checked.err, checked.err
    assert "gates.metrics.aucc:" in checked.err and "(did you mean 'auc'?)" in checked.err
    applied = cli("apply", "--auto-approve")
    assert applied.code == 1 and "does not produce 'f1'" in applied.err
    assert not (root / ".mlinfra" / "dev" / "state.db").exists()  # nothing ran
    no_evaluation = text.replace("evaluation: {data: holdout, label: y, metrics: [auc, "
                                 "accuracy]}\n", "")
    (root / "serving.yaml").write_text(no_evaluation)
    checked = cli("validate")
    assert "model 'fraud' has no evaluation, so it has no metric 'f1'" in checked.err


def test_an_apply_killed_during_a_rollout_leaves_a_version_judged_again(
        promoted: Path, cli: Cli) -> None:
    """kill -9 in the middle of a rollout: a canary takes traffic, the alias has not
    moved (it moves once the rollout is done). The next apply reads the operation's
    steps in the journal, removes the canary, and judges the version again: it is never
    left promoted without being judged."""
    from tests.test_endpoint_lifecycle import killed_after

    url, key = endpoint_url(cli), operator_key(promoted)
    for a in (0.5, -0.5, 1.5):
        assert call(url, key, "POST", "/invocations", {"inputs": [[a, 0.2]]})[0] == 200
    time.sleep(0.5)
    (promoted / "serving.yaml").write_text(PROJECT.format(rollout=ROLLOUT % "true"))
    (promoted / "models" / "fraud.onnx").write_bytes(onnx_model(WEIGHTS["good"]))
    code = killed_after(promoted, "mlinfra.providers.local.endpoint.rollout:_judge_step",
                        "apply", "--auto-approve")
    assert code == -9
    assert champion(cli) == 1  # the alias moves only with the promotion's change
    tags = json.loads(cli("models", "show", "fraud:2").out)["tags"]
    assert "mlinfra.rollout" not in tags
    cut = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]
    assert "canary-fraud-2" in cut["served"], cut
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.out + applied.err
    assert "the rollout of fraud:2 was cut short" in applied.out
    assert "removing canary-fraud-2, left by a rollout cut short" in applied.out
    assert champion(cli) == 2
    served = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]
    assert served["served"] == {"blue": "fraud:2"} and served["traffic"] == {"blue": 100}
    decision = history(cli)[-1]
    assert (decision["from"], decision["to"], decision["outcome"]) == (1, 2, "promoted")
    assert decision["rollout"]["status"] == "complete"
    assert json.loads(cli("models", "show", "fraud:2").out)["tags"]["mlinfra.rollout"] == \
        "complete"
    assert "No changes" in cli("plan").out

"""Batch endpoints: declared scorings kept current by plan and apply, `batch invoke` on
files and data versions, resuming after kill -9, retries and the error threshold."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from tests.conftest import Files, Result, onnx_model

ENDPOINT = """\
kind: Data
name: daily
datastore: main
path: daily.csv
---
kind: Model
name: scorer
from: {path: models/scorer.onnx}
---
kind: BatchEndpoint
name: nightly
compute: cpu
deployments:
  - {name: main, model: scorer@champion, mini_batch_size: 700, max_concurrency: 2,
     error_threshold: 0, retries: 1}
  - {name: count, model: scorer@champion, output_action: summary_only}
default: main
output: {format: csv, keep_input_columns: [customer_id]}
score:
  - {data: daily, output: daily-scores}
"""


def _named(model: bytes, features: list[str]) -> bytes:
    """The model with its feature names in its metadata, as the quickstart writes them."""
    import onnx

    proto = onnx.load_from_string(model)
    entry = proto.metadata_props.add()
    entry.key, entry.value = "feature_names", json.dumps(features)
    return bytes(proto.SerializeToString())


def _table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    # columns in another order than the model's features: matched by name
    return pa.table({"x2": rng.normal(size=rows), "customer_id": [f"c{i}" for i in
                                                                 range(rows)],
                     "x1": rng.normal(size=rows)})


def _expected(model: bytes, table: pa.Table) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    x = np.column_stack([table["x1"].to_numpy(), table["x2"].to_numpy()]).astype(np.float32)
    label, probabilities = session.run(None, {"features": x})
    return {"label": label, "probabilities": probabilities}


def _check_output(path: Path, model: bytes, table: pa.Table, fmt: str = "") -> None:
    """Row for row what onnxruntime gives in-process, in input order with row_id."""
    fmt = fmt or path.suffix.lstrip(".")
    got = pcsv.read_csv(path) if fmt == "csv" else pq.read_table(path)
    want = _expected(model, table)
    assert got.column_names == ["row_id", "customer_id", "label", "probabilities_0",
                                "probabilities_1"]
    assert got["row_id"].to_pylist() == list(range(table.num_rows))
    assert got["customer_id"].to_pylist() == table["customer_id"].to_pylist()
    assert got["label"].to_pylist() == want["label"].tolist()
    np.testing.assert_allclose(got["probabilities_1"].to_numpy(), want["probabilities"][:, 1],
                               rtol=1e-6)


@pytest.fixture
def batch_project(project: Callable[..., Path]) -> Callable[..., Path]:
    def make(extra: Files | None = None, rows: int = 3000,
             model: bytes | None = None) -> Path:
        root = project({"batch.yaml": ENDPOINT, **(extra or {})})
        (root / "models").mkdir(exist_ok=True)
        (root / "models" / "scorer.onnx").write_bytes(
            model or _named(onnx_model(), ["x1", "x2"]))
        pcsv.write_csv(_table(rows), root / "data" / "daily.csv")
        return root

    return make


def test_declared_scoring_is_rescored_only_when_the_champion_moves_or_data_changes(
        batch_project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    root = batch_project()
    first = _named(onnx_model(), ["x1", "x2"])
    assert cli("apply", "--auto-approve", "--target", "model.scorer").code == 0
    plan = cli("plan")
    assert plan.code == 1 and "alias scorer@champion points nowhere" in plan.err
    assert cli("models", "alias", "scorer@champion", "1").code == 0

    plan = cli("plan")
    assert "# batchscore.daily-scores will score daily:1 with scorer@champion" in plan.out
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    out = _scores(cli)
    assert out["version"] == 1 and out["rows"] == 3000 and out["model"] == "scorer:1"
    _check_output(Path(str(out["path"])), first, _table(3000), "csv")

    assert "No changes" in cli("plan").out  # same model, same data: not scored again

    second = _named(onnx_model((-1.0, 2.0), 0.3), ["x1", "x2"])
    (root / "models" / "scorer.onnx").write_bytes(second)
    assert cli("apply", "--auto-approve", "--target", "model.scorer").code == 0
    assert cli("models", "alias", "scorer@champion", "2").code == 0
    plan = cli("plan")
    assert "# batchscore.daily-scores will score daily:1 with scorer:2" in plan.out
    assert "(scorer@champion moved 1 -> 2)" in plan.out
    assert cli("apply", "--auto-approve").code == 0
    out = _scores(cli)
    assert (out["version"], out["model"], out["input"]) == (2, "scorer:2", "daily:1")
    _check_output(Path(str(out["path"])), second, _table(3000), "csv")

    # the alias moves back: that scoring was done, and is not done again
    assert cli("models", "alias", "scorer@champion", "1").code == 0
    plan = cli("plan")
    assert ("# batchscore.daily-scores will take daily-scores:1 again, scorer:1 over "
            "daily:1 scored before") in plan.out
    assert "(scorer@champion moved 2 -> 1)" in plan.out
    applied = cli("apply", "--auto-approve")
    assert "was scored before (daily-scores:1): not scored again" in applied.out
    assert _scores(cli)["version"] == 1

    pcsv.write_csv(_table(1200, seed=5), root / "data" / "daily.csv")
    plan = cli("plan")
    assert "will score daily:2 with scorer@champion" in plan.out
    assert "new data: daily:1 -> daily:2" in plan.out
    assert cli("apply", "--auto-approve").code == 0
    out = _scores(cli)
    assert (out["version"], out["input"], out["rows"]) == (3, "daily:2", 1200)
    _check_output(Path(str(out["path"])), first, _table(1200, seed=5), "csv")
    assert "No changes" in cli("plan").out


def test_an_alias_of_a_model_with_no_version_yet_says_the_whole_way_to_set_it(
        batch_project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    """On a fresh project `models alias` refuses every version (there is none): the
    hint says to register the model first, and following it works."""
    batch_project()
    fresh = cli("apply", "--auto-approve")
    assert fresh.code == 1
    assert ("alias scorer@champion points nowhere, and model scorer has no version yet: "
            "register it first with mlinfra apply --target model.scorer, then set the "
            "alias with mlinfra models alias scorer@champion VERSION") in fresh.err
    assert cli("apply", "--auto-approve", "--target", "model.scorer").code == 0
    plan = cli("plan")
    assert ("alias scorer@champion points nowhere: set it with mlinfra models alias "
            "scorer@champion VERSION") in plan.err and "apply --target" not in plan.err
    assert cli("models", "alias", "scorer@champion", "1").code == 0
    assert cli("plan").code == 0


def test_plan_says_which_setting_of_a_scoring_changed(
        batch_project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    """A new mini-batch size is a new job (its shards): scored again, and plan says so,
    not that the output's form changed."""
    root = batch_project(rows=800)
    _applied_with_champion(cli)
    assert cli("apply", "--auto-approve").code == 0
    (root / "batch.yaml").write_text(ENDPOINT.replace("mini_batch_size: 700",
                                                      "mini_batch_size: 500"))
    plan = cli("plan")
    assert "(mini_batch_size 700 -> 500)" in plan.out, plan.out
    (root / "batch.yaml").write_text(ENDPOINT.replace("format: csv", "format: parquet"))
    assert "(the output's form changed)" in cli("plan").out


def _scores(cli: Callable[..., Result]) -> dict[str, object]:
    found: dict[str, object] = json.loads(cli("output", "batchscore.daily-scores", "--json"
                                              ).out)["batchscore.daily-scores"]
    return found


def _applied_with_champion(cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve", "--target", "model.scorer").code == 0
    assert cli("models", "alias", "scorer@champion", "1").code == 0


def test_invoke_scores_a_csv_file_a_parquet_file_and_a_data_version(
        batch_project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    root = batch_project()
    _applied_with_champion(cli)
    model = (root / "models" / "scorer.onnx").read_bytes()
    table = _table(2500, seed=3)
    pcsv.write_csv(table, tmp_path / "in.csv")
    pq.write_table(table, tmp_path / "in.parquet")
    for source in ("in.csv", "in.parquet"):
        target = tmp_path / f"out-{source}.csv"
        done = cli("batch", "invoke", "nightly", "--input", str(tmp_path / source),
                   "--output", str(target))
        assert done.code == 0, done.err
        assert "2500 scored, 0 failed" in done.out
        _check_output(target, model, table)
    source = root / "data" / "daily.csv"
    unapplied = json.loads(cli("batch", "invoke", "nightly", "--input", "daily",
                               "--json").out)  # its file: no version yet
    assert unapplied["input"] == "data/daily.csv (data daily, not applied)"
    pinned = cli("batch", "invoke", "nightly", "--input", "daily:1")
    assert pinned.code == 1
    assert "--input daily:1: data daily has no version 1 yet: apply it first" in pinned.err
    assert cli("apply", "--auto-approve", "--target", "data.daily").code == 0
    done = cli("batch", "invoke", "nightly", "--input", "daily:1", "--json",
               "--output", str(tmp_path / "daily.csv"))
    summary = json.loads(done.out)
    assert (summary["input"], summary["mini_batches"], summary["status"]) == (
        "daily:1", 5, "completed")
    _check_output(tmp_path / "daily.csv", model, _table(3000))
    counted = json.loads(cli("batch", "invoke", "nightly", "--deployment", "count",
                             "--input", "daily", "--json").out)
    assert (counted["scored_rows"], counted["output"]) == (3000, None)
    assert not list(Path(counted["folder"]).glob("predictions.*"))
    nothing = cli("batch", "invoke", "nightly", "--deployment", "count", "--input", "daily",
                  "--output", str(tmp_path / "count.csv"))
    assert nothing.code == 1 and "has output_action: summary_only" in nothing.err
    jobs = json.loads(cli("batch", "jobs", "--json").out)
    assert sorted(j["input"] for j in jobs) == sorted(  # as each job was first asked
        ["data/daily.csv (data daily, not applied)", "daily:1", str(tmp_path / "in.csv"),
         str(tmp_path / "in.parquet")])
    assert {j["status"] for j in jobs} == {"completed"}
    with open(source, "a") as f:  # a row more, not applied: its file, not daily:2
        f.write('0.5,"c-new",0.5\n')
    changed = json.loads(cli("batch", "invoke", "nightly", "--input", "daily", "--json").out)
    assert (changed["input"], changed["rows"]) == (
        "data/daily.csv (data daily, not applied)", 3001)


def test_scores_equal_to_an_earlier_versions_are_that_version_and_apply_says_so(
        batch_project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    root = batch_project(rows=800)
    _applied_with_champion(cli)
    assert cli("apply", "--auto-approve").code == 0
    assert _scores(cli)["version"] == 1
    table = _table(800).append_column("note", pa.array(["n"] * 800))  # read by nothing
    pcsv.write_csv(table, root / "data" / "daily.csv")
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    assert "the scores are those of daily-scores:1, which stays the version, with the " \
        "lineage of the scoring that wrote it" in applied.out + applied.err
    assert "registered data version daily-scores:2" not in applied.out + applied.err
    assert (_scores(cli)["version"], _scores(cli)["input"]) == (1, "daily:2")


def test_a_new_model_version_behind_an_alias_no_promotion_moves_plans_no_scoring(
        batch_project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    root = batch_project(rows=800)
    _applied_with_champion(cli)
    assert cli("apply", "--auto-approve").code == 0
    (root / "models" / "scorer.onnx").write_bytes(
        _named(onnx_model((0.5, 0.5)), ["x1", "x2"]))  # scorer:2; champion stays 1
    plan = cli("plan")
    assert "model.scorer" in plan.out and "batchscore.daily-scores" not in plan.out
    assert cli("apply", "--auto-approve").code == 0
    assert "No changes" in cli("plan").out and _scores(cli)["model"] == "scorer:1"


def test_output_is_a_copy_in_the_file_or_folder_named_never_over_the_input(
        batch_project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    root = batch_project(rows=800)
    _applied_with_champion(cli)
    source = root / "data" / "daily.csv"
    mine = tmp_path / "mine.csv"
    assert cli("batch", "invoke", "nightly", "--input", str(source), "--output",
               str(mine)).code == 0
    scores = mine.read_bytes()
    with open(mine, "a") as f:  # the user's copy is theirs to change
        f.write("not,a,score\n")
    folder = tmp_path / "out"
    folder.mkdir()
    again = cli("batch", "invoke", "nightly", "--input", str(source), "--output",
                str(folder), "--json")  # already scored: handed out again
    assert again.code == 0, again.err
    assert json.loads(again.out)["output"] == str(folder / "predictions.csv")
    assert (folder / "predictions.csv").read_bytes() == scores

    over = cli("batch", "invoke", "nightly", "--input", "daily", "--output", str(source))
    assert over.code == 1 and "that is the input; name another file" in over.err
    assert pcsv.read_csv(source).num_rows == 800
    (tmp_path / "file").write_text("")
    blocked = cli("batch", "invoke", "nightly", "--input", str(source), "--output",
                  str(tmp_path / "file" / "x.csv"))
    assert blocked.code == 1 and "Traceback" not in blocked.err
    assert f"--output {tmp_path / 'file' / 'x.csv'}: " in blocked.err
    assert "the scores are in" in blocked.err


def _slow_model(width: int = 384) -> bytes:
    """Two features through two dense layers of `width`: slow enough that a kill lands
    while it scores."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w1 = rng.normal(size=(2, width)).astype(np.float32)
    w2 = rng.normal(size=(width, width)).astype(np.float32) / 20
    w3 = rng.normal(size=(width, 2)).astype(np.float32) / 20
    nodes = [helper.make_node("MatMul", ["features", "W1"], ["h1"]),
             helper.make_node("Relu", ["h1"], ["a1"]),
             helper.make_node("MatMul", ["a1", "W2"], ["h2"]),
             helper.make_node("Relu", ["h2"], ["a2"]),
             helper.make_node("MatMul", ["a2", "W3"], ["z"]),
             helper.make_node("Softmax", ["z"], ["probabilities"], axis=1),
             helper.make_node("ArgMax", ["probabilities"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "slow",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2"),
         numpy_helper.from_array(w3, "W3")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _named(bytes(model.SerializeToString()), ["x1", "x2"])


def test_a_scoring_killed_with_sigkill_resumes_with_no_row_lost_or_duplicated(
        batch_project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    import psutil

    model = _slow_model()
    root = batch_project(model=model)
    _applied_with_champion(cli)
    table = _table(60_000, seed=7)
    pcsv.write_csv(table, tmp_path / "big.csv")
    command = [sys.executable, "-m", "mlinfra", "batch", "invoke", "nightly", "--input",
               str(tmp_path / "big.csv"), "--output", str(tmp_path / "out.csv"), "--json"]
    proc = subprocess.Popen(command, cwd=root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    jobs = root / ".mlinfra" / "dev" / "workspaces" / "ws" / "batch" / "jobs"
    deadline = time.monotonic() + 60
    scored: list[Path] = []
    while time.monotonic() < deadline and proc.poll() is None:
        scored = list(jobs.glob("*/shards/*.csv"))
        if len(scored) >= 8:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the scoring ended before it could be killed"
    workers = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    proc.stderr.close()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == [], "workers outlived their scorer"
    folder = next(jobs.iterdir())
    manifest = json.loads((folder / "job.json").read_text())
    assert manifest["status"] == "running"  # what kill -9 leaves
    listed = json.loads(cli("batch", "jobs", "--json").out)
    assert [(j["job"], j["status"]) for j in listed] == [(folder.name, "interrupted")]
    kept = len(list(folder.glob("shards/*.csv")))
    assert 8 <= kept < 86 and not (tmp_path / "out.csv").exists()
    (folder / ".predictions.csv.99999.tmp").write_text("row_id\n0\n")  # a cut-short output

    again = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    summary = json.loads(again.stdout)
    assert summary["resumed_mini_batches"] >= kept
    assert summary["mini_batches"] == 86 and summary["scored_rows"] == 60_000
    _check_output(tmp_path / "out.csv", model, table)
    assert not list(folder.glob(".*.tmp"))


def test_jobs_lists_a_job_whose_scorer_is_gone_as_interrupted(tmp_path: Path) -> None:
    """A job marked running is running while the process recorded with its start time
    runs: not once it is gone, nor when its pid was given to another process."""
    from mlinfra.batch.jobs import list_jobs
    from mlinfra.runs.processes import this_process
    from mlinfra.state.store import HOST

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    pid, started = this_process()
    assert started is not None
    for job, manifest in {
            "alive": {"pid": pid, "pid_started": started, "host": HOST},
            "killed": {"pid": gone.pid, "pid_started": started, "host": HOST},
            "reused": {"pid": pid, "pid_started": started - 100, "host": HOST},
            "elsewhere": {"pid": gone.pid, "pid_started": started, "host": "b~0123456789ab"},
            "done": {"pid": gone.pid, "pid_started": started, "status": "completed"}}.items():
        (tmp_path / job).mkdir()
        (tmp_path / job / "job.json").write_text(json.dumps({"status": "running",
                                                             **manifest}))
    assert {j.job: j.status for j in list_jobs(tmp_path)} == {
        "alive": "running", "killed": "interrupted", "reused": "interrupted",
        "elsewhere": "running", "done": "completed"}


def _failing_model() -> bytes:
    """Looks a row's x1 up in a table of 10: a row with x1 >= 10 makes onnxruntime fail
    its whole call, as a model fails on data it cannot take."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Slice", ["features", "s", "e", "a"], ["x1"]),
             helper.make_node("Cast", ["x1"], ["i"], to=TensorProto.INT64),
             helper.make_node("Squeeze", ["i", "a"], ["idx"]),
             helper.make_node("Gather", ["table", "idx"], ["score"], axis=0)]
    graph = helper.make_graph(
        nodes, "lookup",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None])],
        [helper.make_tensor("table", TensorProto.FLOAT, [10], [float(i) for i in range(10)]),
         helper.make_tensor("s", TensorProto.INT64, [1], [0]),
         helper.make_tensor("e", TensorProto.INT64, [1], [1]),
         helper.make_tensor("a", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return _named(bytes(model.SerializeToString()), ["x1", "x2"])


def test_a_failing_mini_batch_is_retried_then_counted_against_the_threshold(
        batch_project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    root = batch_project(model=_failing_model())
    _applied_with_champion(cli)
    rows = 2000
    x1 = np.arange(rows) % 10
    x1[1500] = 42  # in the third mini-batch of 700: rows 1400..1999
    table = pa.table({"customer_id": [f"c{i}" for i in range(rows)], "x1": x1.astype(float),
                      "x2": np.zeros(rows)})
    pcsv.write_csv(table, tmp_path / "in.csv")
    failed = cli("batch", "invoke", "nightly", "--input", str(tmp_path / "in.csv"), "--json")
    assert failed.code == 1
    assert failed.err.count("600 rows failed, more than error_threshold 0") == 1
    stopped = json.loads(failed.out)  # --json: the summary for a machine, failed or not
    assert (stopped["status"], stopped["failed_rows"], stopped["output"]) == (
        "failed", 600, None)
    assert "1 failed, 1 retries" in failed.err  # tried twice (retries: 1)
    folder = next((root / ".mlinfra" / "dev" / "workspaces" / "ws" / "batch" / "jobs"
                   ).iterdir())
    errors = [json.loads(line) for line in (folder / "errors.jsonl").read_text().splitlines()]
    assert [e["row_id"] for e in errors] == list(range(1400, 2000))
    assert errors[0]["attempts"] == 2
    assert "indices element out of data bounds, idx=42" in errors[0]["error"]
    assert len(list(folder.glob("shards/*.csv"))) == 2  # what it scored is kept

    batch = (root / "batch.yaml").read_text().replace("error_threshold: 0",
                                                      "error_threshold: 600")
    (root / "batch.yaml").write_text(batch)
    done = cli("batch", "invoke", "nightly", "--input", str(tmp_path / "in.csv"), "--json",
               "--output", str(tmp_path / "out.csv"))
    assert done.code == 0, done.err
    summary = json.loads(done.out)
    assert (summary["scored_rows"], summary["failed_rows"], summary["retries"]) == (
        1400, 600, 1)
    got = pcsv.read_csv(tmp_path / "out.csv")
    assert got["row_id"].to_pylist() == list(range(1400))
    assert got["score"].to_pylist() == [float(v) for v in x1[:1400]]


def test_a_job_passed_under_a_laxer_threshold_is_judged_again_under_a_stricter_one(
        batch_project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    """The same model over the same input through two deployments: what one let pass
    (error_threshold: -1) is not taken as passed by one that allows no failed row."""
    root = batch_project(model=_failing_model())
    _applied_with_champion(cli)
    (root / "batch.yaml").write_text(ENDPOINT.replace(
        "  - {name: count,", "  - {name: lax, model: scorer@champion, mini_batch_size: 700, "
        "error_threshold: -1, retries: 1}\n  - {name: count,"))
    x1 = np.arange(2000) % 10
    x1[1500] = 42  # fails the third mini-batch: 600 rows
    pcsv.write_csv(pa.table({"customer_id": [f"c{i}" for i in range(2000)],
                             "x1": x1.astype(float), "x2": np.zeros(2000)}),
                   tmp_path / "in.csv")
    invoke = ("batch", "invoke", "nightly", "--input", str(tmp_path / "in.csv"), "--json")
    lax = cli(*invoke, "--deployment", "lax")
    assert lax.code == 0, lax.err
    assert json.loads(lax.out)["failed_rows"] == 600
    again = cli(*invoke, "--deployment", "lax")  # the same deployment: not scored again
    assert json.loads(again.out)["message"] == "already scored: not scored again"

    strict = cli(*invoke)  # main: error_threshold 0
    assert strict.code == 1
    assert "600 rows failed, more than error_threshold 0" in strict.err
    judged = json.loads(strict.out)
    assert (judged["deployment"], judged["status"], judged["output"]) == (
        "main", "failed", None)


def test_onnxruntime_prints_no_error_of_its_own_for_a_failed_mini_batch(
        batch_project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    """A mini-batch the model fails on, in the head start and in the workers, is
    reported by mlinfra only: onnxruntime's own red [E:onnxruntime:...] line for each
    attempt is not printed."""
    root = batch_project(model=_failing_model())
    _applied_with_champion(cli)
    (root / "batch.yaml").write_text((root / "batch.yaml").read_text().replace(
        "error_threshold: 0", "error_threshold: -1"))
    rows = 2000
    x1 = np.arange(rows) % 10
    x1[3] = x1[1500] = 42  # the head start's first mini-batch, and a worker's
    pcsv.write_csv(pa.table({"customer_id": [f"c{i}" for i in range(rows)],
                             "x1": x1.astype(float), "x2": np.zeros(rows)}),
                   tmp_path / "in.csv")
    done = subprocess.run([sys.executable, "-m", "mlinfra", "batch", "invoke", "nightly",
                           "--input", str(tmp_path / "in.csv"), "--json"], cwd=root,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["failed_mini_batches"], summary["retries"]) == (2, 2)
    assert "onnxruntime" not in done.stderr, done.stderr


def test_bad_input_is_named_before_any_row_is_scored(
        batch_project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    batch_project()
    _applied_with_champion(cli)
    pcsv.write_csv(pa.table({"x1": [1.0], "customer_id": ["a"]}), tmp_path / "no-x2.csv")
    missing = cli("batch", "invoke", "nightly", "--input", str(tmp_path / "no-x2.csv"))
    assert missing.code == 1
    assert "missing columns ['x2']: the model's features are ['x1', 'x2']" in missing.err
    (tmp_path / "text.csv").write_text("x1,x2,customer_id\n1,2,a\n3,4,b\n5,oops,c\n")
    text = cli("batch", "invoke", "nightly", "--input", str(tmp_path / "text.csv"))
    assert text.code == 1
    assert "column x2: row 3 (row_id 2) holds 'oops', not a number" in text.err
    assert "Traceback" not in text.err
    listed = json.loads(cli("batch", "jobs", "--json").out)
    assert [j["status"] for j in listed if j["input"].endswith("text.csv")] == ["bad input"]
    (tmp_path / "hole.csv").write_text("x1,x2,customer_id\n1,2,a\n3,,b\n")
    hole = cli("batch", "invoke", "nightly", "--input", str(tmp_path / "hole.csv"))
    assert hole.code == 1 and "column x2: row 2 (row_id 1) is empty" in hole.err
    (tmp_path / "empty.csv").write_text("x1,x2,customer_id\n")
    empty = cli("batch", "invoke", "nightly", "--input", str(tmp_path / "empty.csv"),
                "--output", str(tmp_path / "empty-out.csv"))
    assert empty.code == 0, empty.err
    assert (tmp_path / "empty-out.csv").read_text().splitlines() == [
        '"row_id","customer_id","label","probabilities_0","probabilities_1"'
    ] or pcsv.read_csv(tmp_path / "empty-out.csv").num_rows == 0
    wrong = cli("batch", "invoke", "nightly", "--input", "daily", "--output", "out.parquet")
    assert wrong.code == 1 and "writes csv (its output.format)" in wrong.err
    nowhere = cli("batch", "invoke", "nightly", "--input", "nothing.csv")
    assert nowhere.code == 1 and "neither a file nor a Data" in nowhere.err
    pinned = cli("batch", "invoke", "nightly", "--deployment", "other", "--input", "daily")
    assert pinned.code == 1 and "has no deployment 'other'" in pinned.err
    (tmp_path / "zero.csv").write_bytes(b"")
    zero = cli("batch", "invoke", "nightly", "--input", str(tmp_path / "zero.csv"))
    assert zero.code == 1
    assert "zero.csv: the file is empty (0 bytes): a CSV holds a header row" in zero.err
    pq.write_table(_table(10), tmp_path / "parquet.csv")
    named = cli("batch", "invoke", "nightly", "--input", str(tmp_path / "parquet.csv"))
    assert named.code == 1
    assert "parquet.csv: a Parquet file named .csv: name it .parquet" in named.err
    rows = ["x1,x2,customer_id", *[f"{i},{i},c{i}" for i in range(200_000)]]
    rows[150_001] = "7,c7"  # a column short, past pyarrow's first blocks
    (tmp_path / "short.csv").write_text("\n".join(rows) + "\n")
    short = cli("batch", "invoke", "nightly", "--input", str(tmp_path / "short.csv"))
    assert short.code == 1
    assert "short.csv: cannot be read as csv at line 150002: CSV parse error: Expected " \
        "3 columns, got 2: 7,c7" in short.err


def test_text_in_a_number_field_of_json_lines_is_named_with_its_row(
        batch_project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    """pyarrow infers a JSON lines block's types and fails on a field holding a number on
    one line and text on the next: the value and its row are named all the same, in the
    first block as further on, and a JSON string spelling a number is not a number."""
    batch_project()
    _applied_with_champion(cli)
    lines = [json.dumps({"x1": 1.0, "x2": float(i), "customer_id": f"c{i}"})
             for i in range(30_000)]
    for name, row, value in [("first.jsonl", 2, "oops"), ("later.jsonl", 25_000, "oops"),
                             ("quoted.jsonl", 1, "3")]:
        bad = list(lines)
        bad[row] = json.dumps({"x1": 1.0, "x2": value, "customer_id": "c"})
        (tmp_path / name).write_text("\n".join(bad) + "\n")
        text = cli("batch", "invoke", "nightly", "--input", str(tmp_path / name))
        assert text.code == 1
        assert (f"{name}: column x2: row {row + 1} (row_id {row}) holds {value!r}, not a "
                "number") in text.err, text.err
        assert "Traceback" not in text.err


def test_validate_names_file_line_and_field(project: Callable[..., Path],
                                            cli: Callable[..., Result]) -> None:
    project({"batch.yaml": ENDPOINT.replace("default: main", "default: mian").replace(
        "output: daily-scores", "output: daily"), "models/scorer.onnx": b""})
    found = cli("validate")
    assert found.code == 1
    assert ("batch.yaml:17:10: batchendpoint/nightly: default: unknown deployment 'mian' "
            "(did you mean 'main'?)") in found.err
    assert "batch.yaml:20:27: batchendpoint/nightly: score[0].output: 'daily' is a declared " \
        "Data" in found.err
    project({"batch.yaml": ENDPOINT + "  - {data: daily, output: daily-scores}\n",
             "models/scorer.onnx": b""})
    twice = cli("validate")
    assert "score[1].output: output 'daily-scores' is written by another scoring too" \
        in twice.err


def _one_mini_batch_of_40000(root: Path, cli: Callable[..., Result], source: Path,
                             settings: str) -> None:
    """The champion applied, the main deployment one worker (at most) with `settings`
    and any number of failed rows, and a 40,000-row input: one mini-batch."""
    _applied_with_champion(cli)
    (root / "batch.yaml").write_text(ENDPOINT.replace(
        "mini_batch_size: 700, max_concurrency: 2,\n     error_threshold: 0, retries: 1",
        f"mini_batch_size: 40000, max_concurrency: 1,\n     error_threshold: -1, {settings}"))
    pcsv.write_csv(_table(40000), source)


def test_a_mini_batch_past_its_timeout_is_stopped_tried_again_then_counted(
        batch_project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    root = batch_project(model=_slow_model())
    _one_mini_batch_of_40000(root, cli, tmp_path / "in.csv", "retries: 1, timeout: 50ms")
    done = cli("batch", "invoke", "nightly", "--input", str(tmp_path / "in.csv"), "--json")
    assert done.code == 0, done.err
    summary = json.loads(done.out)
    assert (summary["failed_mini_batches"], summary["retries"], summary["failed_rows"]) == (
        1, 1, 40000)
    first = json.loads(Path(summary["errors"]).read_text().splitlines()[0])
    assert (first["error"], first["attempts"]) == ("timed out after 0.05s", 2)


def test_the_timeout_holds_for_the_mini_batches_the_scorer_scores_itself(
        batch_project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    """One mini-batch is scored by the scorer's own session (no worker starts): a call
    past the timeout is a failed attempt when the timeout ends, not when the call does
    (seconds here: two layers of 2,048 over 40,000 rows)."""
    root = batch_project(model=_slow_model(2048))
    _one_mini_batch_of_40000(root, cli, tmp_path / "in.csv", "retries: 0, timeout: 100ms")
    command = [sys.executable, "-m", "mlinfra", "batch", "invoke", "nightly", "--input",
               str(tmp_path / "in.csv"), "--json"]
    began = time.monotonic()
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - began
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert (summary["failed_mini_batches"], summary["failed_rows"]) == (1, 40000)
    first = json.loads(Path(summary["errors"]).read_text().splitlines()[0])
    assert (first["error"], first["attempts"]) == ("timed out after 0.1s", 1)
    session = ort.InferenceSession(_slow_model(2048), providers=["CPUExecutionProvider"])
    x = np.zeros((40000, 2), dtype=np.float32)
    full = time.monotonic()
    session.run(None, {"features": x})
    full = time.monotonic() - full
    # the call left to its thread did not hold up the job's end, nor the command's exit
    assert summary["elapsed_s"] < full / 2 and took < full + 10, (summary, took, full)


def test_the_progress_bar_shows_rows_rate_and_mini_batches(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from mlinfra.batch.scoring import Progress
    from mlinfra.cli.batch import _ProgressBar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    monkeypatch.setenv("COLUMNS", "80")
    with _ProgressBar("scorer:1 over daily:1") as bar:
        bar.update(Progress(rows=20000, mini_batches=2, failed_mini_batches=1,
                            elapsed_s=2.0))
    shown = capsys.readouterr().err
    assert "scorer:1 over daily:1" in shown and "20,000 rows" in shown
    assert "10,000/s" in shown and "2 mini-batches" in shown and "1 failed" in shown
    with _ProgressBar("scorer:1 over " + "a-long-file-name/" * 5 + "in.parquet") as bar:
        bar.update(Progress(rows=1_021_000, total_rows=2_000_000, mini_batches=103,
                            failed_mini_batches=0, elapsed_s=0.5))
    drawn = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", capsys.readouterr().err)  # no colours
    line = [part.strip() for part in re.split(r"[\r\n]", drawn) if part.strip()][-1]
    assert len(line) <= 80 and "…" in line  # the figures whole, the description cut
    assert "51%" in line and "1,021,000 rows" in line and "2,042,000/s" in line
    assert "103 mini-batches" in line and "0 failed" in line


def test_a_declared_scoring_writes_the_state_only_through_the_unit_of_work(
        batch_project: Callable[..., Path], cli: Callable[..., Result]) -> None:
    from mlinfra.data.versions import DataVersions
    from mlinfra.engine import execute, open_session, plan

    root = batch_project(rows=800)
    _applied_with_champion(cli)
    session = open_session(root, None, "apply", write=True)
    try:
        session.store.engine_only = True  # any write but the engine's is refused
        result = execute(session, plan(session))
        assert result.ok, (result.failed, result.skipped)
        scores = DataVersions(session.store).get("daily-scores")
        assert scores is not None
        lineage = scores.metadata["lineage"]
        daily = DataVersions(session.store).get("daily")
        assert daily is not None
        assert (lineage["model"], lineage["data"], lineage["endpoint"],
                lineage["deployment"]) == ("scorer:1", "daily:1", "nightly", "main")
        assert lineage["data_sha256"] == daily.sha256
        assert (root / ".mlinfra" / "dev" / "workspaces" / "ws" / "batch" / "jobs" /
                lineage["job"] / "job.json").is_file()
        assert ("data.version_created", "data.daily-scores") in {
            (e.type, e.subject) for _, e in session.store.events()}
    finally:
        session.close()


def test_an_input_of_fewer_mini_batches_than_max_concurrency_starts_fewer_workers(
        tmp_path: Path) -> None:
    from mlinfra.batch.scoring import Progress, Scorer, Scoring, Settings
    from mlinfra.batch.worker import _numpy

    def most(path: Path, fmt: str, size: int, total: int | None = None) -> int:
        scoring = Scoring("e", "main", "scorer", 1, tmp_path / "m.onnx", "0", path, fmt,
                          str(path), "0", Settings(mini_batch_size=size, max_concurrency=4))
        scorer = Scorer(scoring, tmp_path / "jobs")
        scorer.progress = Progress(total_rows=total)
        return scorer._most_mini_batches(2)

    table = _table(3000)
    pcsv.write_csv(table, tmp_path / "in.csv")
    pq.write_table(table, tmp_path / "in.parquet")
    # an upper bound from the file's size (two bytes a column read at least): never
    # fewer mini-batches than the file holds
    assert most(tmp_path / "in.csv", "csv", 40_000) == 1
    assert most(tmp_path / "in.csv", "csv", 700) >= 5
    assert most(tmp_path / "in.parquet", "parquet", 700, total=3000) == 5
    # the workers read columns from Arrow's buffers, slices and booleans included
    for array in (pa.array(np.arange(10.0)), pa.array(np.arange(10)),
                  pa.array([True, False, True] * 4)):
        part = array.slice(3, 6)
        got = _numpy(part)
        assert got.tolist() == part.to_pylist()


def _scoring(tmp_path: Path, model: bytes, source: Path, fmt: str, **settings: object
             ) -> Any:
    """A Scoring of `model` over `source` through the API, as `batch invoke` makes it."""
    from mlinfra.batch.scoring import Output, Scoring, Settings
    from mlinfra.data.versions import file_sha256

    path = tmp_path / "model.onnx"
    path.write_bytes(model)
    return Scoring("e", "main", "scorer", 1, path, file_sha256(path), source,
                   source.suffix.lstrip("."), str(source), file_sha256(source),
                   Settings(**settings),  # type: ignore[arg-type]
                   Output(format=fmt, keep=("customer_id",)))


def _path(found: str | None) -> Path:
    assert found is not None
    return Path(found)


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_every_output_format_is_the_shards_in_order_with_one_header(
        tmp_path: Path, fmt: str) -> None:
    """CSV and JSON lines shards are the output's own bytes, appended; Parquet shards
    are Arrow files written as row groups. Either way: every row once, in order."""
    import pyarrow.json as pjson

    from mlinfra.batch.scoring import Scorer

    model = _named(onnx_model(), ["x1", "x2"])
    table = _table(3000)
    pcsv.write_csv(table, tmp_path / "in.csv")
    scoring = _scoring(tmp_path, model, tmp_path / "in.csv", fmt, mini_batch_size=700,
                       max_concurrency=2)
    summary = Scorer(scoring, tmp_path / "jobs").run()
    assert summary.mini_batches == 5 and summary.scored_rows == 3000
    out = _path(summary.output)
    if fmt == "csv":
        assert out.read_text().count("row_id") == 1  # one header, not one a shard
        _check_output(out, model, table)
    elif fmt == "parquet":
        _check_output(out, model, table)
    else:
        got = pjson.read_json(out)
        want = _expected(model, table)
        assert got["row_id"].to_pylist() == list(range(3000))
        assert got["customer_id"].to_pylist() == table["customer_id"].to_pylist()
        assert got["label"].to_pylist() == want["label"].tolist()
    assert not (out.parent / "shards").exists()  # removed once the output is whole


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_kept_column_the_model_reads_is_kept_and_scored(tmp_path: Path, fmt: str) -> None:
    """keep_input_columns may name a column the model reads: a CSV input's is read once,
    as a number (it was read twice, and every mini-batch failed on the duplicate)."""
    import dataclasses

    from mlinfra.batch.scoring import Output, Scorer

    model = _named(onnx_model(), ["x1", "x2"])
    table = _table(1500)
    pcsv.write_csv(table, tmp_path / "in.csv")
    scoring = dataclasses.replace(
        _scoring(tmp_path, model, tmp_path / "in.csv", fmt, mini_batch_size=700),
        output=Output(format=fmt, keep=("customer_id", "x1")))
    summary = Scorer(scoring, tmp_path / "jobs").run()
    assert (summary.scored_rows, summary.failed_rows) == (1500, 0)
    out = _path(summary.output)
    got = pcsv.read_csv(out) if fmt == "csv" else pq.read_table(out)
    assert got.column_names[:3] == ["row_id", "customer_id", "x1"]
    np.testing.assert_allclose(got["x1"].to_numpy(), table["x1"].to_numpy())
    assert got["label"].to_pylist() == _expected(model, table)["label"].tolist()


def _two_inputs_model() -> bytes:
    """y = x1 + 2 x2 from two inputs named as the columns, an output of shape [N, 1]."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Mul", ["x2", "two"], ["x2x2"]),
             helper.make_node("Add", ["x1", "x2x2"], ["s"]),
             helper.make_node("Unsqueeze", ["s", "axis"], ["y"])]
    graph = helper.make_graph(
        nodes, "sum",
        [helper.make_tensor_value_info("x1", TensorProto.FLOAT, [None]),
         helper.make_tensor_value_info("x2", TensorProto.FLOAT, [None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
         helper.make_tensor("axis", TensorProto.INT64, [1], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_inputs_by_name_a_column_output_zipmap_labels_and_kept_text(tmp_path: Path) -> None:
    """Columns by name to a model's inputs; an output of shape [N, 1] is one column; a
    ZipMap's labels name the probability columns; a CSV's kept column is its text."""
    import onnx
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    from mlinfra.batch.scoring import Scorer

    (tmp_path / "in.csv").write_text(
        "customer_id,x2,x1\n007,1,0.5\n0.50,-2,3\n\"a,b\",0,0\n")
    summary = Scorer(_scoring(tmp_path, _two_inputs_model(), tmp_path / "in.csv", "csv"),
                     tmp_path / "jobs").run()
    assert _path(summary.output).read_text().splitlines() == [
        '"row_id","customer_id","y"', '0,"007",2.5', '1,"0.50",-1', '2,"a,b",0']

    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    fitted = LogisticRegression().fit(x, np.where(x[:, 0] > 0, "yes", "no"))
    proto = to_onnx(fitted, x[:1], target_opset=17)
    model = _named(proto.SerializeToString(), ["x1", "x2"])
    (tmp_path / "clf").mkdir()
    summary = Scorer(_scoring(tmp_path / "clf", model, tmp_path / "in.csv", "parquet"),
                     tmp_path / "jobs").run()
    got = pq.read_table(_path(summary.output))
    assert got.column_names == ["row_id", "customer_id", "output_label",
                                "output_probability_no", "output_probability_yes"]
    assert got["customer_id"].to_pylist() == ["007", "0.50", "a,b"]
    assert got["output_label"].to_pylist() == ["yes", "yes", "no"]
    assert onnx.load_from_string(model).graph.output[1].name == "output_probability"


def test_output_columns_may_name_the_class_columns_a_user_sees(tmp_path: Path) -> None:
    """`columns` takes the names the output shows: probabilities_0, ... (or a ZipMap's
    labels) pick class columns of a 2-D output; a name it does not take is refused with
    the names it takes."""
    import dataclasses

    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    from mlinfra.batch.scoring import Output, Scorer
    from mlinfra.errors import MlinfraError

    model = _named(onnx_model(), ["x1", "x2"])
    table = _table(1500)
    pcsv.write_csv(table, tmp_path / "in.csv")
    base = _scoring(tmp_path, model, tmp_path / "in.csv", "csv", mini_batch_size=700)

    def scored(*columns: str, folder: str = "jobs", scoring: Any = base) -> pa.Table:
        chosen = dataclasses.replace(scoring, output=Output(format="csv", columns=columns,
                                                            keep=("customer_id",)))
        return pcsv.read_csv(_path(Scorer(chosen, tmp_path / folder).run().output))

    got = scored("row_id", "label", "probabilities_1")
    assert got.column_names == ["row_id", "label", "probabilities_1"]
    want = _expected(model, table)
    assert got["label"].to_pylist() == want["label"].tolist()
    np.testing.assert_allclose(got["probabilities_1"].to_numpy(), want["probabilities"][:, 1],
                               rtol=1e-6)
    assert scored("customer_id", "probabilities").column_names == [
        "customer_id", "probabilities_0", "probabilities_1"]  # an output: all its columns

    with pytest.raises(MlinfraError) as refused:
        scored("row_id", "probabilities_2")
    assert ("output columns ['probabilities_2'] are neither row_id, an output of scorer:1 "
            "(label, probabilities (or its columns probabilities_0, probabilities_1)), nor "
            "a kept input column (customer_id)") in str(refused.value)
    with pytest.raises(MlinfraError, match=r"name \['probabilities_0'\] twice"):
        scored("probabilities", "probabilities_0")

    x = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32)
    fitted = LogisticRegression().fit(x, np.where(x[:, 0] > 0, "yes", "no"))
    zipmap = _named(to_onnx(fitted, x[:1], target_opset=17).SerializeToString(), ["x1", "x2"])
    (tmp_path / "clf").mkdir()
    clf = _scoring(tmp_path / "clf", zipmap, tmp_path / "in.csv", "csv")
    got = scored("row_id", "output_probability_yes", folder="clf-jobs", scoring=clf)
    assert got.column_names == ["row_id", "output_probability_yes"]
    np.testing.assert_allclose(
        got["output_probability_yes"].to_numpy(),
        fitted.predict_proba(np.column_stack([table["x1"], table["x2"]]))[:, 1], atol=1e-5)


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_a_fraction_fed_to_an_integer_input_is_named(tmp_path: Path, suffix: str) -> None:
    """An integer input fed 4.5 is bad input named with its row, in every format (a
    Parquet file's float column was an internal error: pyarrow's cast failed)."""
    from onnx import TensorProto, helper

    from mlinfra.batch.scoring import Scorer
    from mlinfra.batch.source import BatchInputError

    graph = helper.make_graph(
        [helper.make_node("Cast", ["features"], ["score"], to=TensorProto.FLOAT)], "ints",
        [helper.make_tensor_value_info("features", TensorProto.INT64, [None, 2])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, [None, 2])])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    model = _named(proto.SerializeToString(), ["x1", "x2"])
    table = pa.table({"customer_id": ["a", "b", "c"], "x1": [1.0, 2.0, 3.0],
                      "x2": [1.0, 4.5, 2.0]})
    source = tmp_path / f"in.{suffix}"
    if suffix == "csv":
        source.write_text("customer_id,x1,x2\na,1,1\nb,2,4.5\nc,3,2\n")
    elif suffix == "jsonl":
        source.write_text('{"customer_id": "a", "x1": 1, "x2": 1}\n'
                          '{"customer_id": "b", "x1": 2, "x2": 4.5}\n{"x1": 3, "x2": 2}\n')
    else:
        pq.write_table(table, source)
    with pytest.raises(BatchInputError) as raised:
        Scorer(_scoring(tmp_path, model, source, "csv"), tmp_path / "jobs").run()
    assert "column x2" in raised.value.message
    assert "row 2 (row_id 1) holds '4.5', not an integer" in raised.value.message
    pq.write_table(table.set_column(2, "x2", pa.array([1.0, 4.0, 2.0])), tmp_path / "ok.parquet")
    done = Scorer(_scoring(tmp_path, model, tmp_path / "ok.parquet", "csv"),
                  tmp_path / "jobs").run()
    assert done.scored_rows == 3


def test_a_kept_column_a_csv_output_cannot_hold_is_named_before_scoring(
        tmp_path: Path) -> None:
    from mlinfra.batch.scoring import Scorer
    from mlinfra.batch.source import BatchInputError

    table = _table(100).set_column(1, "customer_id", pa.array([[i] for i in range(100)]))
    pq.write_table(table, tmp_path / "in.parquet")
    model = _named(onnx_model(), ["x1", "x2"])
    with pytest.raises(BatchInputError) as raised:
        Scorer(_scoring(tmp_path, model, tmp_path / "in.parquet", "csv"),
               tmp_path / "jobs").run()
    assert "keep_input_columns: column customer_id holds list<element: int64>, which a CSV " \
        "output cannot" in raised.value.message
    done = Scorer(_scoring(tmp_path, model, tmp_path / "in.parquet", "jsonl"),
                  tmp_path / "jobs").run()
    assert done.scored_rows == 100


def test_each_worker_gets_the_cores_divided_among_the_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlinfra.batch import scoring as module

    specs: list[dict[str, object]] = []
    start = module._Pool.__init__

    def record(pool: Any, context: Any, results: Any, spec: dict[str, object],
               size: int) -> None:
        specs.append({**spec, "workers": size})
        start(pool, context, results, spec, size)

    monkeypatch.setattr(module._Pool, "__init__", record)
    monkeypatch.setattr(module, "cores", lambda: 4)
    model = _named(onnx_model(), ["x1", "x2"])
    pcsv.write_csv(_table(3000), tmp_path / "in.csv")
    for concurrency, threads in ((2, 2), (3, 1)):
        scoring = _scoring(tmp_path, model, tmp_path / "in.csv", "csv",
                           mini_batch_size=700, max_concurrency=concurrency)
        module.Scorer(scoring, tmp_path / f"jobs-{concurrency}").run()
        assert (specs[-1]["workers"], specs[-1]["threads"]) == (concurrency, threads)


def test_batch_invoke_starts_the_fork_server_before_numpy_with_one_blas_thread(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """`batch invoke` starts the fork server first of all: the command's module and
    mlinfra.batch import no NumPy, so the server's imports run beside the command's.
    OpenBLAS starts one thread in the command's process, unless the user chose."""
    imported = subprocess.run(
        [sys.executable, "-c", "import sys, mlinfra.cli.batch, mlinfra.batch; "
         "print(sorted({'numpy', 'pyarrow', 'onnxruntime'} & set(sys.modules)))"],
        capture_output=True, text=True, check=True)
    assert imported.stdout.strip() == "[]"

    import psutil

    from mlinfra.cli.batch import _before_scoring

    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "")  # restored as it was, after
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    _before_scoring()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "1"
    assert any("multiprocessing.forkserver" in " ".join(p.cmdline())
               for p in psutil.Process().children())  # running
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "4")
    _before_scoring()
    assert os.environ["OPENBLAS_NUM_THREADS"] == "4"


def test_an_input_of_one_mini_batch_is_scored_without_starting_a_worker(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlinfra.batch import scoring as module

    started: list[int] = []
    monkeypatch.setattr(module._Pool, "_start", lambda pool: started.append(1))
    model = _named(onnx_model(), ["x1", "x2"])
    table = _table(500)
    pcsv.write_csv(table, tmp_path / "in.csv")
    summary = module.Scorer(_scoring(tmp_path, model, tmp_path / "in.csv", "csv"),
                            tmp_path / "jobs").run()
    assert summary.scored_rows == 500 and started == []
    _check_output(_path(summary.output), model, table)


def test_a_mini_batch_that_fails_in_the_head_start_is_retried_by_the_workers(
        tmp_path: Path) -> None:
    """The scorer scores the first mini-batches itself while its workers start; one that
    fails there counts as an attempt, and the workers try it again: retries + 1 in all,
    and every other row scored."""
    from mlinfra.batch.scoring import Scorer

    x1 = np.arange(2000) % 10
    x1[3] = 42  # the first mini-batch, always the head start's first
    table = pa.table({"customer_id": [f"c{i}" for i in range(2000)],
                      "x1": x1.astype(float), "x2": np.zeros(2000)})
    pcsv.write_csv(table, tmp_path / "in.csv")
    scoring = _scoring(tmp_path, _failing_model(), tmp_path / "in.csv", "csv",
                       mini_batch_size=700, retries=2, error_threshold=-1)
    summary = Scorer(scoring, tmp_path / "jobs").run()
    assert (summary.failed_mini_batches, summary.retries, summary.failed_rows) == (1, 2, 700)
    errors = [json.loads(line) for line in _path(summary.errors).read_text().splitlines()]
    assert errors[0]["row_id"] == 0 and errors[0]["attempts"] == 3
    assert [e["row_id"] for e in errors] == list(range(700))
    got = pcsv.read_csv(_path(summary.output))
    assert got["row_id"].to_pylist() == list(range(700, 2000))


def test_a_worker_killed_with_two_mini_batches_counts_one_attempt_and_loses_no_row(
        tmp_path: Path) -> None:
    """A worker holds the mini-batch it scores and the next; killed, the first counts as
    a failed attempt (retried), the second comes back untried."""
    import psutil

    from mlinfra.batch.scoring import Scorer

    model = _slow_model()
    table = _table(140_000, seed=3)
    pcsv.write_csv(table, tmp_path / "in.csv")
    scoring = _scoring(tmp_path, model, tmp_path / "in.csv", "csv", mini_batch_size=7000,
                       max_concurrency=2, retries=1)
    killed: list[int] = []

    def kill_a_worker() -> None:
        # a worker (the fork server's child) that has spent CPU is scoring: it was sent
        # two mini-batches at once when it became ready
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            for process in psutil.Process().children(recursive=True):
                try:
                    busy = process.ppid() != os.getpid() and sum(
                        process.cpu_times()[:2]) > 0.1
                except psutil.Error:
                    continue
                if busy:
                    process.kill()
                    killed.append(process.pid)
                    break
            time.sleep(0.005)

    killer = threading.Thread(target=kill_a_worker)
    killer.start()
    summary = Scorer(scoring, tmp_path / "jobs").run()
    killer.join()
    assert killed, "no worker was killed"
    assert (summary.scored_rows, summary.failed_rows, summary.retries) == (140_000, 0, 1)
    _check_output(_path(summary.output), model, table)

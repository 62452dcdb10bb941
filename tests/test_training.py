"""Jobs, pipelines, runs, metrics, data gates and the model registry, with real
subprocesses and real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mlinfra.registry.evaluate import auc
from tests.conftest import Result, onnx_model

MLINFRA = str(Path(sys.executable).parent / "mlinfra")


TRAIN = '''\
import argparse, shutil
from mlinfra_run import log_metric, log_param
p = argparse.ArgumentParser()
p.add_argument("--data"); p.add_argument("--model"); p.add_argument("--C", type=float)
a = p.parse_args()
rows = open(a.data).read().strip().splitlines()[1:]
log_param("C", a.C)
for step in range(1, 4):
    log_metric("loss", 1.0 / step, step=step)
log_metric("rows", len(rows))
shutil.copyfile("template.onnx", a.model)
print(f"trained on {len(rows)} rows")
'''

PROJECT = """\
kind: Data
name: transactions
path: transactions.csv
expectations:
  - expect_column_values_to_not_be_null: {column: a}
---
kind: Data
name: holdout
path: holdout.csv
---
kind: Job
name: train
code: ./train
command: python train.py --data ${inputs.data} --model ${outputs.model} --C ${params.C}
inputs: {data: transactions}
params: {C: 1.0}
outputs: {model: model.onnx}
---
kind: Model
name: fraud
from: {job: train, output: model}
evaluation: {data: holdout, label: y, metrics: [auc, accuracy, f1, logloss]}
"""

DATA = "a,b,y\n1.0,0.5,1\n-1.0,0.2,0\n0.5,1.5,0\n2.0,-1.0,1\n"


@pytest.fixture
def trainable(project: Callable[..., Path]) -> Path:
    return project({"training.yaml": PROJECT, "train/train.py": TRAIN,
                    "train/template.onnx": onnx_model(), "data/transactions.csv": DATA,
                    "data/holdout.csv": DATA})


def test_train_register_and_retrain_on_new_data(trainable: Path,
                                                cli: Callable[..., Result]) -> None:
    first = cli("apply", "--auto-approve")
    assert first.code == 0, first.err
    assert "# job.train will run" in first.out and "trained on 4 rows" in first.out
    assert "model.fraud: registered version 1" in first.out
    assert cli("plan", "--detailed-exitcode").code == 0  # nothing runs again

    listed = cli("runs", "list").out
    run_id = listed.splitlines()[1].split()[0]
    shown = json.loads(cli("runs", "show", run_id).out)
    assert shown["status"] == "completed" and shown["inputs"] == {"data": "transactions:1"}
    assert shown["params"] == {"C": 1.0}
    assert shown["metrics"] == {"loss": pytest.approx(1 / 3), "rows": 4.0}
    assert shown["duration_s"] > 0 and shown["exit_code"] == 0
    assert Path(shown["run_dir"], "snapshot.zip").exists()
    assert "trained on 4 rows" in cli("runs", "logs", run_id).out

    model = json.loads(cli("models", "show", "fraud").out)
    assert model["version"] == 1 and model["run_id"] == run_id
    assert model["signature"]["inputs"] == [{"name": "features", "type": "tensor(float)",
                                             "shape": [None, 2]}]
    assert model["lineage"]["inputs"] == {"data": "transactions:1"}
    assert set(model["metrics"]) == {"auc", "accuracy", "f1", "logloss", "evaluated_on"}

    with (trainable / "data" / "transactions.csv").open("a") as f:
        f.write("3.0,0.1,1\n")
    plan = cli("plan", "--detailed-exitcode")
    assert plan.code == 2
    assert "# job.train will run" in plan.out
    assert "inputs_resolved.data transactions:1 -> transactions:2" in plan.out
    again = cli("apply", "--auto-approve")
    assert again.code == 0 and "trained on 5 rows" in again.out
    # the same model bytes: the registry keeps one version for one content
    assert "model.fraud: is already version 1" in again.out


def test_evaluation_metrics_are_right(trainable: Path, cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    metrics = json.loads(cli("models", "show", "fraud:1").out)["metrics"]
    x = np.array([[1.0, 0.5], [-1.0, 0.2], [0.5, 1.5], [2.0, -1.0]])
    y = np.array([1, 0, 0, 1])
    p = 1 / (1 + np.exp(-(x @ np.array([1.5, -0.5]) + 0.1)))
    pairs = [(pi > pj) + 0.5 * (pi == pj) for pi, yi in zip(p, y, strict=True) if yi == 1
             for pj, yj in zip(p, y, strict=True) if yj == 0]
    assert metrics["auc"] == pytest.approx(sum(pairs) / len(pairs))
    assert metrics["accuracy"] == pytest.approx(np.mean((p >= 0.5) == y))
    assert metrics["logloss"] == pytest.approx(
        -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), rel=1e-5)
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.5, 0.9])) == pytest.approx(0.875)


def test_aliases_tags_archive(trainable: Path, cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    missing = cli("models", "alias", "fraud@champion", "9")
    assert missing.code == 1 and "has no version 9" in missing.err
    assert cli("models", "show", "fraud@champion").code == 1
    assert cli("models", "alias", "fraud@champion", "1").code == 0
    assert json.loads(cli("models", "show", "fraud@champion").out)["version"] == 1
    assert cli("models", "tag", "fraud:1", "reviewed=yes").code == 0
    assert json.loads(cli("models", "show", "fraud:1").out)["tags"] == {"reviewed": "yes"}
    assert "fraud:1  champion" in cli("models", "list").out


def test_archive_refused_while_an_endpoint_serves_it(trainable: Path,
                                                     cli: Callable[..., Result]) -> None:
    assert cli("apply", "--auto-approve").code == 0
    (trainable / "serving.yaml").write_text(
        "kind: Endpoint\nname: api\ndeployments: [{name: blue, model: fraud:1}]\n"
        "traffic: {blue: 100}\n")
    refused = cli("models", "archive", "fraud:1")
    assert refused.code == 1 and "used by endpoint api (deployment blue)" in refused.err


def test_data_gate_stops_the_run(trainable: Path, cli: Callable[..., Result]) -> None:
    (trainable / "data" / "transactions.csv").write_text("a,b,y\n,0.5,1\n1.0,0.2,0\n")
    result = cli("apply", "--auto-approve")
    assert result.code == 1
    assert "expect_column_values_to_not_be_null(column='a'): 1 of 2 rows fail" in result.err
    assert "not applied: job.train (data.transactions was not applied)" in result.err
    assert len(cli("runs", "list").out.splitlines()) == 1  # the header only
    checked = cli("data", "validate", "transactions")
    assert checked.code == 1 and "0 passed, 1 failed" in checked.out


@pytest.mark.parametrize(("script", "message"), [
    ("import sys\nprint('boom')\nsys.exit(3)\n", "exited with code 3"),
    ("print('forgot the output')\n", "did not write its declared output model (model.onnx)"),
    ("from mlinfra_run import log_metric\nlog_metric('auc', 'high')\n",
     "log_metric('auc', 'high'): the value must be a number"),
])
def test_failed_runs(trainable: Path, cli: Callable[..., Result], script: str,
                     message: str) -> None:
    (trainable / "train" / "train.py").write_text(script)
    result = cli("apply", "--auto-approve")
    assert result.code == 1
    assert message in result.err and "Traceback (most recent call last)" not in (
        result.err.split("  | ")[0])
    assert "not applied: model.fraud (job.train was not applied)" in result.err
    assert cli("models", "list").out.strip() == "MODEL  ALIASES  CREATED  RUN  METRICS  STATUS"
    assert " failed " in cli("runs", "list").out


def test_timeout_kills_the_process_group(trainable: Path, cli: Callable[..., Result]) -> None:
    pid_file = trainable / "child.pid"
    (trainable / "train" / "train.py").write_text(
        "import subprocess, time\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "time.sleep(60)\n")
    text = (trainable / "training.yaml").read_text()
    (trainable / "training.yaml").write_text(text.replace("outputs: {model: model.onnx}",
                                                          "outputs: {model: model.onnx}\n"
                                                          "timeout: 1s"))
    result = cli("apply", "--auto-approve")
    assert result.code == 1 and "timed out after 1s" in result.err
    child = int(pid_file.read_text())
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(
        f"/proc/{child}/stat").read_text().split(")")[1].split()[0]


def test_onnx_that_cannot_load_is_refused(project: Callable[..., Path],
                                          cli: Callable[..., Result]) -> None:
    project({"m.yaml": "kind: Model\nname: broken\nfrom: {path: broken.onnx}\n",
             "broken.onnx": b"this is not a model"})
    result = cli("apply", "--auto-approve")
    assert result.code == 1
    assert "model.broken: refused: onnxruntime cannot load it" in result.err


PIPELINE = """\
kind: Job
name: a
code: ./steps
command: python step.py a ${outputs.out}
outputs: {out: a.txt}
---
kind: Job
name: b
code: ./steps
command: python step.py b ${outputs.out} ${inputs.src}
inputs: {src: "${jobs.a.outputs.out}"}
outputs: {out: b.txt}
---
kind: Job
name: c
code: ./steps
command: python step.py c ${outputs.out} ${inputs.src} ${params.tag}
inputs: {src: "${jobs.b.outputs.out}"}
params: {tag: one}
outputs: {out: c.txt}
---
kind: Pipeline
name: abc
steps:
  first: {job: a}
  second: {job: b, inputs: {src: "${steps.first.outputs.out}"}}
  third: {job: c, inputs: {src: "${steps.second.outputs.out}"}}
"""
STEP = """\
import sys
name, out = sys.argv[1], sys.argv[2]
upstream = open(sys.argv[3]).read() if len(sys.argv) > 3 else ""
extra = sys.argv[4] if len(sys.argv) > 4 else ""
open(out, "w").write(upstream + name + extra + "\\n")
print("ran", name + extra)
"""


def test_pipeline_reuses_unchanged_steps(project: Callable[..., Path],
                                         cli: Callable[..., Result]) -> None:
    root = project({"p.yaml": PIPELINE, "steps/step.py": STEP})
    first = cli("apply", "--auto-approve")
    assert first.code == 0, first.err
    assert [line.split(": ")[1] for line in first.out.splitlines() if ": ran " in line] == [
        "ran a", "ran b", "ran cone"]
    (root / "p.yaml").write_text(PIPELINE.replace("params: {tag: one}", "params: {tag: two}"))
    plan = cli("plan")
    assert "# pipeline.abc will run" in plan.out
    assert "# job.c will be updated in-place" in plan.out  # it runs only as a step
    assert "steps_resolved.third.run_hash" in plan.out
    assert "steps_resolved.first.run_hash" not in plan.out
    second = cli("apply", "--auto-approve")
    assert second.code == 0, second.err
    assert "pipeline.abc/first: reused (inputs unchanged)" in second.out
    assert "pipeline.abc/second: reused (inputs unchanged)" in second.out
    assert [line.split(": ")[1] for line in second.out.splitlines() if ": ran " in line] == [
        "ran ctwo"]
    runs = cli("runs", "list").out.splitlines()[1:]
    assert sum(" third " in r for r in runs) == 2 and sum(" first " in r for r in runs) == 1
    pipeline = json.loads(cli("output", "pipeline.abc", "--json").out)["pipeline.abc"]
    third = json.loads(cli("runs", "show", pipeline["steps"]["third"]["run_id"]).out)
    assert third["parent"] == pipeline["run_id"]


def start_apply(cwd: Path) -> subprocess.Popen[str]:
    """`mlinfra apply --auto-approve` with its output streamed line by line. SIGINT is
    restored: a test run started in the background inherits it ignored."""
    return subprocess.Popen([MLINFRA, "apply", "--auto-approve"], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_data_edited_during_a_run_records_what_it_read(trainable: Path) -> None:
    (trainable / "train" / "train.py").write_text(TRAIN.replace(
        'rows = open(a.data)',
        'import time; print("started", flush=True); time.sleep(1.5)\nrows = open(a.data)'))
    proc = start_apply(trainable)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("job.train: started"):
            break
    (trainable / "data" / "transactions.csv").write_text(DATA + "9,9,1\n9,9,1\n")
    out = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(timeout=60) == 0, out
    assert "trained on 4 rows" in out  # the content of version 1, not the edit
    done = subprocess.run([MLINFRA, "runs", "list"], cwd=trainable, capture_output=True,
                          text=True, check=True)
    run_id = done.stdout.splitlines()[1].split()[0]
    shown = subprocess.run([MLINFRA, "runs", "show", run_id], cwd=trainable,
                           capture_output=True, text=True, check=True)
    assert json.loads(shown.stdout)["inputs"] == {"data": "transactions:1"}


def test_ctrl_c_cancels_the_run(trainable: Path) -> None:
    (trainable / "train" / "train.py").write_text("import time\nprint('started')\n"
                                                  "time.sleep(60)\n")
    proc = start_apply(trainable)
    assert proc.stdout is not None
    for line in proc.stdout:
        if "started" in line:
            break
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    proc.stdout.close()
    assert proc.wait(timeout=30) == 130, out
    assert "Traceback" not in out
    listed = subprocess.run([MLINFRA, "runs", "list"], cwd=trainable, capture_output=True,
                            text=True, check=True).stdout
    assert " canceled " in listed


@pytest.mark.slow
def test_quickstart_main_job(quickstart: Path) -> None:
    """The README's main job on a copy of the quickstart: train, evaluate, register,
    promote, serve, score; then nothing left to do."""
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MLINFRA, *args, "-C", str(quickstart)], capture_output=True,
                              text=True, timeout=900, check=False)

    plan = run("plan", "--detailed-exitcode")
    assert plan.returncode == 2 and "Plan: 17 to add" in plan.stdout, plan.stderr
    apply = run("apply", "--auto-approve")
    try:
        assert apply.returncode == 0, apply.stdout[-3000:] + apply.stderr[-3000:]
        assert "job.prep-data/prep: kept 2000 rows, dropped 0" in apply.stdout
        assert "model.fraud: registered version 1" in apply.stdout
        assert "promoted fraud@champion -> fraud:1" in apply.stdout
        assert "registered data version fraud-scores:1" in apply.stdout
        model = json.loads(run("models", "show", "fraud@champion").stdout)
        assert model["metrics"]["auc"] > 0.75
        assert model["metrics"]["evaluated_on"] == "transactions-holdout:1"
        # the train step read the prep step's output; lineage names the data behind it
        assert model["lineage"]["data"] == ["transactions:1"], model["lineage"]
        invoked = run("endpoints", "invoke", "fraud-api", "--data",
                      str(quickstart / "sample-request.json"))
        assert invoked.returncode == 0, invoked.stderr
        answer = json.loads(invoked.stdout)
        assert {o["name"] for o in answer["outputs"]} == {"label", "probabilities"}
        assert "HTTP 200" in invoked.stderr and "from fraud:1" in invoked.stderr
        wrong = run("endpoints", "invoke", "fraud-api", "--data",
                    str(quickstart / "sample-request.json"), "--key", "mlk_wrong")
        assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr
        assert run("plan", "--detailed-exitcode").returncode == 0
    finally:
        assert run("destroy", "--auto-approve").returncode == 0

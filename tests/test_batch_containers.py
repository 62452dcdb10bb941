"""Scorings staged for containers: one process per mini-batch as the pods of an Indexed
Job run them, the output assembled in order; the Indexed Job and the docker container,
checked against Kubernetes' schemas and made by the Pulumi programs under mocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from mlinfra.batch.scoring import Output, Scoring, Settings
from mlinfra.batch.shard import assemble, stage
from mlinfra.data.versions import file_sha256
from tests.conftest import Result, onnx_model
from tests.stacks import invalid_manifests, manifests
from tests.test_batch import _check_output, _failing_model, _named, _table
from tests.test_pulumi_programs import run


def _scoring(tmp_path: Path, model: bytes, source: Path, **settings: int) -> Scoring:
    path = tmp_path / "model.onnx"
    path.write_bytes(model)
    fmt = source.suffix.lstrip(".")
    return Scoring("nightly", "main", "scorer", 1, path, file_sha256(path), source, fmt,
                   str(source), file_sha256(source),
                   Settings(**{"mini_batch_size": 400, "retries": 0, **settings}),
                   Output(format="parquet", keep=("customer_id",)))


def _pod(folder: Path, index: int) -> subprocess.CompletedProcess[str]:
    """What a pod of the Indexed Job runs: Kubernetes sets its index."""
    return subprocess.run([sys.executable, "-m", "mlinfra.batch.shard", str(folder)],
                          env={**os.environ, "JOB_COMPLETION_INDEX": str(index)},
                          capture_output=True, text=True, timeout=60, check=False)


def test_staged_shards_scored_by_one_process_each_give_the_local_output(
        tmp_path: Path) -> None:
    model = _named(onnx_model(), ["x1", "x2"])
    table = _table(1000, seed=11)
    pcsv.write_csv(table, tmp_path / "in.csv")
    scoring = _scoring(tmp_path, model, tmp_path / "in.csv")
    shards = stage(scoring, tmp_path / "jobs")
    folder = tmp_path / "jobs" / scoring.job_id
    assert shards == 3
    assert pq.ParquetFile(folder / "input.parquet").metadata.num_row_groups == 3
    for index in (2, 0, 1, 2):  # out of order, and one twice (a retried pod)
        done = _pod(folder, index)
        assert done.returncode == 0, done.stderr
    assert _pod(folder, 3).returncode == 2  # no such shard
    summary = assemble(scoring, tmp_path / "jobs")
    assert (summary.status, summary.scored_rows, summary.mini_batches) == ("completed", 1000, 3)
    _check_output(Path(str(summary.output)), model, table, "parquet")


def test_the_docker_container_scores_every_shard_with_all(tmp_path: Path) -> None:
    """On docker one container runs `python -m mlinfra.batch.shard FOLDER --all`: every
    shard, those already scored skipped."""
    model = _named(onnx_model(), ["x1", "x2"])
    table = _table(1000, seed=5)
    pq.write_table(table, tmp_path / "in.parquet")
    scoring = _scoring(tmp_path, model, tmp_path / "in.parquet")
    assert stage(scoring, tmp_path / "jobs") == 3
    folder = tmp_path / "jobs" / scoring.job_id
    assert _pod(folder, 1).returncode == 0
    done = subprocess.run([sys.executable, "-m", "mlinfra.batch.shard", str(folder), "--all"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    summary = assemble(scoring, tmp_path / "jobs")
    assert (summary.scored_rows, summary.failed_rows) == (1000, 0)
    _check_output(Path(str(summary.output)), model, table, "parquet")


def test_a_pod_whose_shard_fails_exits_non_zero_and_its_rows_count_as_failed(
        tmp_path: Path) -> None:
    rows = 1000
    x1 = [float(i % 10) for i in range(rows)]
    x1[500] = 42.0  # shard 1 (rows 400..799)
    pq.write_table(pa.table({"customer_id": [f"c{i}" for i in range(rows)], "x1": x1,
                             "x2": [0.0] * rows}), tmp_path / "in.parquet")
    scoring = _scoring(tmp_path, _failing_model(), tmp_path / "in.parquet",
                       error_threshold=-1)
    folder = tmp_path / "jobs" / scoring.job_id
    assert stage(scoring, tmp_path / "jobs") == 3
    codes = [_pod(folder, i) for i in range(3)]
    assert [c.returncode for c in codes] == [0, 1, 0]
    assert "mini-batch 1: " in codes[1].stderr and "out of data bounds" in codes[1].stderr
    summary = assemble(scoring, tmp_path / "jobs")
    assert (summary.scored_rows, summary.failed_rows, summary.failed_mini_batches) == (
        600, 400, 1)
    got = pq.read_table(str(summary.output))
    assert got["row_id"].to_pylist() == [*range(400), *range(800, 1000)]
    errors = (folder / "errors.jsonl").read_text().splitlines()
    assert [json.loads(e)["row_id"] for e in errors] == list(range(400, 800))


def test_a_scoring_on_kubernetes_is_an_indexed_job(quickstart: Path, tmp_path: Path) -> None:
    from mlinfra.providers.manifests.kubernetes import scoring_job
    from mlinfra.providers.pulumi_program import kubernetes_program
    from mlinfra.spec import load

    config = load(quickstart, "kubernetes")
    artifacts = tmp_path / "artifacts"
    folder = artifacts / "workspaces" / "ws" / "batch" / "jobs" / "0123456789abcdef"
    settings = {"max_concurrency": 3, "retries": 2, "error_threshold": 20000,
                "mini_batch_size": 10000, "timeout_s": 60}
    obj = scoring_job(config, "fraud-scores", "0123456789abcdef", folder,
                      "registry/mlinfra-quickstart-batch:abc", 42, settings, "cpu",
                      "mlinfra-artifacts", artifacts)
    assert invalid_manifests(manifests([obj])) == []
    made = run(kubernetes_program([obj], {}, push=False, held={}), "kubernetes").resources
    kind, job = made[obj.key]
    assert kind == "kubernetes:batch/v1:Job"
    spec = job["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"],
            spec["backoffLimitPerIndex"], spec["maxFailedIndexes"]) == (
        "Indexed", 42, 3, 2, 2)
    assert job["metadata"]["annotations"] == {"pulumi.com/timeoutSeconds": str(60 * 14 * 3)}
    assert job["metadata"]["labels"]["mlinfra.dev/resource"] == "batchscore.fraud-scores"
    container = spec["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "mlinfra.batch.shard", "/mlinfra/job"]
    assert container["volumeMounts"] == [{
        "name": "artifacts", "mountPath": "/mlinfra/job",
        "subPath": "workspaces/ws/batch/jobs/0123456789abcdef"}]
    assert container["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    unbounded = scoring_job(config, "s", "j", folder, "img", 1,
                            {**settings, "error_threshold": -1}, None, "claim", artifacts)
    assert "maxFailedIndexes" not in unbounded.body["spec"]
    # the API server refuses more failed indexes than completions
    lenient = scoring_job(config, "s", "j", folder, "img", 42,
                          {**settings, "error_threshold": 10_000_000}, None, "claim",
                          artifacts)
    assert lenient.body["spec"]["maxFailedIndexes"] == 42


def test_a_scoring_on_docker_is_one_container_run_to_completion(
        quickstart: Path, tmp_path: Path) -> None:
    from mlinfra.providers.manifests.docker import scoring_container
    from mlinfra.providers.pulumi_program import docker_program
    from mlinfra.spec import load

    config = load(quickstart, "docker")
    obj = scoring_container(config, "fraud-scores", "0123456789abcdef",
                            str(tmp_path / "job"), "mlinfra-quickstart-batch:abc",
                            {"max_concurrency": 2}, "cpu")
    made = run(docker_program([obj], {}, held={}), "docker").resources
    kind, container = made[obj.key]
    assert kind == "docker:index/container:Container"
    assert container["command"] == ["python", "-m", "mlinfra.batch.shard", "/mlinfra/job",
                                    "--all"]
    assert container["mounts"] == [{"source": str(tmp_path / "job"), "target": "/mlinfra/job",
                                    "type": "bind", "readOnly": False}]
    assert (container["attach"], container["mustRun"]) == (True, False)
    labels = {x["label"]: x["value"] for x in container["labels"]}
    assert labels["mlinfra.dev/resource"] == "batchscore.fraud-scores"


def test_apply_on_a_container_stack_stages_the_scoring_and_assembles_what_pods_scored(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The provider's launcher gets the staged job: here it runs the shards as an
    Indexed Job's pods would (one process each, $JOB_COMPLETION_INDEX), one of them
    twice; apply then writes the output and registers its version."""
    from mlinfra.engine import execute, open_session, plan
    from tests.test_batch import ENDPOINT, _scores

    model = _named(onnx_model(), ["x1", "x2"])
    root = project({"batch.yaml": ENDPOINT, "models/scorer.onnx": model})
    pcsv.write_csv(_table(1500), root / "data" / "daily.csv")
    assert cli("apply", "--auto-approve", "--target", "model.scorer").code == 0
    assert cli("models", "alias", "scorer@champion", "1").code == 0
    launched: list[tuple[str, int, dict[str, object]]] = []

    def pods(job_id: str, folder: Path, shards: int, settings: dict[str, object]) -> str:
        launched.append((job_id, shards, settings))
        for index in [*range(shards), 0]:
            assert _pod(folder, index).returncode == 0
        return ""

    session = open_session(root, None, "apply", write=True)
    try:
        monkeypatch.setattr(session.provider, "scoring_launcher", lambda ctx, res: pods,
                            raising=False)
        result = execute(session, plan(session))
        assert result.ok, (result.failed, result.skipped)
    finally:
        session.close()
    (job_id, shards, settings), = launched
    assert shards == 3 and settings["max_concurrency"] == 2 and settings["retries"] == 1
    out = _scores(cli)
    assert (out["version"], out["rows"], out["job"]) == (1, 1500, job_id)
    _check_output(Path(str(out["path"])), model, _table(1500), "csv")


def test_the_scoring_image_holds_what_a_pod_imports(quickstart: Path) -> None:
    from mlinfra.providers.manifests.images import scoring_context
    from mlinfra.spec import load

    files = {f.path: f for f in scoring_context(load(quickstart, "kubernetes"))}
    assert {"src/mlinfra/batch/shard.py", "src/mlinfra/batch/worker.py",
            "src/mlinfra/serving/model.py", "src/mlinfra/errors.py"} <= set(files)
    requirements = files["requirements.txt"].content().decode().split()
    assert any(r.startswith("pyarrow==") for r in requirements)
    assert any(r.startswith("onnxruntime==") for r in requirements)
    assert "ENV PYTHONPATH=/opt/mlinfra/src" in files["Dockerfile"].content().decode()

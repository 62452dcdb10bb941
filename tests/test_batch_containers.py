"""Scorings staged for containers: one process per mini-batch as the pods of an Indexed
Job run them, the output assembled in order; the Indexed Job and the docker container,
checked against Kubernetes' schemas and made by the Pulumi programs under mocks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from mlinfra.batch.scoring import Output, Scoring, Settings
from mlinfra.batch.shard import assemble, stage
from mlinfra.data.versions import file_sha256
from tests.conftest import onnx_model
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

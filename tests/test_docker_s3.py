"""A model over 1 MB served from the rendered docker endpoint container, which fetched it
from the artifact store on a real S3 API server when it started (no mount, no
ConfigMap): the same engine and local base image as test_docker_integration.py.

The S3 server listens on 127.0.0.1; the containers reach it through a forwarder on
their Docker network's gateway address (reachable from that network and this host
only)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Result, onnx_model
from tests.s3server import ACCESS_KEY, SECRET_KEY, FlakyProxy, S3Server
from tests.test_docker_integration import (
    BASE_IMAGE,
    KEYS,
    _docker,
    _engine_or_skip,
    _post,
    _wheels,
)


def _large_model(floats: int = 400_000) -> bytes:
    """The tiny logistic regression with an unused initializer making it > 1 MB."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load_from_string(onnx_model())
    model.graph.initializer.append(helper.make_tensor(
        "padding", TensorProto.FLOAT, [floats], [0.5] * floats))
    return bytes(model.SerializeToString())


@pytest.mark.slow
def test_a_model_over_1mb_served_from_s3_by_the_rendered_container(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path,
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    _engine_or_skip()
    network = f"mlinfra-test-{uuid.uuid4().hex[:8]}"
    _docker("network", "create", network)
    name = ""
    try:
        gateway = json.loads(_docker("network", "inspect", network).stdout)[0][
            "IPAM"]["Config"][0]["Gateway"]
        host, port = s3_server.url.removeprefix("http://").split(":")
        with FlakyProxy((host, int(port)), cuts=0, host=gateway) as forwarder:
            bucket = s3_server.bucket("serve")
            monkeypatch.setenv("TEAM_S3_KEY", ACCESS_KEY)
            monkeypatch.setenv("TEAM_S3_SECRET", SECRET_KEY)
            model = _large_model()
            root = project({
                "models/m.onnx": model,
                "serving.yaml": "kind: Model\nname: m\nfrom: {path: models/m.onnx}\n---\n"
                                "kind: Endpoint\nname: api\ncompute: cpu\n"
                                "deployments: [{name: blue, model: m}]\n"
                                "traffic: {blue: 100}\n",
                "stacks/docker.yaml": (
                    f"kind: Stack\nname: docker\nprovider: docker\n"
                    f"artifacts: s3://{bucket}/team\n"
                    f"storage:\n  endpoint_url: {forwarder.url}\n  region: us-east-1\n"
                    "  credentials: {access_key_id: '${secret.TEAM_S3_KEY}', "
                    "secret_access_key: '${secret.TEAM_S3_SECRET}'}\n"
                    f"docker: {{network: {network}, base_image: {BASE_IMAGE}}}\n")})
            assert len(model) > 1_000_000
            sha = _register_on_s3(root, forwarder.url, bucket, model)
            out = tmp_path / "rendered"
            result = cli("render", "-s", "docker", "--out", str(out))
            assert result.code == 0, result.err
            spec = json.loads((out / "containers" / "container-api.json").read_text())
            assert not any(m["target"].startswith("/models") for m in spec["mounts"])
            served = json.loads(spec["env"]["MLINFRA_ENDPOINT"])["deployments"]["blue"]
            assert served["url"] == f"s3://{bucket}/team/blobs/{sha[:2]}/{sha}"
            assert spec["env"]["AWS_SECRET_ACCESS_KEY"] == "<secret from $TEAM_S3_SECRET>"
            assert SECRET_KEY not in (out / "run.sh").read_text()
            context = out / "images" / "image-serving"
            assert "s3fs==" in (context / "requirements.txt").read_text()
            _wheels(context / "requirements.txt", context / "wheels")
            name = spec["name"]
            script = (out / "run.sh").read_text().replace("docker build ",
                                                          "docker build --network none ")
            (out / "run.sh").write_text(script)
            done = subprocess.run(["sh", str(out / "run.sh")], capture_output=True,
                                  text=True, timeout=900, check=False,
                                  env={**os.environ, "MLINFRA_API_KEYS": KEYS})
            assert done.returncode == 0, done.stderr[-3000:]
            deadline, health = time.monotonic() + 120, ""
            while time.monotonic() < deadline and health != "healthy":
                time.sleep(1)
                health = _docker("inspect", "-f", "{{.State.Health.Status}}",
                                 name).stdout.strip()
            assert health == "healthy", _docker("logs", name, check=False).stderr[-2000:]
            port_line = _docker("port", name, "8080").stdout.split()[0]
            body = {"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32",
                                "data": [1.0, 0.0, 0.0, 1.0]}]}
            status, answer = _post(f"http://{port_line}/v2/models/api/infer", body,
                                   KEYS.split(",")[0])
            assert status == 200, answer
            outputs = {o["name"]: o for o in answer["outputs"]}  # type: ignore[index]
            assert outputs["label"]["data"] == [1, 0]
            fetched = _docker("exec", name, "sha256sum",
                              "/tmp/mlinfra/models/blue/model.onnx").stdout.split()[0]
            assert fetched == sha
    finally:
        if name:
            _docker("rm", "-f", name, check=False)
        _docker("network", "rm", network, check=False)


def _register_on_s3(root: Path, endpoint: str, bucket: str, content: bytes) -> str:
    """A version of model m whose file is in the stack's S3 artifact store, as an apply
    that registered it leaves."""
    from mlinfra.data.objects import ObjectLocation
    from mlinfra.registry.models import ModelRegistry
    from mlinfra.registry.object_artifacts import ObjectArtifactStore
    from mlinfra.state.sqlite import SqliteStore

    location = ObjectLocation(f"s3://{bucket}/team", {
        "endpoint_url": endpoint, "region": "us-east-1",
        "credentials": {"access_key_id": "${secret.TEAM_S3_KEY}",
                        "secret_access_key": "${secret.TEAM_S3_SECRET}"}})
    cache = root / ".mlinfra" / "docker" / "workspaces" / "ws" / "artifacts"
    source = root / ".mlinfra" / "m.onnx"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(content)
    sha = ObjectArtifactStore(location, cache).put_file(source)
    assert sha == hashlib.sha256(content).hexdigest()
    store = SqliteStore(root / ".mlinfra" / "docker" / "state.db", command="test")
    try:
        ModelRegistry(store).register("m", sha, "onnx", {}, None, {}, {}, {})
    finally:
        store.close()
    return sha


@pytest.mark.slow
def test_a_job_container_reads_and_writes_through_the_s3_artifact_store(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path,
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    """With artifacts on S3 a job's container gets no mount: it downloads its code and
    inputs from pre-signed URLs (checking each sha256), trains, and sends its run
    folder back through the artifact store, where mlinfra collects the same output as
    a local run. No credential reaches the container."""

    _engine_or_skip()
    network = f"mlinfra-test-{uuid.uuid4().hex[:8]}"
    _docker("network", "create", network)
    try:
        _job_through_s3(project, cli, tmp_path, s3_server, monkeypatch, network)
    finally:
        _docker("network", "rm", network, check=False)


def _job_through_s3(project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path,
                    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch,
                    network: str) -> None:
    from mlinfra.providers.local import LocalProvider
    from mlinfra.providers.manifests.docker import docker_run_args, run_container
    from mlinfra.providers.pulumi_docker import DockerProvider
    from mlinfra.runs.containers import ContainerRun, Finished
    from mlinfra.runs.jobs import artifact_store
    from mlinfra.runs.transfer import run_transfer
    from tests.test_docker_integration import JOBS, TRAIN, _environment_image

    gateway = json.loads(_docker("network", "inspect", network).stdout)[0][
        "IPAM"]["Config"][0]["Gateway"]
    host, port = s3_server.url.removeprefix("http://").split(":")
    monkeypatch.setenv("JOB_TOKEN", "job-token-value")
    monkeypatch.setenv("TEAM_S3_KEY", ACCESS_KEY)
    monkeypatch.setenv("TEAM_S3_SECRET", SECRET_KEY)
    started: list[list[str]] = []
    with FlakyProxy((host, int(port)), cuts=0, host=gateway) as forwarder:
        bucket = s3_server.bucket("jobs")
        root = project({
            "jobs.yaml": JOBS.replace("{base}", BASE_IMAGE), "train/train.py": TRAIN,
            "data/tx.csv": "id,amount\n1,10.0\n2,30.5\n3,4.5\n",
            "stacks/dev.yaml": (
                f"kind: Stack\nname: dev\nartifacts: s3://{bucket}/team\n"
                f"storage:\n  endpoint_url: {forwarder.url}\n  region: us-east-1\n"
                "  credentials: {access_key_id: '${secret.TEAM_S3_KEY}', "
                "secret_access_key: '${secret.TEAM_S3_SECRET}'}\n")})
        images: dict[str, str] = {}

        def launcher(self: LocalProvider, ctx: Any, job: Any) -> Any:
            def launch(run: ContainerRun) -> Finished:
                if "py" not in images:
                    images["py"] = _environment_image(ctx.config, tmp_path)
                transfer = run_transfer(artifact_store(ctx), run)
                assert transfer is not None
                inside = transfer.container_run()
                obj = run_container(ctx.config, inside, images["py"], None)
                args, secrets = docker_run_args(obj.body)
                args[2:2] = ["--network", network]
                started.append(args)
                done = subprocess.run(args, capture_output=True, text=True, timeout=600,
                                      check=False, env={**os.environ, **{
                                          name: inside.env[name] for name in secrets}})
                assert transfer.collect(), done.stdout + done.stderr
                return DockerProvider().run_ended(inside, [obj], {obj.key: {
                    "exit_code": done.returncode, "logs": done.stdout + done.stderr}}, "")

            return launch

        monkeypatch.setattr(LocalProvider, "job_launcher", launcher)
        applied = cli("apply", "--auto-approve")
        assert applied.code == 0, applied.out + applied.err
    (args,) = started
    assert not [a for a in args if a.startswith("type=bind")]  # no mount at all
    assert SECRET_KEY not in " ".join(args) and "job-token-value" not in " ".join(args)
    out = json.loads(cli("output", "job.train", "--json").out)["job.train"]
    run = json.loads(cli("runs", "show", out["run_id"]).out)
    assert run["status"] == "completed" and run["metrics"] == {"total": 45.0}
    model = json.loads((root / ".mlinfra" / "dev" / "workspaces" / "ws" / "artifacts" /
                        "blobs" / out["outputs"]["model"][:2] / out["outputs"]["model"]
                        ).read_text())
    assert model == {"mean": 15.0, "n": 3}
    keys = {o["Key"] for o in s3_server.client().list_objects_v2(
        Bucket=bucket)["Contents"]}
    sha = out["outputs"]["model"]
    assert f"team/blobs/{sha[:2]}/{sha}" in keys
    assert not [k for k in keys if k.startswith("team/incoming/")]  # collected, removed
    assert "trained on 3 rows" in cli("runs", "logs", out["run_id"]).out

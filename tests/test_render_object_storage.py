"""What `mlinfra render` writes for a stack whose artifacts are on object storage, and
what makes the rendered files run as printed: serving pods that fetch their model from
the artifact store (no ConfigMap, so no size limit), the storage credentials from a
Secret, jobs created in order by jobs.sh, non-root Jobs with a name of their own and a
time to live, CPU requests for the HPA, quota room, and a README naming every variable."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.conftest import Result, onnx_model
from tests.s3server import ACCESS_KEY, SECRET_KEY, S3Server
from tests.stacks import invalid_manifests, manifests, render
from tests.test_docker_s3 import _large_model


def _kubernetes_on_s3(quickstart: Path, s3: S3Server, bucket: str) -> None:
    stack = quickstart / "stacks" / "kubernetes.yaml"
    text = stack.read_text().replace(
        "artifacts: .mlinfra/kubernetes   # shared with the cluster through artifacts_claim",
        f"artifacts: s3://{bucket}/team\nstorage:\n  endpoint_url: {s3.url}\n"
        "  region: us-east-1\n  credentials: {access_key_id: '${secret.TEAM_S3_KEY}', "
        "secret_access_key: '${secret.TEAM_S3_SECRET}'}")
    assert text != stack.read_text()
    stack.write_text(text)


@pytest.fixture
def s3_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEAM_S3_KEY", ACCESS_KEY)
    monkeypatch.setenv("TEAM_S3_SECRET", SECRET_KEY)


@pytest.mark.usefixtures("s3_env")
def test_serving_pods_fetch_a_large_model_from_the_artifact_store(
        quickstart: Path, s3_server: S3Server, tmp_path: Path,
        cli: Callable[..., Result]) -> None:
    bucket = s3_server.bucket("k8s")
    _kubernetes_on_s3(quickstart, s3_server, bucket)
    (quickstart / "monitoring.yaml").unlink()  # no Monitor reads the captures here
    model = _large_model()
    sha = _register_on_s3_as(quickstart, s3_server, bucket, model)
    objects = {o.key: o for o in render(quickstart, "kubernetes")}
    assert "configmap-fraud-api-blue-model" not in objects  # nothing bounds its size
    config = json.loads(objects["configmap-fraud-api-blue"].body["data"]["endpoint.json"])
    blue = config["deployments"]["blue"]
    assert blue["url"] == f"s3://{bucket}/team/blobs/{sha[:2]}/{sha}"
    assert blue["path"] == "/tmp/mlinfra/models/blue/model.onnx"
    pod = objects["deployment-fraud-api-blue"].body["spec"]["template"]["spec"]
    server = pod["containers"][0]
    env = {e["name"]: e for e in server["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlinfra-secrets", "key": "TEAM_S3_SECRET"}
    assert env["AWS_ENDPOINT_URL"]["value"] == s3_server.url
    # No ReadWriteOnce claim on serving pods: the HPA may place replicas anywhere.
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    # captures go to the artifact store, not the pod
    assert config["collect"]["path"] == f"s3://{bucket}/team/captures/fraud-api"
    assert config["collect"]["storage"] == {"endpoint_url": s3_server.url,
                                            "region": "us-east-1"}
    assert set(objects["secret-mlinfra-secrets"].body["stringData"]) >= {
        "TEAM_S3_KEY", "TEAM_S3_SECRET"}
    assert invalid_manifests(manifests(list(objects.values()))) == []
    serving = next(f for f in objects["image-serving"].context
                   if f.path == "requirements.txt")
    assert "s3fs==" in (serving.text or "")

    out = tmp_path / "k8s"
    result = cli("render", "-C", str(quickstart), "-s", "kubernetes", "--out", str(out))
    assert result.code == 0, result.err
    readme = (out / "README.md").read_text()
    for name in ("TEAM_S3_KEY", "TEAM_S3_SECRET", "MLINFRA_FRAUD_API_KEYS"):
        assert f"- `{name}`" in readme
        assert name in (out / "secrets.sh").read_text()
    assert SECRET_KEY not in "".join(p.read_text() for p in out.rglob("*")
                                     if p.is_file() and p.suffix in (".sh", ".yaml", ".md"))


def _register_on_s3_as(root: Path, s3: S3Server, bucket: str, model: bytes) -> str:
    """A champion version of fraud whose file is in the stack's S3 artifact store."""
    from mlinfra.data.objects import ObjectLocation
    from mlinfra.registry.models import ModelRegistry
    from mlinfra.registry.object_artifacts import ObjectArtifactStore
    from mlinfra.state.sqlite import SqliteStore

    location = ObjectLocation(f"s3://{bucket}/team", {
        "endpoint_url": s3.url, "region": "us-east-1",
        "credentials": {"access_key_id": "${secret.TEAM_S3_KEY}",
                        "secret_access_key": "${secret.TEAM_S3_SECRET}"}})
    cache = root / ".mlinfra" / "kubernetes" / "workspaces" / "fraud-team" / "artifacts"
    source = root / ".mlinfra" / "fraud.onnx"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_bytes(model)
    sha = ObjectArtifactStore(location, cache).put_file(source)
    store = SqliteStore(root / ".mlinfra" / "kubernetes" / "state.db", command="test")
    try:
        registry = ModelRegistry(store)
        version, _ = registry.register("fraud", sha, "onnx", {}, None, {}, {}, {})
        registry.set_alias("fraud", "champion", version.version)
    finally:
        store.close()
    return sha


def test_rendered_jobs_run_in_order_as_non_root_with_names_of_their_own(
        quickstart: Path, tmp_path: Path, cli: Callable[..., Result]) -> None:
    out = tmp_path / "k8s"
    result = cli("render", "-C", str(quickstart), "-s", "kubernetes", "--out", str(out))
    assert result.code == 0, result.err
    # The pipeline's steps are not in manifests/ (kubectl apply would start both at
    # once): jobs.sh creates them one after the other, prep before train.
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in (out / "manifests").iterdir()}
    assert "Job" not in kinds
    script = (out / "jobs.sh").read_text()
    runs = [line.split()[1] for line in script.splitlines() if line.startswith("run ")]
    assert runs == ["jobs/00-job-fraud-prep.yaml", "jobs/01-job-fraud-train.yaml"]
    assert subprocess.run(["sh", "-n", str(out / "jobs.sh")], check=False).returncode == 0
    jobs = [yaml.safe_load((out / r).read_text()) for r in runs]
    assert invalid_manifests(jobs) == []
    for job in jobs:
        assert job["metadata"]["generateName"].startswith("run-fraud-")
        assert job["spec"]["ttlSecondsAfterFinished"] == 86400
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["containers"][0]["securityContext"]["allowPrivilegeEscalation"] is False
    # The job images hold the run helper the README tells scripts to import.
    images = json.loads((out / "images.json").read_text())
    context = out / images["image-sklearn"]["context"]
    assert (context / "helper" / "mlinfra_run.py").is_file()
    assert "ENV PYTHONPATH=/opt/mlinfra/helper" in (context / "Dockerfile").read_text()
    assert "sh " in result.out and "jobs.sh" in result.out
    # The datastore's claim starts empty: data.sh copies this machine's folder into it.
    data = (out / "data.sh").read_text()
    assert subprocess.run(["sh", "-n", str(out / "data.sh")], check=False).returncode == 0
    load = next(line for line in data.splitlines() if line.startswith("load "))
    assert load.split()[1:4] == ["mlinfra", "datastore-main", str(quickstart / "data")]
    assert "`sh data.sh`" in (out / "README.md").read_text()


def test_a_compute_without_resources_gets_a_cpu_request_for_its_autoscaler(
        quickstart: Path, cli: Callable[..., Result], tmp_path: Path) -> None:
    from tests.stacks import register_model

    register_model(quickstart, "kubernetes", "fraud-team", "fraud", onnx_model(),
                   alias="champion")
    text = (quickstart / "workspace.yaml").read_text()
    (quickstart / "workspace.yaml").write_text(
        text.replace('resources: {cpu: "1", memory: 2Gi}\n', ""))
    objects = {o.key: o for o in render(quickstart, "kubernetes")}
    server = objects["deployment-fraud-api-blue"].body["spec"]["template"]["spec"][
        "containers"][0]
    assert server["resources"] == {"requests": {"cpu": "250m"}}
    result = cli("render", "-C", str(quickstart), "-s", "kubernetes", "--out",
                 str(tmp_path / "k8s"))
    assert "serving pods request cpu 250m" in result.err


def test_image_requirements_are_pinned(quickstart: Path, tmp_path: Path,
                                       cli: Callable[..., Result]) -> None:
    """Pinned from what uv resolves while the state has no lock for the Environment,
    and from the state's lock once it has one."""
    out = tmp_path / "k8s"
    result = cli("render", "-C", str(quickstart), "-s", "kubernetes", "--out", str(out))
    assert result.code == 0, result.err
    images = json.loads((out / "images.json").read_text())
    requirements = (out / images["image-sklearn"]["context"] / "requirements.txt").read_text()
    lines = requirements.splitlines()
    assert any(line.startswith("scikit-learn==") for line in lines), requirements
    assert all("==" in line for line in lines), requirements
    assert ("environment.sklearn: no lock in the state yet, so its image's requirements are "
            "pinned from what uv resolves now") in result.err

    from mlinfra.state.model import ResourceState
    from mlinfra.state.sqlite import SqliteStore

    store = SqliteStore(quickstart / ".mlinfra" / "kubernetes" / "state.db", command="test")
    try:
        store.commit_change(None, "environment.sklearn", "create", ResourceState(
            "environment.sklearn", "Environment", "sklearn",
            {"lock": ["scikit-learn==1.5.0", "skl2onnx==1.17.0"]}, "h", {}))
    finally:
        store.close()
    again = cli("render", "-C", str(quickstart), "-s", "kubernetes", "--out", str(out))
    assert again.code == 0, again.err
    images = json.loads((out / "images.json").read_text())
    pinned = (out / images["image-sklearn"]["context"] / "requirements.txt").read_text()
    assert pinned == "scikit-learn==1.5.0\nskl2onnx==1.17.0\n"
    assert "no lock in the state yet" not in again.err


@pytest.mark.usefixtures("s3_env")
def test_a_job_run_through_s3_is_a_job_without_volumes_under_pulumis_mocks(
        quickstart: Path, tmp_path: Path, s3_server: S3Server) -> None:
    """With artifacts on S3 a run's Job needs no claim: its pre-signed URLs travel in
    the run's Secret (never in the Job), and the pod runs as a non-root user."""
    from mlinfra.data.objects import ObjectLocation
    from mlinfra.providers.manifests.kubernetes import run_job
    from mlinfra.providers.pulumi_program import kubernetes_program
    from mlinfra.registry.object_artifacts import ObjectArtifactStore
    from mlinfra.runs.containers import ContainerRun, Mount
    from mlinfra.runs.transfer import TRANSFER_ENV, run_transfer
    from mlinfra.spec import load
    from tests.test_pulumi_programs import _is_secret, _unwrap
    from tests.test_pulumi_programs import run as run_program

    bucket = s3_server.bucket("run")
    store = ObjectArtifactStore(ObjectLocation(f"s3://{bucket}/team", {
        "endpoint_url": s3_server.url, "region": "us-east-1",
        "credentials": {"access_key_id": "${secret.TEAM_S3_KEY}",
                        "secret_access_key": "${secret.TEAM_S3_SECRET}"}}), tmp_path / "cache")
    run_dir = tmp_path / "runs" / "train-1a2b3c4d"
    (run_dir / "code").mkdir(parents=True)
    (run_dir / "code" / "train.py").write_text("print('hi')\n")
    data = tmp_path / "data.csv"
    data.write_text("a,b\n1,2\n")
    job_run = ContainerRun(
        "train-1a2b3c4d", "train", "python3 train.py", {"MLINFRA_RUN_ID": "train-1a2b3c4d"},
        (), [Mount(run_dir, "/mlinfra/run", False),
             Mount(run_dir / "code", "/mlinfra/run/code", True),
             Mount(data, "/mlinfra/inputs/data/data.csv", True)],
        "/mlinfra/run/code", 600, run_dir)
    transfer = run_transfer(store, job_run)
    assert transfer is not None
    inside = transfer.container_run()
    assert inside.mounts == [] and TRANSFER_ENV in inside.secret_env
    spec = json.loads(inside.env[TRANSFER_ENV])
    assert sorted(target for _, target, _ in spec["get"]) == [
        "/mlinfra/inputs/data/data.csv", "/mlinfra/run/code/train.py"]
    config = load(quickstart, "kubernetes")
    objects = run_job(config, inside, "registry/img:abc", "cpu", None, None)
    assert invalid_manifests(manifests(objects)) == []
    made = run_program(kubernetes_program(objects, {}, push=False, held={
        TRANSFER_ENV: inside.env[TRANSFER_ENV]}), "kubernetes").resources
    job = made["job-run-train-1a2b3c4d"][1]
    pod = job["spec"]["template"]["spec"]
    # No claim: the run's files land in a volume of the pod's own, owned by its
    # non-root user.
    assert pod["volumes"] == [{"name": "run", "emptyDir": {}}]
    assert pod["containers"][0]["volumeMounts"] == [{"name": "run", "mountPath": "/mlinfra"}]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert spec["put"] not in json.dumps(job)  # the URLs only in the Secret
    secret = made["secret-run-train-1a2b3c4d"][1]["stringData"]
    assert _is_secret(secret) and TRANSFER_ENV in _unwrap(secret)


@pytest.mark.usefixtures("s3_env")
def test_a_monitored_endpoint_and_its_cronjob_mount_no_claim_under_pulumis_mocks(
        quickstart: Path, s3_server: S3Server, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from mlinfra.providers.manifests.files import write_contexts
    from mlinfra.providers.manifests.inputs import StackInputs
    from mlinfra.providers.manifests.kubernetes import render as render_objects
    from mlinfra.providers.pulumi_program import kubernetes_program
    from mlinfra.spec import load
    from tests.test_monitor_cronjob import TEAM_STATE
    from tests.test_pulumi_programs import _unwrap, run

    monkeypatch.setenv("MLINFRA_DB_PASSWORD", "db-password-value")
    bucket = s3_server.bucket("k8s")
    _kubernetes_on_s3(quickstart, s3_server, bucket)
    _register_on_s3_as(quickstart, s3_server, bucket, _large_model())
    objects = {o.key: o for o in render(quickstart, "kubernetes")}
    pod = objects["deployment-fraud-api-blue"].body["spec"]["template"]["spec"]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    config = json.loads(objects["configmap-fraud-api-blue"].body["data"]["endpoint.json"])
    assert config["collect"]["path"] == f"s3://{bucket}/team/captures/fraud-api"

    stack = load(quickstart, "kubernetes")
    stack.stack.state = TEAM_STATE
    rendered = render_objects(stack, StackInputs(models={}))
    cronjob = next(o for o in rendered if o.kind == "CronJob")
    job_pod = cronjob.body["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = job_pod["containers"][0]
    assert "--captures" not in container["args"]  # read from the artifact store
    assert job_pod["volumes"] == [] and container["volumeMounts"] == []
    env = {e["name"]: e for e in container["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == s3_server.url
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "TEAM_S3_SECRET"
    assert "pvc-main" not in cronjob.depends_on
    image = next(o for o in rendered if o.key == "image-monitor")
    requirements = next(f for f in image.context if f.path == "requirements.txt").text or ""
    assert "s3fs==" in requirements
    contexts = write_contexts(rendered, tmp_path / "render")
    made = run(kubernetes_program(rendered, contexts, push=False), "kubernetes").resources
    sent = _unwrap(made["cronjob-fraud-watch"][1])
    manifest = {k: v for k, v in sent.items() if k != "__meta"}
    assert "persistentVolumeClaim" not in json.dumps(manifest)
    assert SECRET_KEY not in json.dumps(sent)
    assert invalid_manifests([{"apiVersion": "batch/v1", "kind": "CronJob", **manifest}]) == []


def _datastore_on_s3(quickstart: Path, s3: S3Server, bucket: str) -> None:
    client = s3.client()
    for csv in sorted((quickstart / "data").glob("*.csv")):
        client.put_object(Bucket=bucket, Key=f"data/{csv.name}", Body=csv.read_bytes())
    workspace = quickstart / "workspace.yaml"
    text = workspace.read_text().replace(
        "type: local\npath: ./data\n",
        f"type: s3\npath: s3://{bucket}/data\nendpoint_url: {s3.url}\nregion: us-east-1\n"
        "credentials: {access_key_id: '${secret.DATA_S3_KEY}', "
        "secret_access_key: '${secret.DATA_S3_SECRET}'}\n")
    assert text != workspace.read_text()
    workspace.write_text(text)


def test_a_rendered_job_fetches_its_s3_data_in_an_init_container(
        quickstart: Path, s3_server: S3Server, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import sys

    monkeypatch.setenv("DATA_S3_KEY", ACCESS_KEY)
    monkeypatch.setenv("DATA_S3_SECRET", SECRET_KEY)
    bucket = s3_server.bucket("data")
    _datastore_on_s3(quickstart, s3_server, bucket)
    objects = {o.key: o for o in render(quickstart, "kubernetes")}
    job = objects["job-fraud-prep"]
    pod = job.body["spec"]["template"]["spec"]
    # the datastore's claim is replaced by an emptyDir the init container fills
    assert {"name": "datastore-main", "emptyDir": {}} in pod["volumes"]
    assert not [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    init = pod["initContainers"][0]
    data_file = (quickstart / "data.yaml").read_text().split("path: ", 1)[1].split()[0]
    assert init["args"] == [f"s3://{bucket}/data/{data_file}",
                            f"/mnt/datastores/main/{data_file}"]
    assert init["volumeMounts"] == pod["containers"][0]["volumeMounts"]
    env = {e["name"]: e for e in init["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "mlinfra-secrets", "key": "DATA_S3_SECRET"}
    assert env["AWS_ENDPOINT_URL"]["value"] == s3_server.url
    assert "image-fetch" in job.depends_on and "pvc-main" not in job.depends_on
    assert {"DATA_S3_KEY", "DATA_S3_SECRET"} <= set(
        objects["secret-mlinfra-secrets"].body["stringData"])
    fetch = objects["image-fetch"].context
    requirements = next(f.text for f in fetch if f.path == "requirements.txt") or ""
    assert "s3fs==" in requirements and "fsspec==" in requirements
    assert invalid_manifests(manifests(list(objects.values()))) == []
    # the init container's program, run here with the variables the pod would get
    script = next(f.text for f in fetch if f.path == "fetch.py") or ""
    target = tmp_path / "mnt" / data_file
    done = subprocess.run(
        [sys.executable, "-c", script, init["args"][0], str(target)],
        capture_output=True, text=True, timeout=120, check=False,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
             "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
             "AWS_ENDPOINT_URL": s3_server.url, "AWS_DEFAULT_REGION": "us-east-1"})
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == (quickstart / "data" / data_file).read_bytes()
    assert not list(target.parent.glob("*.part"))
    missing = subprocess.run(
        [sys.executable, "-c", script.replace("time.sleep(2 ** attempt)", "pass"),
         f"s3://{bucket}/data/none.csv", str(tmp_path / "none.csv")],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY,
             "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_ENDPOINT_URL": s3_server.url})
    assert missing.returncode != 0 and "none.csv could not be fetched" in missing.stderr

"""The docker and kubernetes stacks' objects as data: what
each kind becomes, valid against the real Kubernetes schemas, and `mlinfra render`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlinfra.providers.manifests import RenderedObject, changed_keys, redact
from tests.conftest import Result, onnx_model
from tests.stacks import invalid_manifests, manifests, register_model, render

SELECTOR = "mlinfra.dev/project"


def _champion(quickstart: Path, stack: str) -> None:
    register_model(quickstart, stack, "fraud-team", "fraud", onnx_model(), alias="champion")


def _by_key(objects: list[RenderedObject]) -> dict[str, RenderedObject]:
    return {o.key: o for o in objects}


def test_the_quickstart_on_kubernetes_is_every_object_and_all_are_valid(
        quickstart: Path) -> None:
    _champion(quickstart, "kubernetes")
    objects = render(quickstart, "kubernetes")
    kinds = sorted((o.kind, o.key) for o in objects)
    assert kinds == sorted([
        ("Namespace", "namespace-mlinfra"), ("ResourceQuota", "quota-cpu"),
        ("PersistentVolumeClaim", "pvc-main"), ("Image", "image-sklearn"),
        ("Image", "image-job-prep-data"), ("Image", "image-job-train-fraud"),
        ("Job", "job-fraud-prep"), ("Job", "job-fraud-train"),
        ("Image", "image-serving"), ("Secret", "secret-fraud-api-keys"),
        ("ConfigMap", "configmap-fraud-api-blue"),
        ("ConfigMap", "configmap-fraud-api-blue-model"),
        ("Deployment", "deployment-fraud-api-blue"), ("Service", "service-fraud-api-blue"),
        ("HorizontalPodAutoscaler", "hpa-fraud-api-blue"),
        ("HTTPRoute", "httproute-fraud-api")]), kinds
    assert invalid_manifests(manifests(objects)) == []
    for obj in objects:
        if obj.kind != "Image":
            meta = obj.body["metadata"]
            assert meta["labels"][SELECTOR] == "quickstart", obj.key
            assert meta["labels"]["mlinfra.dev/stack"] == "kubernetes", obj.key
            assert meta.get("namespace", "mlinfra") == "mlinfra", obj.key


def test_kubernetes_objects_carry_what_the_yaml_says(quickstart: Path) -> None:
    _champion(quickstart, "kubernetes")
    text = (quickstart / "workspace.yaml").read_text().replace(
        "min_instances: 0", "min_instances: 2")
    (quickstart / "workspace.yaml").write_text(text)
    objects = _by_key(render(quickstart, "kubernetes"))
    deployment = objects["deployment-fraud-api-blue"].body
    assert deployment["spec"]["replicas"] == 2
    hpa = objects["hpa-fraud-api-blue"].body["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 4)
    pod = deployment["spec"]["template"]["spec"]
    server = pod["containers"][0]
    assert server["image"] == objects["image-serving"].body["name"]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"},
                                   "limits": {"cpu": "1", "memory": "2Gi"}}
    model_mount = next(m for m in server["volumeMounts"] if m["name"] == "model")
    assert model_mount == {"name": "model", "mountPath": "/models/blue", "readOnly": True}
    assert {"name": "MLINFRA_ENDPOINT_KEYS", "valueFrom": {"secretKeyRef": {
        "name": "fraud-api-keys", "key": "keys"}}} in server["env"]
    config = json.loads(objects["configmap-fraud-api-blue"].body["data"]["endpoint.json"])
    assert config["deployments"]["blue"]["path"] == "/models/blue/model.onnx"
    assert config["traffic"] == {"blue": 100} and "key_hashes" not in config
    hpa = objects["hpa-fraud-api-blue"].body["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 4)
    # Room for the HPA's 4 replicas, a rolling update's surge pod and 2 jobs at once.
    quota = objects["quota-cpu"].body["spec"]["hard"]
    assert quota == {"requests.cpu": "7", "limits.cpu": "7", "requests.memory": "14Gi",
                     "limits.memory": "14Gi"}
    train = objects["job-fraud-train"].body["spec"]
    assert train["backoffLimit"] == 0 and train["activeDeadlineSeconds"] == 1800
    assert train["ttlSecondsAfterFinished"] == 86400
    assert objects["job-fraud-train"].body["metadata"]["generateName"] == "run-fraud-train-"
    assert "name" not in objects["job-fraud-train"].body["metadata"]
    pod = train["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert objects["job-fraud-prep"].body["spec"]["activeDeadlineSeconds"] == 300
    command = train["template"]["spec"]["containers"][0]["command"][-1]
    assert "--data /mnt/datastores/main/runs/fraud-prep/clean.csv" in command
    assert "job-fraud-prep" in objects["job-fraud-train"].depends_on
    route = objects["httproute-fraud-api"].body["spec"]
    split = route["rules"][-1]["backendRefs"]
    assert split == [{"name": "fraud-api-blue", "port": 80, "weight": 100}]


def _two_deployments(quickstart: Path, traffic: str) -> None:
    text = (quickstart / "serving.yaml").read_text()
    text = text.replace("traffic: {blue: 100}", f"traffic: {traffic}").replace(
        "    request: {timeout_ms: 5000, max_batch_size: 32, max_batch_delay_ms: 2}\n",
        "    request: {timeout_ms: 5000, max_batch_size: 32, max_batch_delay_ms: 2}\n"
        "  - name: green\n    model: fraud:1\n")
    (quickstart / "serving.yaml").write_text(text)


def test_a_traffic_change_touches_only_the_httproute(quickstart: Path) -> None:
    from mlinfra.providers.pulumi_stack import object_changes
    from mlinfra.state.model import ResourceState

    _champion(quickstart, "kubernetes")
    _two_deployments(quickstart, "{blue: 90, green: 10}")
    before = render(quickstart, "kubernetes")
    route = _by_key(before)["httproute-fraud-api"].body["spec"]["rules"][-1]["backendRefs"]
    assert [(r["name"], r["weight"]) for r in route] == [("fraud-api-blue", 90),
                                                         ("fraud-api-green", 10)]
    assert invalid_manifests(manifests(before)) == []
    (quickstart / "serving.yaml").write_text((quickstart / "serving.yaml").read_text().replace(
        "traffic: {blue: 90, green: 10}", "traffic: {blue: 50, green: 50}"))
    after = render(quickstart, "kubernetes")
    assert changed_keys(before, after) == {"httproute-fraud-api": "update"}
    state = {"endpoint.fraud-api": ResourceState(
        address="endpoint.fraud-api", kind="Endpoint", name="fraud-api", attributes={},
        inputs_hash="", outputs={"objects": {o.key: o.fingerprint() for o in before
                                             if o.owner == "endpoint.fraud-api"}})}
    changes = object_changes([o for o in after if o.owner == "endpoint.fraud-api"], state)
    assert changes == {"endpoint.fraud-api": ["update HTTPRoute httproute-fraud-api"]}


def test_a_mirror_is_a_request_mirror_filter_of_its_share(quickstart: Path) -> None:
    _champion(quickstart, "kubernetes")
    _two_deployments(quickstart, "{blue: 100, green: 0}\nmirror: {green: 20}")
    objects = render(quickstart, "kubernetes")
    split = _by_key(objects)["httproute-fraud-api"].body["spec"]["rules"][-1]
    assert split["filters"][-1] == {"type": "RequestMirror", "requestMirror": {
        "backendRef": {"name": "fraud-api-green", "port": 80}, "percent": 20}}
    assert invalid_manifests(manifests(objects)) == []


def test_the_quickstart_on_docker(quickstart: Path) -> None:
    _champion(quickstart, "docker")
    objects = _by_key(render(quickstart, "docker"))
    assert sorted((o.kind, k) for k, o in objects.items()) == sorted([
        ("Network", "network"), ("Image", "image-sklearn"), ("Image", "image-serving"),
        ("Container", "container-run-fraud-prep"), ("Container", "container-run-fraud-train"),
        ("Container", "container-fraud-api")])
    server = objects["container-fraud-api"].body
    assert server["image"] == objects["image-serving"].body["name"]
    assert server["network"] == "mlinfra" and server["restart"] == "unless-stopped"
    assert server["ports"] == [{"internal": 8080, "external": None, "ip": "127.0.0.1"}]
    model = next(m for m in server["mounts"] if m["target"] == "/models/blue.onnx")
    assert model["read_only"] and Path(model["source"]).read_bytes() == onnx_model()
    assert "/v2/health/ready" in " ".join(server["healthcheck"]["test"])
    assert (server["cpus"], server["memory_mb"]) == ("1", 2048)
    assert server["labels"][SELECTOR] == "quickstart"
    prep = objects["container-run-fraud-prep"].body
    assert prep["run_to_completion"] and prep["image"] == objects["image-sklearn"].body["name"]
    code = next(m for m in prep["mounts"] if m["target"] == "/code")
    assert code["read_only"] and code["source"] == str(quickstart / "train")
    dockerfile = next(f for f in objects["image-sklearn"].context if f.path == "Dockerfile")
    assert (dockerfile.text or "").startswith("# mlinfra environment sklearn\nFROM "
                                              "python:3.11-slim\n")


def test_the_stack_base_image_replaces_each_environments(quickstart: Path) -> None:
    stack = quickstart / "stacks" / "docker.yaml"
    stack.write_text(stack.read_text().replace("\ndocker:\n", "\ndocker:\n  base_image: my-base\n"))
    objects = _by_key(render(quickstart, "docker"))
    for key in ("image-sklearn",):
        dockerfile = next(f for f in objects[key].context if f.path == "Dockerfile")
        assert "\nFROM my-base\n" in (dockerfile.text or "")


def test_render_writes_manifests_kubectl_can_apply(quickstart: Path, tmp_path: Path,
                                                   cli: Callable[..., Result]) -> None:
    out = tmp_path / "k8s"
    result = cli("render", "-C", str(quickstart), "-s", "kubernetes", "--out", str(out))
    assert result.code == 0, result.err
    # Nothing is registered yet: the endpoint is rendered with its model version
    # "(known after apply)", as Terraform shows what only the apply can know.
    assert ("endpoint.fraud-api: deployment blue serves a version of model fraud that is "
            "(known after apply)") in result.err
    files = sorted((out / "manifests").glob("*.yaml"))
    objects = [yaml.safe_load(f.read_text()) for f in files]
    assert objects[0]["kind"] == "Namespace"
    assert invalid_manifests(objects) == []
    config = next(o for o in objects if o["kind"] == "ConfigMap"
                  and o["metadata"]["name"] == "fraud-api-blue-config")
    served = json.loads(config["data"]["endpoint.json"])["deployments"]["blue"]
    assert served["version"] == "(known after apply)"
    assert {"Deployment", "HTTPRoute"} <= {o["kind"] for o in objects}
    images = json.loads((out / "images.json").read_text())
    assert (out / images["image-sklearn"]["context"] / "Dockerfile").exists()
    _champion(quickstart, "kubernetes")
    assert cli("render", "-C", str(quickstart), "-s", "kubernetes", "--out",
               str(out)).code == 0
    objects = [yaml.safe_load(f.read_text()) for f in sorted((out / "manifests").glob("*"))]
    assert "HTTPRoute" in {o["kind"] for o in objects}
    assert invalid_manifests(objects) == []
    assert "fraud-api-keys" in (out / "secrets.sh").read_text()
    assert not (quickstart / ".mlinfra" / "kubernetes" / "pulumi").exists()


def test_render_refuses_the_local_provider(quickstart: Path, tmp_path: Path,
                                           cli: Callable[..., Result]) -> None:
    result = cli("render", "-C", str(quickstart), "--out", str(tmp_path / "x"))
    assert result.code == 1
    assert "pass -s docker or -s kubernetes" in result.err


SENTINEL = "s3cr3t-VALUE-never-written"


def _walk(value: Any) -> str:
    return json.dumps(redact(value), default=str)


@pytest.mark.parametrize("stack", ["docker", "kubernetes"])
def test_no_secret_value_in_any_rendered_object_or_file(
        quickstart: Path, tmp_path: Path, cli: Callable[..., Result],
        monkeypatch: pytest.MonkeyPatch, stack: str) -> None:
    monkeypatch.setenv("API_TOKEN", SENTINEL)
    training = quickstart / "training.yaml"
    training.write_text(training.read_text().replace(
        'env: {OMP_NUM_THREADS: "1"}', 'env: {OMP_NUM_THREADS: "1", API_TOKEN: '
        '"${secret.API_TOKEN}"}'))
    _champion(quickstart, stack)
    objects = render(quickstart, stack)
    assert SENTINEL not in _walk([o.body for o in objects])
    assert any("API_TOKEN" in _walk(o.body) for o in objects if o.kind in ("Job", "Container"))
    out = tmp_path / "out"
    assert cli("render", "-C", str(quickstart), "-s", stack, "--out", str(out)).code == 0
    for path in out.rglob("*"):
        if path.is_file():
            assert SENTINEL.encode() not in path.read_bytes(), path
    for path in (quickstart / ".mlinfra").rglob("*"):
        if path.is_file():
            assert SENTINEL.encode() not in path.read_bytes(), path
    # The plan of that stack (mlinfra's part; Pulumi's preview needs the CLI), and the
    # objects each change touches, as `mlinfra plan` shows them.
    from mlinfra.engine import open_session, plan
    from mlinfra.providers.pulumi_stack import object_changes

    session = open_session(quickstart, stack, "render", write=False)
    try:
        planned = json.dumps(plan(session).to_json())
        touched = object_changes(render(quickstart, stack), session.store.resources())
    finally:
        session.close()
    assert "environment.sklearn" in planned and SENTINEL not in planned
    assert "endpoint.fraud-api" in touched and SENTINEL not in json.dumps(touched)
    if stack == "kubernetes":
        assert '"${API_TOKEN:?set API_TOKEN}"' in (out / "secrets.sh").read_text()
        assert invalid_manifests(manifests(objects)) == []


def test_a_compute_for_another_platform_is_refused(quickstart: Path) -> None:
    from mlinfra.engine import open_session, plan
    from mlinfra.providers.base import ProviderErrors

    stack = quickstart / "stacks" / "docker.yaml"
    stack.write_text(stack.read_text().replace("compute_type: docker",
                                               "compute_type: kubernetes"))
    session = open_session(quickstart, "docker", "render", write=False)
    try:
        with pytest.raises(ProviderErrors, match="type 'kubernetes' needs the kubernetes "
                           "provider; this stack \\(docker\\) uses the docker provider"):
            plan(session)
    finally:
        session.close()


def test_the_httproute_check_never_passes_unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without node: the errors found for other kinds are still reported, and in CI a
    missing node fails rather than skips."""
    import shutil

    from tests import stacks

    route = {"kind": "HTTPRoute", "apiVersion": "gateway.networking.k8s.io/v1",
             "metadata": {"name": "r"}, "spec": {}}
    broken = {"kind": "Service", "apiVersion": "v1", "metadata": {"name": "s"},
              "spec": {"ports": "not a list"}}
    monkeypatch.setattr(shutil, "which", lambda name: None)
    errors = stacks.invalid_manifests([broken, route])
    assert errors[0].startswith("Service s:") and "HTTPRoute was not checked" in errors[-1]
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs node"):
        stacks.invalid_manifests([route])
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        stacks.invalid_manifests([route])

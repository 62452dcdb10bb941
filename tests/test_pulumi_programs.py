"""The Pulumi programs with Pulumi's mocks, no CLI: the
resources each kind produces and their key fields, exactly the rendered objects, and
secrets that reach Pulumi only as secrets."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pulumi
import pytest

from mlinfra.providers.manifests import RenderedObject, RenderError, redact
from mlinfra.providers.manifests.files import write_contexts
from mlinfra.providers.pulumi_program import (
    PULUMI_TYPES,
    Program,
    docker_program,
    kubernetes_program,
)
from mlinfra.providers.pulumi_runner import in_own_loop
from mlinfra.runs.containers import ContainerRun, Mount
from tests.conftest import onnx_model
from tests.stacks import invalid_manifests, manifests, register_model, render

KEYS = "mlk_primary-key-value,mlk_secondary-key-value"
TOKEN = "api-token-value-from-the-environment"


class Recorder(pulumi.runtime.Mocks):
    """Every resource the program registers: name -> (type, inputs as sent)."""

    def __init__(self) -> None:
        self.resources: dict[str, tuple[str, dict[str, Any]]] = {}
        # The mock monitor gives each of its worker threads an event loop it never
        # closes; they are closed after the run (or they warn when collected).
        self.loops: set[asyncio.AbstractEventLoop] = set()

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.loops.add(asyncio.get_event_loop_policy().get_event_loop())
        self.resources[args.name] = (args.typ, dict(args.inputs))
        outputs = dict(args.inputs)
        if args.typ == "kubernetes:core/v1:Service":
            outputs["spec"] = {**outputs.get("spec", {}), "clusterIP": "10.0.0.7"}
        return f"{args.name}-id", outputs

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[str, Any]:
        return {}


def run(program: Program, stack: str, keys: str | None = KEYS) -> Recorder:
    """The program under Pulumi's mocks, as the provider runs it: in a thread with an
    event loop of its own, closed after."""
    recorder = in_own_loop(lambda: _run_mocked(program, stack, keys))
    for loop in recorder.loops:
        if not loop.is_running():
            loop.close()
    return recorder


def _run_mocked(program: Program, stack: str, keys: str | None) -> Recorder:
    recorder = Recorder()
    pulumi.runtime.set_mocks(recorder, project="mlinfra-quickstart", stack=stack,
                             preview=False)
    pulumi.runtime.set_all_config({"mlinfra:fraud-api-keys": keys} if keys else {},
                                  secret_keys=["mlinfra:fraud-api-keys"] if keys else [])

    @pulumi.runtime.test
    def apply() -> Any:
        program()
        return None

    apply()
    return recorder


def _prepared(quickstart: Path, stack: str, monkeypatch: pytest.MonkeyPatch
              ) -> list[RenderedObject]:
    monkeypatch.setenv("API_TOKEN", TOKEN)
    training = quickstart / "training.yaml"
    training.write_text(training.read_text().replace(
        'env: {OMP_NUM_THREADS: "1"}', 'env: {OMP_NUM_THREADS: "1", API_TOKEN: '
        '"${secret.API_TOKEN}"}'))
    register_model(quickstart, stack, "fraud-team", "fraud", onnx_model(), alias="champion")
    return render(quickstart, stack)


def _is_secret(value: Any) -> bool:
    return isinstance(value, dict) and value.get(
        "4dabf18193072939515e22adb298388d") == "1b47061264138c4ac30d75fd1eb44270"


def _unwrap(value: Any) -> Any:
    """Inputs as the program sent them, with Pulumi's secret wrappers opened."""
    if _is_secret(value):
        return _unwrap(value["value"])
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def test_kubernetes_program_makes_every_rendered_object(
        quickstart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = _prepared(quickstart, "kubernetes", monkeypatch)
    contexts = write_contexts(objects, tmp_path / "render")
    made = run(kubernetes_program(objects, contexts, push=False), "kubernetes").resources
    expected_types = {
        "Namespace": "kubernetes:core/v1:Namespace",
        "ResourceQuota": "kubernetes:core/v1:ResourceQuota",
        "PersistentVolumeClaim": "kubernetes:core/v1:PersistentVolumeClaim",
        "Secret": "kubernetes:core/v1:Secret", "ConfigMap": "kubernetes:core/v1:ConfigMap",
        "Service": "kubernetes:core/v1:Service", "Deployment": "kubernetes:apps/v1:Deployment",
        "HorizontalPodAutoscaler": "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
        "Job": "kubernetes:batch/v1:Job",
        "HTTPRoute": "kubernetes:gateway.networking.k8s.io/v1:HTTPRoute",
        "Image": "docker:index/image:Image"}
    assert {k: t for k, (t, _) in made.items()} == {
        o.key: expected_types[o.kind] for o in objects}
    assert {k: PULUMI_TYPES[k] for k in expected_types} == expected_types  # URNs of --target
    sent = []
    for obj in objects:
        if obj.kind == "Image":
            image = made[obj.key][1]
            assert image["imageName"] == obj.body["name"] and image["skipPush"] is True
            assert Path(image["build"]["context"]) == contexts[obj.key]
            continue
        inputs = _unwrap(made[obj.key][1])
        # What Pulumi receives is the rendered manifest, field for field.
        manifest = {k: v for k, v in inputs.items() if k != "__meta"}
        rendered = json.loads(json.dumps(redact(obj.body)))
        if obj.kind == "Secret":
            assert set(manifest["stringData"]) == set(rendered["stringData"])
            manifest["stringData"] = rendered["stringData"]
        assert _numbers(manifest) == _numbers(rendered), obj.key
        sent.append(manifest)
    assert invalid_manifests(sent) == []
    deployment = made["deployment-fraud-api-blue"][1]
    assert deployment["spec"]["replicas"] == 1
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert server["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert server["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}
    route = made["httproute-fraud-api"][1]["spec"]["rules"][-1]["backendRefs"]
    assert route == [{"name": "fraud-api-blue", "port": 80, "weight": 100}]
    hpa = made["hpa-fraud-api-blue"][1]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 4)
    job = made["job-fraud-train"][1]["spec"]
    assert (job["backoffLimit"], job["activeDeadlineSeconds"]) == (0, 1800)
    for name in ("secret-fraud-api-keys", "secret-mlinfra-secrets"):
        data = made[name][1]["stringData"]
        assert _is_secret(data), name  # a Pulumi secret: encrypted in its state
    assert _unwrap(made["secret-fraud-api-keys"][1]["stringData"]) == {"keys": KEYS}
    assert _unwrap(made["secret-mlinfra-secrets"][1]["stringData"]) == {"API_TOKEN": TOKEN}
    for key, (_, inputs) in made.items():
        if not key.startswith("secret-"):
            assert TOKEN not in json.dumps(inputs) and "mlk_" not in json.dumps(inputs), key


def _numbers(value: Any) -> Any:
    """Pulumi sends every number as a float: compare them as floats."""
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def test_docker_program_makes_images_network_and_containers(
        quickstart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = _prepared(quickstart, "docker", monkeypatch)
    contexts = write_contexts(objects, tmp_path / "render")
    made = run(docker_program(objects, contexts), "docker").resources
    types = {"Image": "docker:index/image:Image", "Network": "docker:index/network:Network",
             "Container": "docker:index/container:Container"}
    assert {k: t for k, (t, _) in made.items()} == {o.key: types[o.kind] for o in objects}
    server = made["container-fraud-api"][1]
    body = next(o for o in objects if o.key == "container-fraud-api").body
    assert server["image"] == body["image"] and server["restart"] == "unless-stopped"
    assert server["networksAdvanced"] == [{"name": "mlinfra"}]
    assert server["ports"] == [{"internal": 8080, "ip": "127.0.0.1"}]
    model = next(m for m in server["mounts"] if m["target"] == "/models/blue.onnx")
    assert model["readOnly"] is True and model["type"] == "bind"
    assert "/v2/health/ready" in " ".join(server["healthcheck"]["tests"])
    assert server["wait"] is True and server["memory"] == 2048 and server["cpus"] == "1"
    labels = {x["label"]: x["value"] for x in server["labels"]}
    assert labels["mlinfra.dev/project"] == "quickstart"
    # A secret among the variables makes Pulumi keep the whole list as a secret.
    assert _is_secret(server["envs"])
    envs = _unwrap(server["envs"])
    assert f"MLINFRA_ENDPOINT_KEYS={KEYS}" in envs
    config = next(e for e in envs if e.startswith("MLINFRA_ENDPOINT="))
    assert json.loads(config.split("=", 1)[1])["deployments"]["blue"]["path"] == (
        "/models/blue.onnx")
    job = made["container-run-fraud-train"][1]
    assert job["mustRun"] is False and job["attach"] is True
    assert _is_secret(job["envs"]) and f"API_TOKEN={TOKEN}" in _unwrap(job["envs"])
    for key, (_, inputs) in made.items():
        plain = json.dumps({k: v for k, v in inputs.items() if not _is_secret(v)})
        assert TOKEN not in plain and "mlk_" not in plain, key


def test_a_preview_before_the_keys_exist_still_runs(
        quickstart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys are made before every `up`; a preview of an endpoint never applied has none
    yet, and its Secret stays a secret."""
    objects = _prepared(quickstart, "kubernetes", monkeypatch)
    contexts = write_contexts(objects, tmp_path / "render")
    made = run(kubernetes_program(objects, contexts, push=False), "kubernetes",
               keys=None).resources
    data = made["secret-fraud-api-keys"][1]["stringData"]
    assert _is_secret(data) and _unwrap(data) == {"keys": ""}


def _a_run(tmp_path: Path, timeout_s: float | None = 90) -> ContainerRun:
    """A run as execute hands it to a launcher: its folder and an input inside the
    stack's artifacts folder, one sensitive variable."""
    runs = tmp_path / "artifacts" / "workspaces" / "ws" / "runs"
    run_dir = runs / "train-1a2b3c4d"
    data = runs / "inputs" / "0123456789abcdef" / "data.csv"
    return ContainerRun(
        "train-1a2b3c4d", "train", "python3 train.py --data /mlinfra/inputs/data/data.csv",
        {"MLINFRA_RUN_ID": "train-1a2b3c4d", "OMP_NUM_THREADS": "1", "API_TOKEN": TOKEN},
        ("API_TOKEN",),
        [Mount(run_dir, "/mlinfra/run", False), Mount(run_dir / "code", "/mlinfra/run/code", True),
         Mount(data, "/mlinfra/inputs/data/data.csv", True)],
        "/mlinfra/run/code", timeout_s, run_dir)


def test_a_job_run_on_docker_is_its_own_container_run_to_completion(
        quickstart: Path, tmp_path: Path) -> None:
    from mlinfra.providers.manifests.docker import run_container
    from mlinfra.spec import load

    config = load(quickstart, "docker")
    job_run = _a_run(tmp_path)
    obj = run_container(config, job_run, "mlinfra-quickstart-sklearn:abc", "cpu")
    assert TOKEN not in json.dumps(redact(obj.body))  # what the plan and files could show
    made = run(docker_program([obj], {}, held={"API_TOKEN": TOKEN}), "docker").resources
    kind, container = made["container-run-train-1a2b3c4d"]
    assert kind == "docker:index/container:Container"
    assert container["name"] == "mlinfra-quickstart-docker-run-train-1a2b3c4d"
    assert container["image"] == "mlinfra-quickstart-sklearn:abc"
    assert (container["attach"], container["mustRun"], container["logs"]) == (True, False, True)
    assert container["command"] == ["timeout", "-k", "10", "90", "sh", "-c", job_run.command]
    assert container["workingDir"] == "/mlinfra/run/code"
    mounts = {m["target"]: (m["source"], m["readOnly"]) for m in container["mounts"]}
    assert mounts == {"/mlinfra/run": (str(job_run.run_dir), False),
                      "/mlinfra/run/code": (str(job_run.run_dir / "code"), True),
                      "/mlinfra/inputs/data/data.csv": (str(job_run.mounts[2].source), True)}
    assert "networksAdvanced" not in container  # a run talks to no endpoint
    assert container["memory"] == 2048 and container["cpus"] == "1"
    labels = {x["label"]: x["value"] for x in container["labels"]}
    assert labels["mlinfra.dev/resource"] == "job.train"
    assert labels["mlinfra.dev/run"] == "train-1a2b3c4d"
    # The token is a Pulumi secret, in the variables only; the others are in clear.
    assert _is_secret(container["envs"])
    assert sorted(_unwrap(container["envs"])) == [
        f"API_TOKEN={TOKEN}", "MLINFRA_RUN_ID=train-1a2b3c4d", "OMP_NUM_THREADS=1"]
    plain = json.dumps({k: v for k, v in container.items() if not _is_secret(v)})
    assert TOKEN not in plain


def test_a_run_that_exits_non_zero_fails_with_its_output(quickstart: Path,
                                                         tmp_path: Path) -> None:
    """The docker provider reads the container's end from the outputs its program
    exports: exit code 124 under a timeout is the run's timeout."""
    from mlinfra.providers.manifests.docker import run_container
    from mlinfra.providers.pulumi_docker import DockerProvider
    from mlinfra.spec import load

    job_run = _a_run(tmp_path)
    obj = run_container(load(quickstart, "docker"), job_run, "img:1", None)
    ended = DockerProvider().run_ended(job_run, [obj], {obj.key: {"exit_code": 3,
                                                              "logs": "no data\n"}}, "")
    assert (ended.exit_code, ended.logs, ended.timed_out) == (3, "no data\n", False)
    assert ended.where == f"docker container {obj.body['name']} (img:1)"
    late = DockerProvider().run_ended(job_run, [obj], {obj.key: {"exit_code": 124, "logs": ""}}, "")
    assert late.timed_out
    broken = DockerProvider().run_ended(job_run, [obj], {}, "image not found")
    assert broken.exit_code is None and "image not found" in broken.error


def test_a_job_run_on_kubernetes_is_a_batch_job_on_the_artifacts_claim(
        quickstart: Path, tmp_path: Path) -> None:
    from mlinfra.providers.manifests.kubernetes import run_job
    from mlinfra.spec import load

    config = load(quickstart, "kubernetes")
    job_run = _a_run(tmp_path, timeout_s=1800)
    objects = run_job(config, job_run, "registry/mlinfra-quickstart-sklearn:abc", "cpu",
                      "mlinfra-artifacts", tmp_path / "artifacts")
    assert [(o.kind, o.key) for o in objects] == [
        ("Secret", "secret-run-train-1a2b3c4d"), ("Job", "job-run-train-1a2b3c4d")]
    assert invalid_manifests(manifests(objects)) == []
    made = run(kubernetes_program(objects, {}, push=False, held={"API_TOKEN": TOKEN}),
               "kubernetes").resources
    job = made["job-run-train-1a2b3c4d"][1]
    assert job["metadata"]["annotations"] == {"pulumi.com/timeoutSeconds": "2100"}
    assert job["metadata"]["labels"]["mlinfra.dev/run"] == "train-1a2b3c4d"
    spec = job["spec"]
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (0, 1800)
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["volumes"] == [{"name": "artifacts",
                               "persistentVolumeClaim": {"claimName": "mlinfra-artifacts"}}]
    container = pod["containers"][0]
    assert container["image"] == "registry/mlinfra-quickstart-sklearn:abc"
    assert container["command"] == ["sh", "-c", "exec >/mlinfra/run/output.log 2>&1\n"
                                    + job_run.command]  # the log lands in the run's folder
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"},
                                      "limits": {"cpu": "1", "memory": "2Gi"}}
    mounts = {m["mountPath"]: (m["subPath"], m["readOnly"]) for m in container["volumeMounts"]}
    assert mounts == {
        "/mlinfra/run": ("workspaces/ws/runs/train-1a2b3c4d", False),
        "/mlinfra/run/code": ("workspaces/ws/runs/train-1a2b3c4d/code", True),
        "/mlinfra/inputs/data/data.csv":
            ("workspaces/ws/runs/inputs/0123456789abcdef/data.csv", True)}
    env = {e["name"]: e for e in container["env"]}
    assert env["OMP_NUM_THREADS"] == {"name": "OMP_NUM_THREADS", "value": "1"}
    assert env["API_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "run-train-1a2b3c4d",
                                                             "key": "API_TOKEN"}
    secret = made["secret-run-train-1a2b3c4d"][1]["stringData"]
    assert _is_secret(secret) and _unwrap(secret) == {"API_TOKEN": TOKEN}
    assert TOKEN not in json.dumps(job)
    # A mount outside the artifacts folder cannot reach the pod: refused, saying why.
    stray = ContainerRun(job_run.run_id, job_run.job, job_run.command, {}, (),
                         [Mount(tmp_path / "elsewhere", "/x", True)], "/", None, job_run.run_dir)
    with pytest.raises(RenderError, match="outside the stack's artifacts folder"):
        run_job(config, stray, "img", None, "mlinfra-artifacts", tmp_path / "artifacts")


def test_jobs_on_kubernetes_need_the_artifacts_folder_shared_with_the_cluster(
        quickstart: Path) -> None:
    from mlinfra.engine import open_session, plan
    from mlinfra.providers.base import ProviderErrors

    stack = quickstart / "stacks" / "kubernetes.yaml"
    stack.write_text(stack.read_text().replace("  artifacts_claim: mlinfra-artifacts\n", ""))
    session = open_session(quickstart, "kubernetes", "render", write=False)
    try:
        with pytest.raises(ProviderErrors, match=r"`kubernetes\.artifacts_claim` to the "
                           r"PersistentVolumeClaim in namespace mlinfra") as raised:
            plan(session)
        assert "job.prep-data" in str(raised.value)
    finally:
        session.close()


def test_each_run_is_a_pulumi_stack_of_its_own_removed_once_it_ended(
        quickstart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher's wiring, with Pulumi's engine replaced by its mocks: the run's stack
    (STACK-run-RUN) gets exactly the run's container with its secret held, and is
    destroyed and removed after, whether the run succeeded or Pulumi failed."""
    from pulumi.automation.errors import CommandError

    from mlinfra.engine import open_session
    from mlinfra.providers.pulumi_runner import PulumiStack

    calls: list[tuple[str, str]] = []
    made: dict[str, tuple[str, dict[str, Any]]] = {}

    def up(self: PulumiStack, program: Program, targets: list[str]) -> dict[str, Any]:
        calls.append(("up", self.name))
        if "fail" in self.name:
            raise CommandError(_CommandResult("error: image not found"))
        made.update(run(program, self.name).resources)
        return {key: {"exit_code": 0, "logs": "trained\n"} for key in made}

    monkeypatch.setattr(PulumiStack, "up", up)
    monkeypatch.setattr(PulumiStack, "destroy", lambda self, program, remove=False: calls.append(
        ("remove" if remove else "destroy", self.name)))
    session = open_session(quickstart, "docker", "render", write=False)
    try:
        job = session.config.get("Job", "train-fraud")
        assert job is not None
        launch = session.provider.job_launcher(session.ctx, job)
        assert launch is not None
        ended = launch(_a_run(tmp_path))
        failed = launch(ContainerRun("fail-00000000", "train", "true", {}, (), [], "/", None,
                                     tmp_path))
    finally:
        session.close()
    assert calls == [("up", "docker-run-train-1a2b3c4d"), ("remove", "docker-run-train-1a2b3c4d"),
                     ("up", "docker-run-fail-00000000"), ("remove", "docker-run-fail-00000000")]
    assert list(made) == ["container-run-train-1a2b3c4d"]
    assert _unwrap(made["container-run-train-1a2b3c4d"][1]["envs"])[0] == f"API_TOKEN={TOKEN}"
    assert (ended.exit_code, ended.logs, ended.error) == (0, "trained\n", "")
    assert ended.where.startswith("docker container mlinfra-quickstart-docker-run-train-1a2b3c4d"
                                  " (mlinfra-quickstart-sklearn:")
    assert failed.exit_code is None and "image not found" in failed.error


class _CommandResult:
    """What pulumi.automation's CommandError is made from."""

    def __init__(self, stderr: str) -> None:
        self.stdout, self.stderr, self.code = "", stderr, 1

    def __str__(self) -> str:
        return f"code: 1\n stdout: \n stderr: {self.stderr}\n"


def test_a_failed_or_late_kubernetes_job_fails_its_run_with_pulumis_reason(
        quickstart: Path, tmp_path: Path) -> None:
    from mlinfra.providers.manifests.kubernetes import run_job
    from mlinfra.providers.pulumi_kubernetes import KubernetesProvider
    from mlinfra.spec import load

    job_run = _a_run(tmp_path)
    objects = run_job(load(quickstart, "kubernetes"), job_run, "img:1", None, "claim",
                      tmp_path / "artifacts")
    job_run.run_dir.mkdir(parents=True)
    (job_run.run_dir / "output.log").write_text("epoch 1\n")  # written by the pod
    provider = KubernetesProvider()
    done = provider.run_ended(job_run, objects, {}, "")
    assert (done.exit_code, done.logs, done.error) == (0, "epoch 1\n", "")
    assert done.where == "kubernetes Job mlinfra/run-train-1a2b3c4d (img:1)"
    failed = provider.run_ended(job_run, objects, {}, "Job has reached the specified backoff "
                                "limit -- [BackoffLimitExceeded]")
    assert failed.exit_code is None and not failed.timed_out
    assert failed.error.startswith("the Job failed: ") and "BackoffLimitExceeded" in failed.error
    late = provider.run_ended(job_run, objects, {}, "Job was active longer than specified "
                              "deadline -- [DeadlineExceeded]")
    assert late.timed_out and late.logs == "epoch 1\n"


def test_a_job_without_an_environment_cannot_run_on_docker(quickstart: Path) -> None:
    from mlinfra.engine import open_session, plan
    from mlinfra.providers.base import ProviderErrors

    training = quickstart / "training.yaml"
    training.write_text(training.read_text().replace("environment: sklearn\n", "", 1))
    session = open_session(quickstart, "docker", "render", write=False)
    try:
        with pytest.raises(ProviderErrors, match="jobs on docker run in their environment's "
                           "image: set `environment`"):
            plan(session)
    finally:
        session.close()

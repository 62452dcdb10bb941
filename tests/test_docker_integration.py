"""The docker stack for real, without Pulumi: the build context
and container spec that `mlinfra render -s docker` writes build an image on the stack's
`base_image`, and the endpoint container it starts (model mounted read-only, port
published on 127.0.0.1) scores a request.

It needs a Docker engine and the base image `mlinfra-base:bookworm` (MLINFRA_TEST_BASE_IMAGE
to name another); `.ci/run` sets both up where it can (.ci/docker-engine). The image
installs its packages from wheels that this machine downloads into the context (its
containers may have no route to a package index), so the build itself runs with no
network at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

from tests.conftest import REPO, Result, onnx_model
from tests.stacks import record_endpoint, register_model

BASE_IMAGE = os.environ.get("MLINFRA_TEST_BASE_IMAGE", "mlinfra-base:bookworm")
KEYS = "mlk_integration-primary,mlk_integration-secondary"


def _docker(*args: str, check: bool = True, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=check)


def _missing(reason: str) -> NoReturn:
    """Skip, saying why; but fail in CI once .ci/docker-engine started an engine (it sets
    MLINFRA_DOCKER_ENGINE=1), as a missing PostgreSQL fails there."""
    if os.environ.get("CI") == "true" and os.environ.get("MLINFRA_DOCKER_ENGINE") == "1":
        pytest.fail(f"{reason}, though .ci/docker-engine started one")
    pytest.skip(reason)


def _engine_or_skip() -> None:
    if shutil.which("docker") is None:
        _missing("no docker command here (.ci/docker-engine installs Debian's docker.io)")
    if _docker("info", check=False, timeout=30).returncode != 0:
        _missing("no Docker engine is running here (.ci/docker-engine starts one as root)")
    if _docker("image", "inspect", BASE_IMAGE, check=False, timeout=30).returncode != 0:
        _missing(f"base image {BASE_IMAGE} is missing (.ci/docker-engine builds it with "
                 "debootstrap)")


def _pip() -> list[str]:
    probe = subprocess.run([sys.executable, "-m", "pip", "--version"], capture_output=True,
                           check=False)
    if probe.returncode == 0:
        return [sys.executable, "-m", "pip"]
    for name in ("pip3", "pip"):
        if shutil.which(name):
            return [str(shutil.which(name))]
    pytest.skip("no pip here to download the image's wheels")


def _wheels(requirements: Path, into: Path) -> None:
    """The image's wheels (CPython 3.11, manylinux x86_64, as Debian bookworm's Python),
    downloaded once per set of requirements and kept with the virtualenv."""
    text = requirements.read_text()
    cache = REPO / ".venv" / "image-wheels" / hashlib.sha256(text.encode()).hexdigest()[:16]
    if not (cache / ".complete").exists():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([*_pip(), "download", "--quiet", "--only-binary=:all:",
                        "--python-version", "3.11", "--implementation", "cp",
                        "--platform", "manylinux2014_x86_64", "--platform",
                        "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
                        "-d", str(cache), "-r", str(requirements)],
                       check=True, timeout=600)
        (cache / ".complete").write_text(text)
    for wheel in cache.glob("*.whl"):
        shutil.copy2(wheel, into / wheel.name)


def _post(url: str, body: dict[str, object], key: str | None) -> tuple[int, object]:
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")


@pytest.mark.slow
def test_the_rendered_endpoint_container_builds_runs_and_scores(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    _engine_or_skip()
    network = f"mlinfra-test-{uuid.uuid4().hex[:8]}"
    root = project({
        "serving.yaml": "kind: Model\nname: m\nfrom: {path: models/m.onnx}\n---\n"
                        "kind: Endpoint\nname: api\ncompute: cpu\n"
                        "deployments: [{name: blue, model: m}]\ntraffic: {blue: 100}\n",
        "models/m.onnx": onnx_model(),
        "stacks/docker.yaml": f"kind: Stack\nname: docker\nprovider: docker\n"
                              f"docker: {{network: {network}, base_image: {BASE_IMAGE}}}\n"})
    register_model(root, "docker", "ws", "m", onnx_model())
    out = tmp_path / "rendered"
    result = cli("render", "-s", "docker", "--out", str(out))
    assert result.code == 0, result.err
    spec = json.loads((out / "containers" / "container-api.json").read_text())
    context = out / "images" / "image-serving"
    assert f"\nFROM {BASE_IMAGE}\n" in (context / "Dockerfile").read_text()
    _wheels(context / "requirements.txt", context / "wheels")
    name = spec["name"]
    try:
        # run.sh builds the image and starts the container exactly as rendered; the
        # build needs no network (--network none: nothing but the wheels in the context).
        script = (out / "run.sh").read_text().replace("docker build ",
                                                      "docker build --network none ")
        (out / "run.sh").write_text(script)
        done = subprocess.run(["sh", str(out / "run.sh")], capture_output=True, text=True,
                              timeout=900, check=False,
                              env={**os.environ, "MLINFRA_API_KEYS": KEYS})
        assert done.returncode == 0, done.stderr[-3000:]
        deadline, health = time.monotonic() + 90, ""
        while time.monotonic() < deadline and health != "healthy":
            time.sleep(1)
            health = _docker("inspect", "-f", "{{.State.Health.Status}}", name).stdout.strip()
        assert health == "healthy", _docker("logs", name, check=False).stderr[-2000:]
        mounts = json.loads(_docker("inspect", "-f", "{{json .Mounts}}", name).stdout)
        model = next(m for m in mounts if m["Destination"] == "/models/blue.onnx")
        assert model["RW"] is False
        port = _docker("port", name, "8080").stdout.split()[0]
        assert port.startswith("127.0.0.1:")
        url = f"http://{port}/v2/models/api/infer"
        body = {"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32",
                            "data": [1.0, 0.0, 0.0, 1.0]}]}
        assert _post(url, body, None)[0] == 401
        status, answer = _post(url, body, KEYS.split(",")[1])
        assert status == 200, answer
        outputs = {o["name"]: o for o in answer["outputs"]}  # type: ignore[index]
        assert outputs["label"]["data"] == [1, 0]
        # `mlinfra endpoints` reaches the container at the URL apply maps back from
        # Pulumi's outputs (the published port) into the state.
        from mlinfra.providers.pulumi_stack import published_url

        host, external = port.rsplit(":", 1)
        url = published_url({"container-api": [{"internal": 8080, "external": int(external),
                                                "ip": host}]})
        record_endpoint(root, "docker", "api", {
            "deployments": [{"name": "blue", "model": "m"}], "traffic": {"blue": 100},
            "auth": "key"}, {"url": url})
        listed = cli("endpoints", "list", "-s", "docker")
        assert listed.code == 0 and f"{url}" in listed.out and "ready" in listed.out
        request = tmp_path / "request.json"
        request.write_text(json.dumps(body))
        invoked = cli("endpoints", "invoke", "api", "-s", "docker", "--data", str(request),
                      "--key", KEYS.split(",")[0])
        assert invoked.code == 0, invoked.err
        assert json.loads(invoked.out)["outputs"][0]["data"] == [1, 0]
    finally:
        _docker("rm", "-f", name, check=False)
        _docker("network", "rm", network, check=False)


TRAIN = '''\
import json, os, sys
from mlinfra_run import log_metric

data, out = sys.argv[1], sys.argv[2]
if not os.environ.get("TOKEN"):
    sys.exit("no TOKEN")
with open(data) as f:
    amounts = [float(line.split(",")[1]) for line in f.read().splitlines()[1:]]
log_metric("total", sum(amounts))
with open(out, "w") as f:
    json.dump({"mean": sum(amounts) / len(amounts), "n": len(amounts)}, f, sort_keys=True)
print("trained on", len(amounts), "rows")
'''
JOBS = """\
kind: Environment
name: py
requirements: []
image: {base}
---
kind: Data
name: tx
path: tx.csv
---
kind: Job
name: train
code: ./train
environment: py
command: python train.py ${inputs.data} ${outputs.model}
inputs: {data: tx}
outputs: {model: model.json}
env: {TOKEN: "${secret.JOB_TOKEN}"}
"""


def _environment_image(config: Any, tmp_path: Path) -> str:
    """The Environment's image, built from its rendered context on the base image."""
    from mlinfra.providers.manifests.images import environment_context, image_name

    env = config.get("Environment", "py")
    files = environment_context(config, env)
    context = tmp_path / "image-py"
    for item in files:
        (context / item.path).parent.mkdir(parents=True, exist_ok=True)
        (context / item.path).write_bytes(item.content())
    image = image_name(config, f"{config.name}-py", files)
    built = _docker("build", "--network", "none", "-t", image, str(context), check=False,
                    timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    return image


def _run_in_docker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """Job runs go to a launcher that starts each run's rendered container spec
    (`run_container`) on the real engine with `docker run`, and reads its end as the
    docker provider reads the outputs its Pulumi program exports."""
    from mlinfra.providers.local import LocalProvider
    from mlinfra.providers.manifests.docker import docker_run_args, run_container
    from mlinfra.providers.pulumi_docker import DockerProvider
    from mlinfra.runs.containers import ContainerRun, Finished

    started: list[list[str]] = []
    images: dict[str, str] = {}

    def launcher(self: LocalProvider, ctx: Any, job: Any) -> Any:
        def launch(run: ContainerRun) -> Finished:
            if "py" not in images:
                images["py"] = _environment_image(ctx.config, tmp_path)
            obj = run_container(ctx.config, run, images["py"], None)
            args, secrets = docker_run_args(obj.body)
            started.append(args)
            done = subprocess.run(args, capture_output=True, text=True, timeout=600,
                                  check=False, env={**os.environ, **{
                                      name: run.env[name] for name in secrets}})
            return DockerProvider().run_ended(run, [obj], {obj.key: {
                "exit_code": done.returncode, "logs": done.stdout + done.stderr}}, "")

        return launch

    monkeypatch.setattr(LocalProvider, "job_launcher", launcher)
    return started


@pytest.mark.slow
def test_a_job_run_in_its_rendered_container_trains_from_mounted_inputs(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The docker stack: the run's container (environment image, code snapshot
    and inputs mounted read-only, run folder read-write) trains, and mlinfra's own
    output collection stores what it wrote: the same bytes as the same run on local."""
    _engine_or_skip()
    token = "job-token-value-0123456789"
    monkeypatch.setenv("JOB_TOKEN", token)
    root = project({"jobs.yaml": JOBS.replace("{base}", BASE_IMAGE), "train/train.py": TRAIN,
                    "data/tx.csv": "id,amount\n1,10.0\n2,30.5\n3,4.5\n"})
    # The same job on this machine first: what the container's run must reproduce.
    local = cli("apply", "--auto-approve")
    assert local.code == 0, local.err
    local_out = json.loads(cli("output", "job.train", "--json").out)["job.train"]
    shutil.rmtree(root / ".mlinfra")
    started = _run_in_docker(monkeypatch, tmp_path)
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    (args,) = started
    assert token not in " ".join(args)  # `--env TOKEN`: the value only in its environment
    mounts = [a for a in args if a.startswith("type=bind")]
    assert any(m.endswith(",target=/mlinfra/run/code,readonly") for m in mounts)
    assert any(m.endswith(",target=/mlinfra/inputs/data/tx.csv,readonly") for m in mounts)
    assert any(m.endswith(",target=/mlinfra/run") for m in mounts)  # read-write
    out = json.loads(cli("output", "job.train", "--json").out)["job.train"]
    assert out["outputs"]["model"] == local_out["outputs"]["model"]  # same sha256
    run_id = out["run_id"]
    shown = cli("runs", "show", run_id)
    assert shown.code == 0, shown.err
    run = json.loads(shown.out)
    assert run["status"] == "completed" and run["exit_code"] == 0
    assert run["command"] == ("python train.py /mlinfra/inputs/data/tx.csv "
                              "/mlinfra/run/outputs/model.json")
    assert run["environment"]["container"].startswith(
        f"docker container mlinfra-proj-dev-run-{run_id} (mlinfra-proj-py:")
    assert run["metrics"] == {"total": 45.0}  # logged in the container, read as it ran
    assert token not in json.dumps(run)
    log = cli("runs", "logs", run_id)
    assert "trained on 3 rows" in log.out
    # The container is gone (--rm); a new run is a new container.
    assert _docker("inspect", f"mlinfra-proj-dev-run-{run_id}", check=False).returncode != 0


@pytest.mark.slow
def test_a_job_container_that_fails_or_runs_out_of_time_fails_the_run_with_its_logs(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _engine_or_skip()
    monkeypatch.setenv("JOB_TOKEN", "x")
    jobs = JOBS.replace("{base}", BASE_IMAGE)
    project({"jobs.yaml": jobs.replace("python train.py", "echo cannot read >&2; exit 3; "
                                       "python train.py"),
             "train/train.py": TRAIN, "data/tx.csv": "id,amount\n1,10.0\n"})
    _run_in_docker(monkeypatch, tmp_path)
    failed = cli("apply", "--auto-approve")
    assert failed.code == 1
    assert "the command exited with code 3" in failed.err and "cannot read" in failed.err
    Path("jobs.yaml").write_text(jobs.replace("python train.py", "sleep 60; python train.py")
                                 + "timeout: 2s\n")
    late = cli("apply", "--auto-approve")
    assert late.code == 1 and "timed out after 2s" in late.err, late.err

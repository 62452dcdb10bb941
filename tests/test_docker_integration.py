"""The docker stack for real, without Pulumi (issue 13, items 2 and 4): the build context
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

import pytest

from tests.conftest import REPO, Result, onnx_model
from tests.stacks import register_model

BASE_IMAGE = os.environ.get("MLINFRA_TEST_BASE_IMAGE", "mlinfra-base:bookworm")
KEYS = "mlk_integration-primary,mlk_integration-secondary"


def _docker(*args: str, check: bool = True, timeout: float = 600
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          check=check)


def _engine_or_skip() -> None:
    if shutil.which("docker") is None:
        pytest.skip("no docker command here (.ci/docker-engine installs Debian's docker.io)")
    if _docker("info", check=False, timeout=30).returncode != 0:
        pytest.skip("no Docker engine is running here (.ci/docker-engine starts one as root)")
    if _docker("image", "inspect", BASE_IMAGE, check=False, timeout=30).returncode != 0:
        pytest.skip(f"base image {BASE_IMAGE} is missing (.ci/docker-engine builds it with "
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
    finally:
        _docker("rm", "-f", name, check=False)
        _docker("network", "rm", network, check=False)

"""`mlinfra apply` through the real Pulumi engine, on Docker and on a kind cluster
They need the Pulumi CLI, which cannot be installed on
mlinfra's development machines: there they are skipped with the reason, and
.github/workflows/pulumi.yml runs them on GitHub, where the CLI, Docker and kind are.

The kind test also needs MLINFRA_TEST_KUBE_CONTEXT (the cluster's kubeconfig context),
MLINFRA_TEST_REGISTRY (a registry the cluster pulls from, e.g. localhost:5001) and the
Gateway API's CRDs installed in the cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Result, onnx_model

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("pulumi") is None,
                       reason="the Pulumi CLI is not installed here (it downloads a binary "
                              "this machine cannot fetch); .github/workflows/pulumi.yml "
                              "runs this test"),
]

SERVING = """\
kind: Model
name: m
from: {path: models/m.onnx}
---
kind: Endpoint
name: api
compute: cpu
auth: none
deployments:
  - {name: blue, model: m}
  - {name: green, model: m}
traffic: {blue: 100, green: 0}
"""
BODY = {"inputs": [{"name": "features", "shape": [2, 2], "datatype": "FP32",
                    "data": [1.0, 0.0, 0.0, 1.0]}]}


def _score(url: str) -> list[int]:
    request = urllib.request.Request(url, data=json.dumps(BODY).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer = json.loads(response.read())
    return [int(x) for x in next(o for o in answer["outputs"]
                                 if o["name"] == "label")["data"]]


@pytest.fixture
def passphrase(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PULUMI_CONFIG_PASSPHRASE", "mlinfra-test-passphrase")


def test_apply_on_docker_serves_the_endpoint_and_destroy_removes_it(
        project: Callable[..., Path], cli: Callable[..., Result], passphrase: None) -> None:
    network = f"mlinfra-up-{uuid.uuid4().hex[:8]}"
    base = os.environ.get("MLINFRA_TEST_BASE_IMAGE")
    root = project({"serving.yaml": SERVING, "models/m.onnx": onnx_model(),
                    "stacks/docker.yaml": "kind: Stack\nname: docker\nprovider: docker\n"
                    f"docker: {{network: {network}"
                    + (f", base_image: {base}" if base else "") + "}\n"})
    planned = cli("plan", "-s", "docker")
    assert planned.code == 0, planned.err
    assert "Pulumi preview:" in planned.out
    applied = cli("apply", "-s", "docker", "--auto-approve")
    assert applied.code == 0, applied.err
    name = "mlinfra-proj-docker-api"
    port = subprocess.run(["docker", "port", name, "8080"], capture_output=True, text=True,
                          check=True).stdout.split()[0]
    assert _score(f"http://{port}/v2/models/api/infer") == [1, 0]
    again = cli("plan", "-s", "docker", "--detailed-exitcode")
    assert again.code == 0, again.out  # nothing left to change
    assert cli("destroy", "-s", "docker", "--auto-approve").code == 0
    gone = subprocess.run(["docker", "inspect", name], capture_output=True, check=False)
    assert gone.returncode != 0
    assert root.exists()


TRAIN = """\
import json, sys
rows = open(sys.argv[1]).read().splitlines()[1:]
json.dump({"n": len(rows)}, open(sys.argv[2], "w"))
print("trained on", len(rows), "rows")
"""
JOB = """\
kind: Environment
name: py
requirements: []
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
"""


def test_apply_on_docker_runs_a_job_in_its_own_container_and_collects_its_output(
        project: Callable[..., Path], cli: Callable[..., Result], passphrase: None) -> None:
    network = f"mlinfra-up-{uuid.uuid4().hex[:8]}"
    base = os.environ.get("MLINFRA_TEST_BASE_IMAGE")
    root = project({"job.yaml": JOB, "train/train.py": TRAIN,
                    "data/tx.csv": "id,amount\n1,10\n2,20\n",
                    "stacks/docker.yaml": "kind: Stack\nname: docker\nprovider: docker\n"
                    f"docker: {{network: {network}"
                    + (f", base_image: {base}" if base else "") + "}\n"})
    try:
        applied = cli("apply", "-s", "docker", "--auto-approve")
        assert applied.code == 0, applied.err
        out = json.loads(cli("output", "-s", "docker", "job.train", "--json").out)["job.train"]
        run = json.loads(cli("runs", "show", "-s", "docker", out["run_id"]).out)
        assert run["status"] == "completed" and run["exit_code"] == 0
        assert run["environment"]["container"].startswith(
            f"docker container mlinfra-proj-docker-run-{out['run_id']} ")
        model = root / ".mlinfra" / "docker" / "workspaces" / "ws" / "runs" / out["run_id"]
        assert json.loads((model / "outputs" / "model.json").read_text()) == {"n": 2}
        assert "trained on 2 rows" in cli("runs", "logs", "-s", "docker", out["run_id"]).out
        # The run's own Pulumi stack is gone once it ended, and so is its container.
        stacks = root / ".mlinfra" / "docker" / "pulumi" / ".pulumi" / "stacks"
        assert [p.name for p in stacks.rglob("*.json") if "-run-" in p.name] == []
        gone = subprocess.run(["docker", "inspect", f"mlinfra-proj-docker-run-{out['run_id']}"],
                              capture_output=True, check=False)
        assert gone.returncode != 0
        again = cli("plan", "-s", "docker", "--detailed-exitcode")
        assert again.code == 0, again.out  # the run is reused, nothing to do
    finally:
        assert cli("destroy", "-s", "docker", "--auto-approve").code == 0


def _kubectl(context: str, *args: str) -> str:
    return subprocess.run(["kubectl", "--context", context, *args], capture_output=True,
                          text=True, check=True, timeout=300).stdout


def test_apply_on_kind_serves_and_a_traffic_change_moves_only_the_route(
        project: Callable[..., Path], cli: Callable[..., Result], passphrase: None) -> None:
    context = os.environ.get("MLINFRA_TEST_KUBE_CONTEXT", "")
    if not context:
        pytest.skip("no Kubernetes cluster here (MLINFRA_TEST_KUBE_CONTEXT names one; the "
                    "GitHub workflow starts kind)")
    namespace = f"mlinfra-up-{uuid.uuid4().hex[:8]}"
    registry = os.environ.get("MLINFRA_TEST_REGISTRY", "")
    project({"serving.yaml": SERVING, "models/m.onnx": onnx_model(),
             "stacks/kubernetes.yaml": "kind: Stack\nname: kubernetes\nprovider: kubernetes\n"
             f"kubernetes: {{context: {context}, namespace: {namespace}, "
             f"gateway: mlinfra-gateway" + (f", registry: {registry}" if registry else "")
             + "}\n"})
    applied = cli("apply", "-s", "kubernetes", "--auto-approve")
    assert applied.code == 0, applied.err
    try:
        found = json.loads(_kubectl(context, "get", "deployments", "-n", namespace, "-l",
                                    "mlinfra.dev/project=proj", "-o", "json"))
        assert sorted(d["metadata"]["name"] for d in found["items"]) == ["api-blue",
                                                                         "api-green"]
        forward = subprocess.Popen(["kubectl", "--context", context, "-n", namespace,
                                    "port-forward", "svc/api-blue", "18080:80"])
        try:
            time.sleep(3)
            assert _score("http://127.0.0.1:18080/v2/models/api/infer") == [1, 0]
        finally:
            forward.terminate()
            forward.wait(timeout=10)
        serving = Path("serving.yaml")
        serving.write_text(serving.read_text().replace("traffic: {blue: 100, green: 0}",
                                                       "traffic: {blue: 50, green: 50}"))
        planned = cli("plan", "-s", "kubernetes")
        assert planned.code == 0, planned.err
        objects = planned.out.split("Objects on kubernetes")[1].split("Pulumi preview:")
        assert "update HTTPRoute httproute-api" in objects[0]
        assert "Deployment" not in objects[0] and "Deployment" not in objects[1]
        assert cli("apply", "-s", "kubernetes", "--auto-approve").code == 0
        route = json.loads(_kubectl(context, "get", "httproute", "api", "-n", namespace,
                                    "-o", "json"))
        weights = [b["weight"] for b in route["spec"]["rules"][-1]["backendRefs"]]
        assert weights == [50, 50]
    finally:
        assert cli("destroy", "-s", "kubernetes", "--auto-approve").code == 0

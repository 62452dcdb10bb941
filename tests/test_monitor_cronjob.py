"""A monitor on a kubernetes stack: a CronJob running `mlinfra monitor run` where the
captures are, rendered and applied under Pulumi's mocks, checked against Kubernetes'
schemas; on a SQLite state it is left out, saying why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mlinfra.providers.manifests.files import write_contexts
from mlinfra.providers.manifests.inputs import StackInputs
from mlinfra.providers.manifests.kubernetes import monitor_schedule, render
from mlinfra.providers.pulumi_program import PULUMI_TYPES, kubernetes_program
from mlinfra.spec import load
from tests.stacks import invalid_manifests
from tests.test_pulumi_programs import _unwrap, run

TEAM_STATE = "postgresql://mlinfra:${secret.MLINFRA_DB_PASSWORD}@db.example.com/mlinfra"


def test_a_monitor_is_a_cronjob_on_the_captures_claim(quickstart: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLINFRA_DB_PASSWORD", "db-password-value")
    config = load(quickstart, "kubernetes")
    config.stack.state = TEAM_STATE
    objects = render(config, StackInputs(models={}))
    cronjob = next(o for o in objects if o.kind == "CronJob")
    assert (cronjob.key, cronjob.owner) == ("cronjob-fraud-watch", "monitor.fraud-watch")
    spec = cronjob.body["spec"]
    assert spec["schedule"] == "5 * * * *" and spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"] == ["monitor", "run", "fraud-watch", "-C",
                                 "/opt/mlinfra/project", "-s",
                                 "/opt/mlinfra/project/stacks/kubernetes.yaml",
                                 "--captures", "/mnt/datastores/main"]
    assert container["volumeMounts"] == [{"name": "datastore-main",
                                          "mountPath": "/mnt/datastores/main"}]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "datastore-main"
    assert container["env"] == [{"name": "MLINFRA_DB_PASSWORD", "valueFrom": {
        "secretKeyRef": {"name": "mlinfra-secrets", "key": "MLINFRA_DB_PASSWORD"}}}]
    image = next(o for o in objects if o.key == "image-monitor")
    files = {f.path for f in image.context}
    assert {"project/mlinfra.yaml", "project/monitoring.yaml", "project/train/train.py",
            "src/mlinfra/monitoring/verdicts.py", "requirements.txt"} <= files
    assert not any(f.startswith("project/data/") for f in files)
    requirements = next(f for f in image.context if f.path == "requirements.txt").text or ""
    assert "pyarrow==" in requirements and "pulumi" not in requirements
    contexts = write_contexts(objects, tmp_path / "render")
    made = run(kubernetes_program(objects, contexts, push=False), "kubernetes").resources
    assert made["cronjob-fraud-watch"][0] == PULUMI_TYPES["CronJob"]
    sent = _unwrap(made["cronjob-fraud-watch"][1])
    assert sent["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0][
        "args"] == container["args"]
    assert "db-password-value" not in json.dumps(sent)
    manifest = {k: v for k, v in sent.items() if k != "__meta"}
    assert invalid_manifests([{"apiVersion": "batch/v1", "kind": "CronJob", **manifest}]) == []


def test_on_a_sqlite_state_the_cronjob_is_left_out_saying_why(quickstart: Path) -> None:
    config = load(quickstart, "kubernetes")
    inputs = StackInputs(models={})
    objects = render(config, inputs)
    assert not any(o.kind == "CronJob" for o in objects)
    assert "postgresql://" in inputs.unresolved["monitor.fraud-watch"]


def test_the_schedule_follows_the_window(quickstart: Path) -> None:
    config = load(quickstart, "kubernetes")
    monitor = config.get("Monitor", "fraud-watch")
    assert monitor is not None
    for window, schedule in (("15m", "*/15 * * * *"), ("1h", "5 * * * *"),
                             ("1d", "5 0 * * *")):
        monitor.spec["window"] = window
        assert monitor_schedule(monitor) == schedule
    monitor.spec["schedule"] = "0 3 * * *"
    assert monitor_schedule(monitor) == "0 3 * * *"


def test_the_monitor_image_installs_what_monitor_run_imports(quickstart: Path) -> None:
    """Every third-party module `mlinfra monitor run` loads on a kubernetes stack is
    installed by the monitor image (and Pulumi, onnxruntime and GX are not needed)."""
    import importlib.metadata
    import subprocess
    import sys

    from mlinfra.providers.manifests.images import MONITOR_DISTRIBUTIONS

    command = [sys.executable, "-X", "importtime", "-m", "mlinfra", "monitor", "run", "-s",
               "kubernetes", "-C", str(quickstart)]
    # once to fill the caches (Great Expectations' table, which an image without GX
    # does without), then measured
    subprocess.run(command, capture_output=True, check=False)
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    roots = {line.split("|")[-1].strip().split(".")[0] for line in done.stderr.splitlines()
             if line.startswith("import time:")}
    owners = importlib.metadata.packages_distributions()
    needed = {dist.lower() for root in roots for dist in owners.get(root, [])
              if dist.lower() != "mlinfra"}
    installed = {name for name, _ in MONITOR_DISTRIBUTIONS}
    assert needed <= installed, needed - installed
    assert not {"pulumi", "onnxruntime", "great-expectations"} & needed

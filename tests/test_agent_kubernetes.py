"""The agent on a kubernetes stack: with a state on PostgreSQL, a one-replica Deployment
(Recreate) of `mlinfra agent` whose image holds mlinfra and the project, valid against
the Kubernetes schemas and made by the Pulumi program (Pulumi's mocks, no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlinfra.providers.manifests import RenderedObject
from mlinfra.providers.manifests.files import write_contexts
from mlinfra.providers.manifests.inputs import StackInputs
from mlinfra.providers.manifests.render import render_stack
from mlinfra.providers.pulumi_program import kubernetes_program
from mlinfra.spec import load
from tests.stacks import invalid_manifests, manifests
from tests.test_pulumi_programs import _unwrap, run

STATE = "postgresql://mlinfra:${secret.PG_PASSWORD}@db.example.com/mlinfra"


def _objects(quickstart: Path, state: str | None) -> list[RenderedObject]:
    stack = quickstart / "stacks" / "kubernetes.yaml"
    text = stack.read_text()
    if state:
        text = text.replace("# state: .mlinfra/kubernetes/state.db", f"state: {state}")
    stack.write_text(text)
    automation = quickstart / "automation.yaml"
    automation.write_text(automation.read_text().replace(
        "# secret: ${secret.OPS_WEBHOOK_SECRET}", "secret: ${secret.OPS_WEBHOOK_SECRET}"))
    return render_stack(load(quickstart, "kubernetes"), StackInputs(models={}))


def test_the_agent_is_a_one_replica_deployment_of_the_project(
        quickstart: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = _objects(quickstart, STATE)
    by_key = {o.key: o for o in objects}
    image, deployment = by_key["image-agent"], by_key["deployment-mlinfra-agent"]
    assert image.owner == deployment.owner == "workspace.fraud-team"
    files = {f.path for f in image.context}
    assert {"project/mlinfra.yaml", "project/automation.yaml",
            "src/mlinfra/cli/events.py", "src/mlinfra/events/agent.py"} <= files
    assert not any(p.startswith("project/.mlinfra/") for p in files)
    requirements = next(f.text for f in image.context if f.path == "requirements.txt")
    assert requirements is not None and "cronsim==" in requirements and "httpx==" in (
        requirements)
    spec = deployment.body["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 60
    [container] = pod["containers"]
    assert container["image"] == image.body["name"]
    assert container["args"] == ["-s", "kubernetes", "--lock-timeout", "10m"]
    assert {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]} == {
        "OPS_WEBHOOK_SECRET": {"name": "mlinfra-secrets", "key": "OPS_WEBHOOK_SECRET"},
        "PG_PASSWORD": {"name": "mlinfra-secrets", "key": "PG_PASSWORD"}}
    assert invalid_manifests(manifests(objects)) == []
    monkeypatch.setenv("OPS_WEBHOOK_SECRET", "whsec_c2VjcmV0")
    monkeypatch.setenv("PG_PASSWORD", "pg-password")
    contexts = write_contexts(objects, tmp_path / "render")
    made = run(kubernetes_program(objects, contexts, push=False), "kubernetes").resources
    assert made["deployment-mlinfra-agent"][0] == "kubernetes:apps/v1:Deployment"
    sent = _unwrap(made["deployment-mlinfra-agent"][1])
    assert sent["spec"]["replicas"] == 1 and sent["metadata"]["name"] == "mlinfra-agent"
    assert made["image-agent"][1]["imageName"] == image.body["name"]
    dockerfile = (contexts["image-agent"] / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "-m", "mlinfra", "agent"]' in dockerfile
    secret = _unwrap(made["secret-mlinfra-secrets"][1]["stringData"])
    assert secret == {"OPS_WEBHOOK_SECRET": "whsec_c2VjcmV0", "PG_PASSWORD": "pg-password"}


def test_a_sqlite_state_keeps_the_agent_on_this_machine(quickstart: Path) -> None:
    keys = {o.key for o in _objects(quickstart, None)}
    assert "deployment-mlinfra-agent" not in keys and "image-agent" not in keys


def test_a_changed_agent_plans_the_workspaces_update(quickstart: Path) -> None:
    """The agent's image is a fact of the workspace: changing a schedule (the project's
    files) changes it, so the plan updates the workspace, whose objects hold the agent."""
    from mlinfra.handler import Context
    from mlinfra.providers.pulumi_kubernetes import KubernetesProvider

    _objects(quickstart, STATE)

    def fact() -> object:
        config = load(quickstart, "kubernetes")
        provider = KubernetesProvider()
        ctx = Context(config, None, quickstart / ".mlinfra", provider=provider)  # type: ignore[arg-type]
        workspace = config.get("Workspace", "fraud-team")
        assert workspace is not None
        return provider.handler("Workspace", workspace.address).facts(workspace, ctx)[
            "agent_image"]

    before = fact()
    automation = quickstart / "automation.yaml"
    automation.write_text(automation.read_text().replace('"0 2 * * *"', '"0 3 * * *"'))
    after = fact()
    assert isinstance(before, str) and before.startswith("mlinfra-quickstart-agent:")
    assert after != before

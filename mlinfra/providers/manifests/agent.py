"""The agent on a kubernetes stack: `mlinfra agent` as a one-replica Deployment.

Rendered when the project declares a Schedule or a Webhook and the stack's state is on
PostgreSQL (`state: postgresql://...`), the state the pod and this machine share; a
SQLite state stays on this machine, where `mlinfra agent` runs instead. Its image holds
mlinfra (its source and pinned dependencies) and the project's files; the secrets it
reads (the state's password, the webhooks' keys) come from the stack's Secret. The
strategy is Recreate, so a rollout never runs two agents (the agent lock would stop the
second one anyway), and SIGTERM gives it time to stop between two steps.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path
from typing import Any

from mlinfra.providers.manifests import ContextFile, RenderedObject, SecretValue, labels
from mlinfra.providers.manifests.images import (
    INSTALL,
    WHEELS_README,
    base_image,
    image_name,
)
from mlinfra.spec import sensitive
from mlinfra.spec.model import Config

AGENT = "mlinfra-agent"
# Seconds a stopping agent has between SIGTERM and SIGKILL.
GRACE_S = 60
_SKIPPED = (".mlinfra", ".git", "__pycache__", ".venv")


def wanted(config: Config) -> bool:
    """Whether the stack runs an agent in the cluster."""
    state = config.stack.state or ""
    return bool(config.of("Schedule") or config.of("Webhook")) and state.startswith(
        ("postgresql://", "postgres://"))


def secret_names(config: Config) -> list[str]:
    """The secrets the agent reads: the webhooks' and the state URL's."""
    return sorted(sensitive.secret_names(
        [[r.spec for r in config.of("Webhook").values()], config.stack.state]))


def _requirements() -> str:
    """mlinfra's own dependencies, pinned to the versions this machine runs."""
    out = []
    for line in importlib.metadata.requires("mlinfra") or []:
        if "extra ==" in line:
            continue
        name = re.split(r"[\s\[<>=!~;]", line, maxsplit=1)[0]
        extras = re.search(r"\[[^\]]*\]", line)
        try:
            pinned = f"=={importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            pinned = ""
        out.append(f"{name}{extras.group(0) if extras else ''}{pinned}")
    return "\n".join(sorted(out)) + "\n"


def _files(root: Path, into: str) -> list[ContextFile]:
    return [ContextFile(f"{into}/{p.relative_to(root).as_posix()}", source=p)
            for p in sorted(root.rglob("*")) if p.is_file() and not any(
                part in _SKIPPED or part.endswith(".pyc")
                for part in p.relative_to(root).parts)]


def agent_context(config: Config) -> tuple[ContextFile, ...]:
    package = Path(__file__).resolve().parents[2]
    dockerfile = (f"# mlinfra agent: schedules and webhooks of stack {config.stack.name}\n"
                  f"FROM {base_image(config)}\n" + INSTALL
                  + "COPY src/ /opt/mlinfra/src/\nCOPY project/ /project/\n"
                  + "ENV PYTHONPATH=/opt/mlinfra/src\nWORKDIR /project\n"
                  + 'ENTRYPOINT ["python", "-m", "mlinfra", "agent"]\n')
    files = [ContextFile("Dockerfile", dockerfile),
             ContextFile("requirements.txt", _requirements()),
             ContextFile("wheels/README", WHEELS_README)]
    return tuple(files + _files(package, "src/mlinfra") + _files(config.root, "project"))


def agent_image(config: Config) -> str | None:
    """The agent's image (its name carries its content's hash), or None when the stack
    runs none: the workspace's fact, so a changed agent plans the workspace's update."""
    return image_name(config, f"{config.name}-agent", agent_context(config)) \
        if wanted(config) else None


def render_agent(config: Config, objects: list[RenderedObject], namespace: str,
                 secrets: list[SecretValue], secret_name: str) -> None:
    """The agent's image and Deployment, owned by the workspace; the secrets it reads
    join the stack's Secret."""
    if not wanted(config):
        return
    owner = f"workspace.{config.workspace}"
    files = agent_context(config)
    image = image_name(config, f"{config.name}-agent", files)
    objects.append(RenderedObject("image-agent", owner, "Image", {"name": image},
                                  context=files))
    names = secret_names(config)
    secrets += [SecretValue(env=name) for name in names]
    env: list[dict[str, Any]] = [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name, "key": name}}}
        for name in names]
    selector = labels(config.name, config.stack.name, owner, component="agent")
    container = {"name": "agent", "image": image,
                 "args": ["-s", config.stack.name, "--lock-timeout", "10m"],
                 "env": env,
                 "resources": {"requests": {"cpu": "100m", "memory": "256Mi"},
                               "limits": {"memory": "1Gi"}}}
    depends = [f"namespace-{namespace}", "image-agent"]
    if names:
        depends.append(f"secret-{secret_name}")
    objects.append(RenderedObject("deployment-mlinfra-agent", owner, "Deployment", {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": AGENT, "namespace": namespace, "labels": selector},
        "spec": {"replicas": 1, "strategy": {"type": "Recreate"},
                 "selector": {"matchLabels": selector},
                 "template": {"metadata": {"labels": selector}, "spec": {
                     "terminationGracePeriodSeconds": GRACE_S,
                     "containers": [container]}}}},
        depends_on=tuple(depends)))

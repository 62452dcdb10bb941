"""What the docker and kubernetes stacks' tests share: registering a model in a stack's
own registry, rendering a project's stack, and checking manifests against the real
Kubernetes schemas (kubernetes-validate for the built-in kinds, the Gateway API's
published schema, through Node, for HTTPRoute)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

from mlinfra.providers.manifests import RenderedObject, redact
from mlinfra.registry.artifacts import ArtifactStore
from mlinfra.registry.models import ModelRegistry
from mlinfra.state.sqlite import SqliteStore
from tests.conftest import REPO, missing

GATEWAY_API_PACKAGE = "@kubernetes-models/gateway-api@2.0.0"
_VALIDATE_JS = """\
import { HTTPRoute } from "@kubernetes-models/gateway-api/gateway.networking.k8s.io/v1/HTTPRoute";
import { readFileSync } from "node:fs";
const errors = [];
for (const obj of JSON.parse(readFileSync(0, "utf8"))) {
  try { new HTTPRoute(obj).validate(); }
  catch (e) { errors.push(`${obj.metadata.name}: ${e.message}`); }
}
console.log(JSON.stringify(errors));
"""


def register_model(root: Path, stack: str, workspace: str, name: str, content: bytes,
                   alias: str | None = None) -> int:
    """A version of `name` in the stack's registry, as an apply that trained it leaves."""
    store = SqliteStore(root / ".mlinfra" / stack / "state.db", command="test")
    try:
        artifacts = ArtifactStore(root / ".mlinfra" / stack / "workspaces" / workspace /
                                  "artifacts")
        source = root / ".mlinfra" / f"{name}.onnx"
        source.write_bytes(content)
        sha = artifacts.put_file(source)
        registry = ModelRegistry(store)
        version, _ = registry.register(name, sha, "onnx", {}, None, {}, {}, {})
        if alias:
            registry.set_alias(name, alias, version.version)
        return version.version
    finally:
        store.close()


def record_endpoint(root: Path, stack: str, name: str, attributes: dict[str, Any],
                    outputs: dict[str, Any]) -> None:
    """An endpoint in the stack's state as an apply through Pulumi leaves it (its URL
    mapped back from Pulumi's outputs on docker)."""
    from mlinfra.state.model import ResourceState

    store = SqliteStore(root / ".mlinfra" / stack / "state.db", command="test")
    try:
        store.commit_change(None, f"endpoint.{name}", "create", ResourceState(
            f"endpoint.{name}", "Endpoint", name, attributes, "h", outputs,
            provider_id=f"pulumi:endpoint.{name}"))
    finally:
        store.close()


def render(root: Path, stack: str) -> list[RenderedObject]:
    from mlinfra.engine import open_session
    from mlinfra.providers.manifests.render import render_stack, stack_inputs

    session = open_session(root, stack, "render", write=False)
    try:
        return render_stack(session.config, stack_inputs(session.ctx))
    finally:
        session.close()


def manifests(objects: list[RenderedObject]) -> list[dict[str, Any]]:
    return [redact(o.body) for o in objects if o.kind != "Image"]


def _gateway_api_schemas() -> tuple[Path | None, str]:
    """The Gateway API's schemas (an npm package), installed once per virtualenv; or
    None and why they cannot be had here."""
    folder = REPO / ".venv" / "gateway-api-schemas"
    if shutil.which("node") is None:
        return None, ("HTTPRoute is checked with the Gateway API's own schema, which needs "
                      "node and npm (not installed here; .ci/run installs them)")
    if not (folder / "node_modules" / "@kubernetes-models" / "gateway-api").exists():
        if shutil.which("npm") is None:
            return None, ("HTTPRoute is checked with the Gateway API's own schema, which "
                          "needs npm (not installed here; .ci/run installs it)")
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--silent",
                               "--prefix", str(folder), GATEWAY_API_PACKAGE],
                              capture_output=True, text=True, timeout=300, check=False)
        if done.returncode != 0:
            return None, f"npm could not install {GATEWAY_API_PACKAGE}: {done.stderr[-300:]}"
    (folder / "validate.mjs").write_text(_VALIDATE_JS)
    return folder, ""


def invalid_manifests(objects: list[dict[str, Any]]) -> list[str]:
    """Every manifest checked against its kind's schema; the errors, or []."""
    import kubernetes_validate

    errors = []
    routes = []
    for obj in objects:
        if obj["kind"] == "HTTPRoute":
            routes.append(obj)
            continue
        try:
            kubernetes_validate.validate(obj, kubernetes_validate.latest_version(), strict=True)
        except (kubernetes_validate.ValidationError,
                kubernetes_validate.SchemaNotFoundError) as err:
            errors.append(f"{obj['kind']} {obj['metadata']['name']}: {err}")
    if routes:
        folder, why = _gateway_api_schemas()
        if folder is None:
            # The errors found for the other kinds are reported whatever happens here.
            if errors:
                return [*errors, f"(and HTTPRoute was not checked: {why})"]
            missing(why)
        done = subprocess.run(["node", str(folder / "validate.mjs")], input=json.dumps(routes),
                              capture_output=True, text=True, timeout=60, check=True,
                              cwd=folder, env={**os.environ, "NODE_PATH": str(folder)})
        errors += json.loads(done.stdout)
    return errors

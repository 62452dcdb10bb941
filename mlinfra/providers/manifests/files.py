"""Rendered objects written to a folder, for `mlinfra render` and for the Pulumi
programs (which build images from the contexts written here).

kubernetes: manifests/NN-KEY.yaml (`kubectl apply -f manifests/`), secrets.sh (creates
the Secrets from environment variables), images/KEY/ (build contexts).
docker: images/KEY/, containers/KEY.json (each container's spec), run.sh (docker build,
network create and docker run, in order). No secret value is written anywhere: the
scripts read them from the environment when they run.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

from mlinfra.providers.manifests import RenderedObject, SecretValue, redact
from mlinfra.providers.manifests.images import context_dir

# kubectl applies a folder's files in name order: namespaces and what pods use first.
_KIND_ORDER = ("Namespace", "ResourceQuota", "PersistentVolumeClaim", "Secret", "ConfigMap",
               "Service", "Deployment", "HorizontalPodAutoscaler", "Job", "HTTPRoute")


def write_contexts(objects: list[RenderedObject], out: Path) -> dict[str, Path]:
    """Each image's build context under out/images/KEY; returns key -> folder. A context
    whose files are already there as rendered is left alone."""
    folders = {}
    for obj in objects:
        if obj.kind != "Image":
            continue
        folder = context_dir(out, obj.key)
        stamp = folder / ".mlinfra-context"
        fingerprint = obj.fingerprint()
        if not (stamp.exists() and stamp.read_text() == fingerprint):
            if folder.exists():
                shutil.rmtree(folder)
            for f in obj.context:
                path = folder / f.path
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(f.content())
            stamp.write_text(fingerprint)
        folders[obj.key] = folder
    return folders


def _yaml(value: Any) -> str:
    import yaml

    return str(yaml.safe_dump(value, sort_keys=False, default_flow_style=False, width=100))


def _script(lines: list[str]) -> str:
    return "#!/bin/sh\n" + "\n".join(lines) + "\n"


def write_kubernetes(objects: list[RenderedObject], out: Path) -> list[Path]:
    manifests = out / "manifests"
    if manifests.exists():
        shutil.rmtree(manifests)
    manifests.mkdir(parents=True)
    written = []
    ordered = sorted((o for o in objects if o.kind != "Image"),
                     key=lambda o: _KIND_ORDER.index(o.kind))
    secret_lines = ["# Creates the stack's Secrets from environment variables; no value is "
                    "written here.", "set -eu"]
    for index, obj in enumerate(ordered):
        if obj.kind == "Secret":
            meta = obj.body["metadata"]
            literals = " ".join(
                f"--from-literal={key}=\"${{{value.source}:?set {value.source}}}\""
                for key, value in obj.body["stringData"].items()
                if isinstance(value, SecretValue))
            secret_lines.append(
                f"kubectl create secret generic {meta['name']} -n {meta['namespace']} "
                f"{literals} --dry-run=client -o yaml | kubectl label --local -f - "
                + " ".join(f"{k}={v}" for k, v in meta["labels"].items())
                + " -o yaml | kubectl apply -f -")
            continue
        path = manifests / f"{index:02d}-{obj.key}.yaml"
        path.write_text(_yaml(obj.body))
        written.append(path)
    secrets = out / "secrets.sh"
    secrets.write_text(_script(secret_lines))
    written.append(secrets)
    images = write_contexts(objects, out)
    (out / "images.json").write_text(json.dumps(
        {key: {"name": obj.body["name"], "context": str(images[key].relative_to(out))}
         for obj in objects if obj.kind == "Image" for key in [obj.key]}, indent=2) + "\n")
    return written


def write_docker(objects: list[RenderedObject], out: Path) -> list[Path]:
    from mlinfra.providers.manifests.docker import docker_run_args

    containers = out / "containers"
    if containers.exists():
        shutil.rmtree(containers)
    containers.mkdir(parents=True)
    images = write_contexts(objects, out)
    lines = ["# Builds the images, creates the network and starts the containers, in order.",
             "# Secret values come from the environment when this runs.", "set -eu",
             'cd "$(dirname "$0")"']
    written = []
    for obj in objects:
        if obj.kind == "Image":
            lines.append(f"docker build -t {obj.body['name']} "
                         f"{shlex.quote(str(images[obj.key].relative_to(out)))}")
    for obj in objects:
        if obj.kind == "Network":
            lines.append(f"docker network inspect {obj.body['name']} >/dev/null 2>&1 || "
                         f"docker network create {obj.body['name']}")
    for obj in objects:
        if obj.kind != "Container":
            continue
        path = containers / f"{obj.key}.json"
        path.write_text(json.dumps(redact(obj.body), indent=2) + "\n")
        written.append(path)
        args, secrets = docker_run_args(obj.body)
        assign = " ".join(f'{name}="${{{source}:?set {source}}}"'
                          for name, source in sorted(secrets.items()))
        lines.append((f"{assign} " if assign else "") + shlex.join(args))
    run = out / "run.sh"
    run.write_text(_script(lines))
    os.chmod(run, 0o755)
    written.append(run)
    return written

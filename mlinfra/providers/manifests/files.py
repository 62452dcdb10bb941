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

from mlinfra.providers.manifests import RenderedObject, SecretValue, redact, secrets_in
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


def variables(objects: list[RenderedObject]) -> list[str]:
    """Every environment variable the rendered scripts read a secret from."""
    return sorted({v.source for o in objects for v in secrets_in(o.body)})


def _jobs_in_order(objects: list[RenderedObject]) -> list[RenderedObject]:
    """The Jobs, each after the runs whose outputs it reads."""
    import graphlib

    jobs = {o.key: o for o in objects if o.kind == "Job"}
    order = graphlib.TopologicalSorter(
        {key: [d for d in o.depends_on if d in jobs] for key, o in jobs.items()})
    return [jobs[key] for key in order.static_order()]


_JOBS_SH = """\
# Runs the stack's jobs and pipeline steps one after the other, in dependency order:
# each Job is created (`kubectl create`: the API server names it run-KEY-xxxxx, so a
# run never needs the last one deleted), and the next starts once it succeeded. A failed
# Job (or one past its activeDeadlineSeconds) prints its logs and stops the script.
set -eu
cd "$(dirname "$0")"
run() {
  name=$(kubectl create -f "$1" -o name)
  echo "started $name"
  while :; do
    status=$(kubectl get -n "$2" "$name" -o jsonpath='{.status.succeeded}/{.status.failed}')
    case "$status" in
      1/*) echo "$name succeeded"; return 0 ;;
      */1) kubectl logs -n "$2" "$name" >&2 || true; echo "$name failed" >&2; exit 1 ;;
    esac
    sleep 5
  done
}
"""


_DATA_SH = """\
# Copies each datastore folder of this machine into its PersistentVolumeClaim, which
# starts empty: a short-lived pod (uid 1000, as the jobs) mounts the claim, kubectl cp
# fills it, and the pod goes. Run it after `kubectl apply -f manifests/`, before jobs.sh.
set -eu
cd "$(dirname "$0")"
load() {
  pod="load-$2"
  kubectl run -n "$1" "$pod" --image="$4" --restart=Never --overrides='{"spec": {
    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
    "containers": [{"name": "load", "image": "'"$4"'", "command": ["sleep", "3600"],
      "volumeMounts": [{"name": "data", "mountPath": "/data"}]}],
    "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "'"$2"'"}}]}}'
  kubectl wait -n "$1" --for=condition=Ready "pod/$pod" --timeout=300s
  kubectl cp "$3/." "$1/$pod:/data/"
  kubectl delete -n "$1" "pod/$pod" --wait=false
}
"""


def _data_script(objects: list[RenderedObject], folders: dict[str, Path]) -> str:
    """data.sh: `load` for each datastore whose folder is on this machine."""
    image = next((o.body["name"] for o in objects
                  if o.kind == "Image" and o.owner.startswith("environment.")), None)
    lines = [_DATA_SH]
    for obj in objects:
        if obj.kind != "PersistentVolumeClaim" or not obj.owner.startswith("datastore."):
            continue
        name = obj.owner.removeprefix("datastore.")
        folder = folders.get(name)
        if folder is None or image is None:
            lines.append(f"# {obj.owner}: no folder on this machine (or no image) to copy")
            continue
        meta = obj.body["metadata"]
        lines.append(f"load {meta['namespace']} {meta['name']} {shlex.quote(str(folder))} "
                     f"{shlex.quote(image)}")
    return "\n".join(lines)


def write_kubernetes(objects: list[RenderedObject], out: Path,
                     datastores: dict[str, Path] | None = None) -> list[Path]:
    manifests = out / "manifests"
    for folder in (manifests, out / "jobs"):
        if folder.exists():
            shutil.rmtree(folder)
    manifests.mkdir(parents=True)
    written = []
    # Jobs are not in manifests/: `kubectl apply -f manifests/` would start every step
    # of a pipeline at once. jobs.sh runs them in order.
    jobs_lines = [_JOBS_SH]
    jobs = _jobs_in_order(objects)
    if jobs:
        (out / "jobs").mkdir()
    for index, obj in enumerate(jobs):
        path = out / "jobs" / f"{index:02d}-{obj.key}.yaml"
        path.write_text(_yaml(obj.body))
        written.append(path)
        jobs_lines.append(f"run {shlex.quote(str(path.relative_to(out)))} "
                          f"{obj.body['metadata']['namespace']}")
    jobs_sh = out / "jobs.sh"
    jobs_sh.write_text(_script(jobs_lines))
    os.chmod(jobs_sh, 0o755)
    written.append(jobs_sh)
    data_sh = out / "data.sh"
    data_sh.write_text(_script([_data_script(objects, {
        name: folder for name, folder in (datastores or {}).items() if folder.is_dir()})]))
    os.chmod(data_sh, 0o755)
    written.append(data_sh)
    ordered = sorted((o for o in objects if o.kind not in ("Image", "Job")),
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
    written.append(_readme(out, objects, "kubernetes"))
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
    written.append(_readme(out, objects, "docker"))
    return written


def _readme(out: Path, objects: list[RenderedObject], platform: str) -> Path:
    """How to run what was rendered, naming every variable the scripts need."""
    needed = variables(objects)
    lines = [f"# Rendered by mlinfra ({platform})", ""]
    if needed:
        lines += ["Set these environment variables first (the scripts read them and write "
                  "them nowhere):", ""]
        lines += [f"- `{name}`" for name in needed]
        lines.append("")
    if platform == "kubernetes":
        lines += ["Then:", "",
                  "1. build and push each image of `images.json` (its `context` folder) "
                  "under its `name`;",
                  "2. `sh secrets.sh` creates the Secrets from those variables;",
                  "3. `kubectl apply -f manifests/` creates everything but the jobs;",
                  "4. `sh data.sh` copies the datastores' folders of this machine into "
                  "their PersistentVolumeClaims (which start empty);",
                  "5. `sh jobs.sh` runs the jobs and pipeline steps one after the other, "
                  "in dependency order, each as a Job of its own name."]
    else:
        lines += ["Then `sh run.sh` builds the images, creates the network and runs the "
                  "containers in order (jobs and pipeline steps to completion, one after "
                  "the other)."]
    path = out / "README.md"
    path.write_text("\n".join(lines) + "\n")
    return path

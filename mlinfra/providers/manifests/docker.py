"""The Docker objects of a stack: images with their build contexts, one network,
containers.

Workspace -> the network; Datastore -> a bind mount of its folder; Environment -> an
image; Job (or pipeline step) -> as `render` writes it, a container run to completion
with its code mounted read-only and the datastores mounted (outputs land in the default
datastore), and as apply runs it, one container per run (`run_container`) with the
run's folder, code snapshot and inputs mounted, whose outputs mlinfra collects; Endpoint
-> the mlinfra ONNX server in one container hosting all its deployments (the server
splits the traffic), each model mounted read-only, on the network, with a health
check, a restart policy and its port published on 127.0.0.1.

A container's spec is neutral data (`env`, `mounts`, `ports`...): `docker_run_args`
turns it into a `docker run` command line and the Pulumi program into a
pulumi_docker.Container, from the same fields.
"""

from __future__ import annotations

import json
import math
import re
import shlex
from decimal import Decimal
from typing import Any

from mlinfra.providers.manifests import RenderedObject, RenderError, SecretValue, labels
from mlinfra.providers.manifests.images import (
    SERVER_PORT,
    environment_context,
    image_name,
    serving_context,
)
from mlinfra.providers.manifests.inputs import KNOWN_AFTER_APPLY, StackInputs
from mlinfra.providers.manifests.workloads import (
    collect_datastore,
    compute_resources,
    datastore_mount,
    endpoint_config,
    fetched_model_path,
    job_runs,
    keys_secret,
    storage_env,
)
from mlinfra.runs.containers import ContainerRun
from mlinfra.spec.model import Config, Resource

_MEMORY_UNITS: dict[str, Decimal] = {
    "": Decimal(1), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9),
    "T": Decimal(10**12), "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30),
    "Ti": Decimal(2**40), "m": Decimal("0.001")}

HEALTH_TEST = ["CMD", "python", "-c",
               "import urllib.request, sys; sys.exit(urllib.request.urlopen("
               f"'http://127.0.0.1:{SERVER_PORT}/v2/health/ready', timeout=2).status != 200)"]


def network_name(config: Config) -> str:
    settings = config.stack.settings.get("docker") or {}
    return str(settings.get("network") or f"mlinfra-{config.name}")


def container_name(config: Config, what: str) -> str:
    return f"mlinfra-{config.name}-{config.stack.name}-{what}"


def _limits(config: Config, compute: str | None) -> dict[str, Any]:
    wanted = compute_resources(config, compute)
    out: dict[str, Any] = {}
    if "cpu" in wanted:
        text = str(wanted["cpu"])
        cpus = Decimal(text[:-1]) / 1000 if text.endswith("m") else Decimal(text)
        out["cpus"] = f"{cpus.normalize():f}"
    if "memory" in wanted:
        match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(wanted["memory"]))
        if match is None or match.group(2) not in _MEMORY_UNITS:
            raise RenderError(f"compute.{compute}: cannot read memory '{wanted['memory']}'")
        size = Decimal(match.group(1)) * _MEMORY_UNITS[match.group(2)]
        out["memory_mb"] = max(6, int(size / 2**20))  # Docker refuses less than 6 MB
    if wanted.get("gpu"):
        out["gpus"] = str(wanted["gpu"])
    return out


def _store_mounts(inputs: StackInputs, names: list[str]) -> list[dict[str, Any]]:
    mounts = []
    for name in names:
        if name not in inputs.datastores:
            raise RenderError(f"datastore.{name}: its folder is not known")
        mounts.append({"source": str(inputs.datastores[name]),
                       "target": datastore_mount(name), "read_only": False})
    return mounts


def _jobs(config: Config, inputs: StackInputs, objects: list[RenderedObject],
          env_images: dict[str, str], network: str) -> None:
    stores = sorted(config.of("Datastore"))
    for run in job_runs(config):
        job = run.job
        env_name = str(job.spec.get("environment") or "")
        if env_name not in env_images:
            raise RenderError(f"{run.owner}: jobs on docker need an environment (its image "
                              "runs the job)")
        code = (config.root / str(job.spec.get("code", "."))).resolve()
        body: dict[str, Any] = {
            "name": container_name(config, f"run-{run.key}"),
            "image": env_images[env_name], "command": ["sh", "-c", run.command],
            "working_dir": "/code", "env": dict(run.env),
            "mounts": [{"source": str(code), "target": "/code", "read_only": True},
                       *_store_mounts(inputs, stores)],
            "network": network, "run_to_completion": True,
            "labels": labels(config.name, config.stack.name, run.owner, run=run.key),
            **_limits(config, job.spec.get("compute"))}
        if run.timeout_s:
            body["timeout_s"] = int(run.timeout_s)
        objects.append(RenderedObject(f"container-run-{run.key}", run.owner, "Container",
                                      body, depends_on=(
                                          f"image-{env_name}", "network",
                                          *(f"container-run-{a}" for a in run.after))))


def run_container(config: Config, run: ContainerRun, image: str, compute: str | None
                  ) -> RenderedObject:
    """One run of a job as a container run to completion (its name carries the run's
    id, so no run ever reuses another's): the environment's image, the mounts the run
    was given, its sensitive variables as secrets. Past its timeout, `timeout` stops the
    command (exit code 124), then kills it 10 s later."""
    command = ["sh", "-c", run.command]
    if run.timeout_s:
        command = ["timeout", "-k", "10", str(max(1, math.ceil(run.timeout_s))), *command]
    owner = f"job.{run.job}"
    body: dict[str, Any] = {
        "name": container_name(config, f"run-{run.run_id}"), "image": image,
        "command": command, "working_dir": run.working_dir,
        "env": {name: SecretValue(env=name) if name in run.secret_env else value
                for name, value in sorted(run.env.items())},
        "mounts": [{"source": str(m.source), "target": m.target, "read_only": m.read_only}
                   for m in run.mounts],
        "run_to_completion": True,
        "labels": labels(config.name, config.stack.name, owner, run=run.run_id),
        **_limits(config, compute)}
    if run.timeout_s:
        body["timeout_s"] = math.ceil(run.timeout_s)
    return RenderedObject(f"container-run-{run.run_id}", owner, "Container", body)


def _endpoint(config: Config, endpoint: Resource, inputs: StackInputs, serving_image: str,
              network: str, objects: list[RenderedObject]) -> None:
    models = inputs.models[endpoint.name]
    # A model in an object-storage artifact store is fetched by the server when it
    # starts; one in a folder store is mounted read-only.
    paths = {name: fetched_model_path(name) if m.url else f"/models/{name}.onnx"
             for name, m in models.items()}
    server = endpoint_config(config, endpoint, models, paths)
    env: dict[str, str | SecretValue] = {"MLINFRA_ENDPOINT": json.dumps(server,
                                                                        sort_keys=True)}
    keys = keys_secret(endpoint)
    if keys is not None:
        env["MLINFRA_ENDPOINT_KEYS"] = keys
    remote_captures = bool(server["collect"].get("storage") is not None)
    if any(m.url for m in models.values()) or remote_captures:
        env.update(storage_env(config))
    mounts = [{"source": str(models[name].path or KNOWN_AFTER_APPLY), "target": paths[name],
               "read_only": True} for name in sorted(models) if not models[name].url]
    store = collect_datastore(config, endpoint)
    if store and not remote_captures:  # captures on object storage need no mount
        mounts += _store_mounts(inputs, [store])
    port = endpoint.spec.get("port")
    body: dict[str, Any] = {
        "name": container_name(config, endpoint.name), "image": serving_image,
        "env": env, "mounts": mounts, "network": network,
        "ports": [{"internal": SERVER_PORT, "external": int(port) if port else None,
                   "ip": "127.0.0.1"}],
        "restart": "unless-stopped",
        "healthcheck": {"test": HEALTH_TEST, "interval_s": 5, "timeout_s": 3, "retries": 3,
                        "start_period_s": 20},
        "labels": labels(config.name, config.stack.name, endpoint.address),
        **_limits(config, endpoint.spec.get("compute"))}
    objects.append(RenderedObject(f"container-{endpoint.name}", endpoint.address,
                                  "Container", body, depends_on=("image-serving", "network")))


def render(config: Config, inputs: StackInputs) -> list[RenderedObject]:
    objects: list[RenderedObject] = []
    network = network_name(config)
    objects.append(RenderedObject("network", f"workspace.{config.workspace}", "Network", {
        "name": network, "labels": labels(config.name, config.stack.name)}))
    env_images = {}
    for env in config.of("Environment").values():
        files = environment_context(config, env, inputs.locks.get(env.name))
        env_images[env.name] = image_name(config, f"{config.name}-{env.name}", files)
        objects.append(RenderedObject(f"image-{env.name}", env.address, "Image",
                                      {"name": env_images[env.name]}, context=files))
    _jobs(config, inputs, objects, env_images, network)
    endpoints = [e for e in config.of("Endpoint").values() if e.name in inputs.models]
    if endpoints:
        files = serving_context(config, inputs)
        serving = image_name(config, "serving", files)
        objects.append(RenderedObject("image-serving", "", "Image", {"name": serving},
                                      context=files))
        for endpoint in endpoints:
            _endpoint(config, endpoint, inputs, serving, network, objects)
    return objects


def docker_run_args(body: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """`docker run` arguments for a container spec, and the variables the command's own
    environment must hold: container variable -> where its secret value comes from
    (`docker run --env NAME` passes it on without writing it in the command)."""
    secrets = {}
    args = ["docker", "run", "--detach" if not body.get("run_to_completion") else "--rm",
            "--name", body["name"]]
    if body.get("network"):
        args += ["--network", body["network"]]
    for name, value in sorted(body.get("env", {}).items()):
        if isinstance(value, SecretValue):
            args += ["--env", name]
            secrets[name] = value.source
        else:
            args += ["--env", f"{name}={value}"]
    for mount in body.get("mounts", []):
        spec = f"type=bind,source={mount['source']},target={mount['target']}"
        args += ["--mount", spec + (",readonly" if mount.get("read_only") else "")]
    for port in body.get("ports", []):
        external = port.get("external") or ""
        args += ["--publish", f"{port.get('ip', '127.0.0.1')}:{external}:{port['internal']}"]
    if body.get("restart"):
        args += ["--restart", body["restart"]]
    health = body.get("healthcheck")
    if health:
        args += ["--health-cmd", shlex.join(health["test"][1:]),
                 "--health-interval", f"{health['interval_s']}s",
                 "--health-timeout", f"{health['timeout_s']}s",
                 "--health-retries", str(health["retries"]),
                 "--health-start-period", f"{health['start_period_s']}s"]
    for key, value in sorted(body.get("labels", {}).items()):
        args += ["--label", f"{key}={value}"]
    if body.get("cpus"):
        args += ["--cpus", body["cpus"]]
    if body.get("memory_mb"):
        args += ["--memory", f"{body['memory_mb']}m"]
    if body.get("gpus"):
        args += ["--gpus", body["gpus"]]
    if body.get("working_dir"):
        args += ["--workdir", body["working_dir"]]
    args.append(body["image"])
    args += body.get("command", [])
    return args, secrets


def scoring_container(config: Config, score: str, job_id: str, folder: str, image: str,
                      settings: dict[str, Any], compute: str | None) -> RenderedObject:
    """A staged scoring (mlinfra.batch.shard) as one container run to completion: its
    job's folder mounted, every shard scored in it, one session on the container's
    cores; the scorer on this machine then writes the output from the shards."""
    owner = f"batchscore.{score}"
    body: dict[str, Any] = {
        "name": container_name(config, f"score-{job_id}"), "image": image,
        "command": ["python", "-m", "mlinfra.batch.shard", "/mlinfra/job", "--all"],
        "mounts": [{"source": folder, "target": "/mlinfra/job", "read_only": False}],
        "env": {}, "run_to_completion": True,
        "labels": labels(config.name, config.stack.name, owner, run=job_id),
        **_limits(config, compute)}
    return RenderedObject(f"container-score-{job_id}", owner, "Container", body)

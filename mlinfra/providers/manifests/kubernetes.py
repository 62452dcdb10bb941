"""The Kubernetes objects of a stack, as manifests.

Workspace -> Namespace and a ResourceQuota per Compute; Datastore -> PersistentVolumeClaim;
the `${secret.X}` values -> one Secret; Environment -> an image; Job (or pipeline step)
-> batch/v1 Job (as `render` writes it: its code in an image of its own, outputs in the
default datastore; as apply runs it: one Job per run, `run_job`, reading and writing
the run's folder in the stack's artifacts folder through a PersistentVolumeClaim);
Endpoint -> per deployment a ConfigMap (its config), a ConfigMap with its model, a
Deployment, a Service and a HorizontalPodAutoscaler, plus a Secret with its keys and one
Gateway API HTTPRoute whose backend weights carry `traffic`. Schedules and webhooks ->
the agent's image and one-replica Deployment (`agent.py`), with a state on PostgreSQL.
"""

from __future__ import annotations

import base64
import contextlib
import json
import math
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

from mlinfra.monitoring.captures import object_captures
from mlinfra.providers.manifests import (
    LABEL_PREFIX,
    RenderedObject,
    RenderError,
    SecretValue,
    labels,
)
from mlinfra.providers.manifests.agent import render_agent
from mlinfra.providers.manifests.images import (
    PROJECT_DIR,
    SERVER_PORT,
    environment_context,
    fetch_context,
    image_name,
    job_code_context,
    monitor_context,
    serving_context,
)
from mlinfra.providers.manifests.inputs import KNOWN_AFTER_APPLY, ModelFile, StackInputs
from mlinfra.providers.manifests.workloads import (
    JobRun,
    collect_datastore,
    compute_resources,
    datastore_env,
    datastore_mount,
    endpoint_config,
    fetched_model_path,
    job_runs,
    keys_secret,
    object_datastore,
    storage_env,
)
from mlinfra.runs.containers import RUN_DIR, ContainerRun
from mlinfra.spec.model import INTERPOLATION, Config, Resource, duration_s

GATEWAY_API = "gateway.networking.k8s.io/v1"
# A ConfigMap holds at most 1 MiB; base64 makes a model a third larger.
MAX_MODEL_BYTES = 700_000
DATASTORE_SIZE = "10Gi"
SECRETS = "mlinfra-secrets"
JOB_TTL_S = 86400
# Jobs run as this user and group (the images' files are readable by all), and the
# datastores' volumes are given its group, so a run can write its outputs there.
NON_ROOT = {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000}
# What a serving pod requests when its Compute names no resources: the HPA scales on
# CPU use as a share of the request, and with none it never scales.
DEFAULT_SERVING_CPU = "250m"
POD_CAPTURES = "/tmp/mlinfra/captures"


def namespace(config: Config) -> str:
    settings = config.stack.settings.get("kubernetes") or {}
    return str(settings.get("namespace") or config.workspace)


def _meta(config: Config, name: str, address: str, namespaced: bool = True,
          **extra: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name,
                            "labels": labels(config.name, config.stack.name, address, **extra)}
    if namespaced:
        meta["namespace"] = namespace(config)
    return meta


def _quantity_times(quantity: Any, n: int) -> str:
    match = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]*)", str(quantity))
    if match is None:
        raise RenderError(f"cannot read the quantity '{quantity}'")
    value = Decimal(match.group(1)) * n
    return f"{value.normalize():f}{match.group(2)}"


def _resources(config: Config, compute: str | None) -> dict[str, Any]:
    wanted = compute_resources(config, compute)
    amounts: dict[str, str] = {}
    if "cpu" in wanted:
        amounts["cpu"] = str(wanted["cpu"])
    if "memory" in wanted:
        amounts["memory"] = str(wanted["memory"])
    out: dict[str, Any] = {}
    if amounts:
        out = {"requests": dict(amounts), "limits": dict(amounts)}
    if wanted.get("gpu"):
        out.setdefault("limits", {})["nvidia.com/gpu"] = str(wanted["gpu"])
    return out


def serving_resources(config: Config, compute: str | None) -> dict[str, Any]:
    """A serving pod's requests and limits: its Compute's, with a CPU request of
    DEFAULT_SERVING_CPU when the Compute names none (the HPA needs one to scale)."""
    resources = _resources(config, compute)
    requests = resources.setdefault("requests", {})
    requests.setdefault("cpu", DEFAULT_SERVING_CPU)
    return resources


def notes(config: Config, inputs: StackInputs) -> list[str]:
    """What a person applying the rendered objects should know."""
    out = []
    for endpoint in config.of("Endpoint").values():
        if endpoint.name not in inputs.models:
            continue
        compute = str(endpoint.spec.get("compute") or "")
        if "cpu" not in compute_resources(config, compute):
            out.append(f"{endpoint.address}: compute.{compute or '(none)'} names no cpu in "
                       f"resources:, so its serving pods request cpu {DEFAULT_SERVING_CPU} "
                       "(the HorizontalPodAutoscaler scales on CPU use against the request); "
                       "set resources: {cpu: ...} on the Compute to choose")
    return out


def _env(variables: dict[str, str | SecretValue]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for name, value in variables.items():
        if isinstance(value, SecretValue):
            out.append({"name": name, "valueFrom": {"secretKeyRef": {
                "name": SECRETS, "key": value.env}}})
        else:
            out.append({"name": name, "value": value})
    return out


def _claim(name: str) -> str:
    return f"datastore-{name}"


def _datastore_volumes(config: Config, names: list[str]) -> tuple[list[Any], list[Any]]:
    volumes, mounts = [], []
    for name in names:
        volumes.append({"name": _claim(name),
                        "persistentVolumeClaim": {"claimName": _claim(name)}})
        mounts.append({"name": _claim(name), "mountPath": datastore_mount(name)})
    return volumes, mounts


def _workspace(config: Config, objects: list[RenderedObject]) -> None:
    ws = f"workspace.{config.workspace}"
    ns = namespace(config)
    objects.append(RenderedObject(f"namespace-{ns}", ws, "Namespace", {
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": _meta(config, ns, ws, namespaced=False)}))
    for compute in config.of("Compute").values():
        wanted = compute_resources(config, compute.name)
        # Room for every replica the HPA may start, one more for a rolling update's
        # surge pod, and the jobs that run at once (max_concurrency).
        most = (int(compute.spec.get("max_instances", 4)) + 1
                + int(compute.spec.get("max_concurrency", 2)))
        hard = {}
        for field, key in (("cpu", "cpu"), ("memory", "memory")):
            if field in wanted:
                total = _quantity_times(wanted[field], most)
                hard[f"requests.{key}"] = total
                hard[f"limits.{key}"] = total
        if wanted.get("gpu"):
            hard["requests.nvidia.com/gpu"] = str(int(wanted["gpu"]) * most)
        if not hard:
            continue
        objects.append(RenderedObject(f"quota-{compute.name}", compute.address,
                                      "ResourceQuota", {
            "apiVersion": "v1", "kind": "ResourceQuota",
            "metadata": _meta(config, f"compute-{compute.name}", compute.address),
            "spec": {"hard": hard}}, depends_on=(f"namespace-{ns}",)))


def _datastores(config: Config, objects: list[RenderedObject]) -> None:
    settings = config.stack.settings.get("kubernetes") or {}
    for store in config.of("Datastore").values():
        spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                "resources": {"requests": {"storage": DATASTORE_SIZE}}}
        if settings.get("storage_class"):
            spec["storageClassName"] = str(settings["storage_class"])
        objects.append(RenderedObject(f"pvc-{store.name}", store.address,
                                      "PersistentVolumeClaim", {
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": _meta(config, _claim(store.name), store.address), "spec": spec},
            depends_on=(f"namespace-{namespace(config)}",)))


def _secrets(config: Config, objects: list[RenderedObject],
             variables: list[SecretValue]) -> None:
    names = sorted({v.env for v in variables})
    if not names:
        return
    objects.append(RenderedObject(f"secret-{SECRETS}", "", "Secret", {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
        "metadata": _meta(config, SECRETS, ""),
        "stringData": {name: SecretValue(env=name) for name in names}},
        depends_on=(f"namespace-{namespace(config)}",)))


def _images(config: Config, objects: list[RenderedObject], inputs: StackInputs
            ) -> dict[str, str]:
    """Environment name -> its image; one Image object each."""
    out = {}
    for env in config.of("Environment").values():
        files = environment_context(config, env, inputs.locks.get(env.name))
        out[env.name] = image_name(config, f"{config.name}-{env.name}", files)
        objects.append(RenderedObject(f"image-{env.name}", env.address, "Image",
                                      {"name": out[env.name]}, context=files))
    return out


def _jobs(config: Config, objects: list[RenderedObject], env_images: dict[str, str],
          secrets: list[SecretValue]) -> None:
    ns_key = f"namespace-{namespace(config)}"
    stores = sorted(config.of("Datastore"))
    for run in job_runs(config):
        job = run.job
        env_name = str(job.spec.get("environment") or "")
        if env_name not in env_images:
            raise RenderError(f"{run.owner}: jobs on kubernetes need an environment (its "
                              "image runs the job)")
        files = job_code_context(config, job, env_images[env_name])
        image = image_name(config, f"{config.name}-job-{job.name}", files)
        image_key = f"image-job-{job.name}"
        if not any(o.key == image_key for o in objects):
            objects.append(RenderedObject(image_key, job.address, "Image", {"name": image},
                                          depends_on=(f"image-{env_name}",), context=files))
        secrets += [v for v in run.env.values() if isinstance(v, SecretValue)]
        remote = sorted({store for store, _ in run.data if object_datastore(config, store)})
        volumes, mounts = _datastore_volumes(config, [s for s in stores if s not in remote])
        init = _fetch_data(config, objects, run, remote, volumes, mounts, secrets)
        container: dict[str, Any] = {"name": "run", "image": image,
                                     "command": ["sh", "-c", run.command],
                                     "workingDir": "/code", "env": _env(run.env),
                                     "volumeMounts": mounts}
        resources = _resources(config, job.spec.get("compute"))
        if resources:
            container["resources"] = resources
        container["securityContext"] = {"allowPrivilegeEscalation": False}
        # A rendered Job is created by jobs.sh, in order (`kubectl create`, so the API
        # server gives each run a name of its own from generateName) and removed a day
        # after it finished.
        spec: dict[str, Any] = {
            "backoffLimit": 0, "ttlSecondsAfterFinished": JOB_TTL_S, "template": {
                "metadata": {"labels": labels(config.name, config.stack.name, run.owner,
                                              run=run.key)},
                "spec": {"restartPolicy": "Never", "containers": [container],
                         "volumes": volumes, "securityContext": NON_ROOT}}}
        if init is not None:
            spec["template"]["spec"]["initContainers"] = [init]
        if run.timeout_s:
            spec["activeDeadlineSeconds"] = max(1, int(run.timeout_s))
        depends = [ns_key, image_key, *(f"pvc-{s}" for s in stores if s not in remote),
                   *(f"job-{a}" for a in run.after)]
        if init is not None:
            depends.append("image-fetch")
        if any(isinstance(v, SecretValue) for v in run.env.values()) or (
                init is not None and any("valueFrom" in e for e in init["env"])):
            depends.append(f"secret-{SECRETS}")
        meta = _meta(config, "", run.owner, run=run.key)
        del meta["name"]
        meta["generateName"] = f"run-{run.key}-"[:58]
        objects.append(RenderedObject(f"job-{run.key}", run.owner, "Job", {
            "apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec},
            depends_on=tuple(depends)))


def _fetch_data(config: Config, objects: list[RenderedObject], run: JobRun,
                remote: list[str], volumes: list[Any], mounts: list[Any],
                secrets: list[SecretValue]) -> dict[str, Any] | None:
    """A Job whose Data inputs are on an object-storage Datastore: an emptyDir where the
    datastore's claim would be, filled by an init container that downloads each input
    with the datastore's credentials (the Secret's variables the README names)."""
    if not remote:
        return None
    from mlinfra.spec.storage import SCHEMES

    env: dict[str, str | SecretValue] = {}
    args: list[str] = []
    packages = set()
    for name in remote:
        store = object_datastore(config, name)
        assert store is not None
        base = str(store.spec["path"]).rstrip("/")
        packages.add(SCHEMES[base.split("://", 1)[0]][1])
        env.update(datastore_env(config, store))
        volumes.append({"name": _claim(name), "emptyDir": {}})
        mounts.append({"name": _claim(name), "mountPath": datastore_mount(name)})
        for store_name, path in run.data:
            if store_name == name:
                args += [f"{base}/{path}", f"{datastore_mount(name)}/{path}"]
    secrets += [v for v in env.values() if isinstance(v, SecretValue)]
    if not any(o.key == "image-fetch" for o in objects):
        files = fetch_context(config, sorted(packages))
        objects.append(RenderedObject("image-fetch", "", "Image", {
            "name": image_name(config, "fetch", files)}, context=files))
    image = next(o.body["name"] for o in objects if o.key == "image-fetch")
    return {"name": "fetch-data", "image": image, "args": args, "env": _env(env),
            "volumeMounts": list(mounts),
            "securityContext": {"allowPrivilegeEscalation": False}}


def run_name(run_id: str) -> str:
    """A run's Job name: at most 63 characters (a Job's pods carry it in a label), the
    run id's random end kept."""
    return ("run-" + run_id[-59:].lstrip("-"))[:63]


def run_job(config: Config, run: ContainerRun, image: str, compute: str | None,
            claim: str | None, artifacts: Path | None) -> list[RenderedObject]:
    """One run of a job as a batch/v1 Job, and a Secret with its sensitive variables.
    Its mounts are subPaths of `claim`, the PersistentVolumeClaim holding the stack's
    artifacts folder (`artifacts` on this machine), so what the pod writes in the run's
    folder is where mlinfra collects it. Its output goes to the run's output.log; Pulumi
    waits for the Job to finish (pulumi.com/timeoutSeconds past activeDeadlineSeconds)."""
    owner, name = f"job.{run.job}", run_name(run.run_id)
    mounts = []
    for mount in run.mounts:
        assert artifacts is not None and claim is not None  # a run with mounts has both
        try:
            sub = mount.source.relative_to(artifacts)
        except ValueError:
            raise RenderError(f"{owner}: {mount.source} is outside the stack's artifacts "
                              f"folder {artifacts}, the only folder a Job reaches (through "
                              f"the claim {claim})") from None
        mounts.append({"name": "artifacts", "mountPath": mount.target,
                       "subPath": sub.as_posix(), "readOnly": mount.read_only})
    env: list[dict[str, Any]] = []
    for variable, value in sorted(run.env.items()):
        if variable in run.secret_env:
            env.append({"name": variable, "valueFrom": {"secretKeyRef": {
                "name": name, "key": variable}}})
        else:
            env.append({"name": variable, "value": value})
    container: dict[str, Any] = {
        "name": "run", "image": image,
        "command": ["sh", "-c", ("" if run.mounts else f"mkdir -p {RUN_DIR}\n")
                    + f"exec >{RUN_DIR}/output.log 2>&1\n{run.command}"],
        "workingDir": run.working_dir, "env": env, "volumeMounts": mounts}
    resources = _resources(config, compute)
    if resources:
        container["resources"] = resources
    run_labels = labels(config.name, config.stack.name, owner, run=run.run_id)
    pod: dict[str, Any] = {"restartPolicy": "Never", "containers": [container]}
    if claim:
        pod["volumes"] = [{"name": "artifacts", "persistentVolumeClaim": {"claimName": claim}}]
    else:
        # Through the artifact store: the run's files land in a volume of the pod's own,
        # which its non-root user owns (fsGroup), so the run needs no root.
        pod["volumes"] = [{"name": "run", "emptyDir": {}}]
        pod["securityContext"] = NON_ROOT
        container["volumeMounts"] = [{"name": "run", "mountPath": "/mlinfra"}]
        container["securityContext"] = {"allowPrivilegeEscalation": False}
    spec: dict[str, Any] = {"backoffLimit": 0, "template": {
        "metadata": {"labels": run_labels}, "spec": pod}}
    wait_s = 24 * 3600
    if run.timeout_s:
        spec["activeDeadlineSeconds"] = max(1, math.ceil(run.timeout_s))
        wait_s = spec["activeDeadlineSeconds"] + 300
    meta = _meta(config, name, owner, run=run.run_id)
    meta["annotations"] = {"pulumi.com/timeoutSeconds": str(wait_s)}
    objects = []
    if run.secret_env:
        objects.append(RenderedObject(f"secret-{name}", owner, "Secret", {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(config, name, owner, run=run.run_id),
            "stringData": {v: SecretValue(env=v) for v in sorted(run.secret_env)}}))
    objects.append(RenderedObject(f"job-{name}", owner, "Job", {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec},
        depends_on=tuple(o.key for o in objects)))
    return objects


def _endpoint(config: Config, endpoint: Resource, inputs: StackInputs, serving_image: str,
              objects: list[RenderedObject]) -> None:
    address, ns_key = endpoint.address, f"namespace-{namespace(config)}"
    models = inputs.models[endpoint.name]
    compute = config.get("Compute", str(endpoint.spec.get("compute") or ""))
    fewest = int(compute.spec.get("min_instances", 0)) if compute else 0
    most = int(compute.spec.get("max_instances", 4)) if compute else 4
    keys = keys_secret(endpoint)
    common = [ns_key, "image-serving"]
    if keys is not None:
        keys_name = f"{endpoint.name}-keys"
        objects.append(RenderedObject(f"secret-{keys_name}", address, "Secret", {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": _meta(config, keys_name, address),
            "stringData": {"keys": keys}}, depends_on=(ns_key,)))
        common.append(f"secret-{keys_name}")
    storage = storage_env(config)
    capture_store = collect_datastore(config, endpoint)
    monitored = any(m.spec.get("endpoint") == endpoint.name
                    for m in config.of("Monitor").values())
    backends = []
    for deployment in endpoint.spec["deployments"]:
        name = deployment["name"]
        model = models[name]
        full = f"{endpoint.name}-{name}"
        extra = {"deployment": name}
        fetched = model.url is not None
        path = fetched_model_path(name) if fetched else f"/models/{name}/model.onnx"
        config_json = endpoint_config(config, endpoint, models, {name: path}, only=name,
                                      captures=None if monitored else POD_CAPTURES)
        objects.append(RenderedObject(f"configmap-{full}", address, "ConfigMap", {
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": _meta(config, f"{full}-config", address, **extra),
            "data": {"endpoint.json": json.dumps(config_json, indent=2, sort_keys=True)}},
            depends_on=(ns_key,)))
        if not fetched:
            objects.append(_model_configmap(config, address, full, model, extra, name))
        selector = labels(config.name, config.stack.name, address, **extra)
        env: list[dict[str, Any]] = []
        if keys is not None:
            env.append({"name": "MLINFRA_ENDPOINT_KEYS", "valueFrom": {"secretKeyRef": {
                "name": f"{endpoint.name}-keys", "key": "keys"}}})
        # NOTE: a fetched model lands in /tmp (an emptyDir of the pod): each pod reads it
        # from the artifact store when it starts, whatever its size.
        volumes: list[dict[str, Any]] = [
            {"name": "config", "configMap": {"name": f"{full}-config"}},
            {"name": "tmp", "emptyDir": {}}]
        mounts: list[dict[str, Any]] = [
            {"name": "config", "mountPath": "/etc/mlinfra", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"}]
        depends = [*common, f"configmap-{full}"]
        remote_captures = config_json["collect"].get("storage") is not None
        if fetched or remote_captures:
            env += _env(storage)
            if any(isinstance(v, SecretValue) for v in storage.values()):
                depends.append(f"secret-{SECRETS}")
        else:
            volumes.insert(1, {"name": "model", "configMap": {"name": f"{full}-model"}})
            mounts.insert(1, {"name": "model", "mountPath": f"/models/{name}",
                              "readOnly": True})
            depends.append(f"configmap-{full}-model")
        # NOTE: no datastore volume unless a Monitor reads the captures: a ReadWriteOnce
        # claim cannot follow replicas the HPA places on other nodes. Otherwise captures
        # are written inside the pod (its /tmp), or to the object-storage artifact store.
        if monitored and capture_store and not remote_captures:
            more_volumes, more_mounts = _datastore_volumes(config, [capture_store])
            volumes += more_volumes
            mounts += more_mounts
            depends.append(f"pvc-{capture_store}")
        probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"},
                 "periodSeconds": 5, "failureThreshold": 3}
        container: dict[str, Any] = {
            "name": "server", "image": serving_image,
            "ports": [{"name": "http", "containerPort": SERVER_PORT}],
            "env": env, "volumeMounts": mounts,
            "readinessProbe": probe,
            "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"},
                              "periodSeconds": 10, "failureThreshold": 3,
                              "initialDelaySeconds": 5},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 65534,
                                "allowPrivilegeEscalation": False}}
        container["resources"] = serving_resources(config, endpoint.spec.get("compute"))
        # Replicas start at the Compute's fewest (one at least); the HPA moves them
        # between its fewest and most.
        replicas = max(1, fewest)
        # The pod template changes with its config, so a new config rolls the pods.
        annotations = {"mlinfra.dev/config-sha256": _sha(config_json)}
        objects.append(RenderedObject(f"deployment-{full}", address, "Deployment", {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": _meta(config, full, address, **extra),
            "spec": {"replicas": replicas, "selector": {"matchLabels": selector},
                     "template": {"metadata": {"labels": selector,
                                               "annotations": annotations},
                                  "spec": {"containers": [container], "volumes": volumes}}}},
            depends_on=tuple(depends)))
        objects.append(RenderedObject(f"service-{full}", address, "Service", {
            "apiVersion": "v1", "kind": "Service",
            "metadata": _meta(config, full, address, **extra),
            "spec": {"selector": selector, "ports": [{"name": "http", "port": 80,
                                                      "targetPort": "http"}]}},
            depends_on=(ns_key,)))
        objects.append(RenderedObject(f"hpa-{full}", address, "HorizontalPodAutoscaler", {
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _meta(config, full, address, **extra),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                        "name": full},
                     "minReplicas": replicas,
                     "maxReplicas": max(1, fewest, most),
                     "metrics": [{"type": "Resource", "resource": {
                         "name": "cpu", "target": {"type": "Utilization",
                                                   "averageUtilization": 70}}}]}},
            depends_on=(f"deployment-{full}",)))
        backends.append((name, full))
    objects.append(_route(config, endpoint, backends))


def _model_configmap(config: Config, address: str, full: str, model: ModelFile,
                     extra: dict[str, str], name: str) -> RenderedObject:
    """A model carried in a ConfigMap (artifacts in a folder, not object storage): at
    most MAX_MODEL_BYTES. A version known only after apply is shown as such."""
    ns_key = f"namespace-{namespace(config)}"
    meta = _meta(config, f"{full}-model", address, True, **extra)
    if model.path is None:
        return RenderedObject(f"configmap-{full}-model", address, "ConfigMap", {
            "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
            "data": {"model.onnx": KNOWN_AFTER_APPLY}}, depends_on=(ns_key,))
    size = model.path.stat().st_size
    if size > MAX_MODEL_BYTES:
        raise RenderError(f"{address}: deployment {name}: model {model.ref} is {size} "
                          f"bytes; with artifacts in a folder a model travels to the pods "
                          f"in a ConfigMap, which holds at most {MAX_MODEL_BYTES} bytes of "
                          "model: set the stack's artifacts: to object storage "
                          "(s3://BUCKET/PREFIX) and the pods fetch it when they start")
    meta["labels"][LABEL_PREFIX + "model"] = model.ref.replace(":", "-")
    return RenderedObject(f"configmap-{full}-model", address, "ConfigMap", {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
        "binaryData": {"model.onnx": base64.b64encode(model.path.read_bytes()).decode()}},
        depends_on=(ns_key,))


def _route(config: Config, endpoint: Resource, backends: list[tuple[str, str]]
           ) -> RenderedObject:
    """Requests to /endpoints/NAME/... reach the server as /...: split by `traffic`,
    or to one deployment when the `mlinfra-deployment` header names it."""
    settings = config.stack.settings.get("kubernetes") or {}
    prefix = f"/endpoints/{endpoint.name}"
    rewrite = [{"type": "URLRewrite", "urlRewrite": {
        "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/"}}}]
    traffic = endpoint.spec.get("traffic") or {}
    rules: list[dict[str, Any]] = []
    for name, service in backends:
        rules.append({"matches": [{"path": {"type": "PathPrefix", "value": prefix},
                                   "headers": [{"type": "Exact", "name": "mlinfra-deployment",
                                                "value": name}]}],
                      "filters": rewrite,
                      "backendRefs": [{"name": service, "port": 80}]})
    filters: list[dict[str, Any]] = list(rewrite)
    for name, share in sorted((endpoint.spec.get("mirror") or {}).items()):
        if share:
            service = dict(backends)[name]
            filters.append({"type": "RequestMirror", "requestMirror": {
                "backendRef": {"name": service, "port": 80}, "percent": int(share)}})
    rules.append({"matches": [{"path": {"type": "PathPrefix", "value": prefix}}],
                  "filters": filters,
                  "backendRefs": [{"name": service, "port": 80,
                                   "weight": int(traffic.get(name, 0))}
                                  for name, service in backends]})
    return RenderedObject(f"httproute-{endpoint.name}", endpoint.address, "HTTPRoute", {
        "apiVersion": GATEWAY_API, "kind": "HTTPRoute",
        "metadata": _meta(config, endpoint.name, endpoint.address),
        "spec": {"parentRefs": [{"name": str(settings.get("gateway") or "mlinfra-gateway")}],
                 "rules": rules}},
        depends_on=tuple(f"service-{service}" for _, service in backends))


def monitor_schedule(monitor: Resource) -> str:
    """When the CronJob runs: the Monitor's `schedule`, else once a window (a few minutes
    after it ends), else hourly."""
    if monitor.spec.get("schedule"):
        return str(monitor.spec["schedule"])
    seconds = duration_s(monitor.spec.get("window", "1h")) if "rows" not in monitor.spec \
        else None
    if seconds is not None and seconds < 3600 and 3600 % seconds == 0 and seconds >= 60:
        return f"*/{int(seconds // 60)} * * * *"
    if seconds is not None and seconds >= 86400:
        return "5 0 * * *"
    return "5 * * * *"


def _monitors(config: Config, objects: list[RenderedObject], inputs: StackInputs,
              secrets: list[SecretValue]) -> None:
    """Each Monitor of an endpoint: a CronJob running `mlinfra monitor run NAME` where
    the captures are (the collect datastore's claim, mounted as on the servers). It
    records its windows in the stack's state, so that state must be one the cluster
    reaches (postgresql://...); on a SQLite state the CronJob is left out, saying why."""
    from mlinfra.state.backends import is_url

    monitors = [m for m in config.of("Monitor").values() if m.spec.get("endpoint")]
    if not monitors:
        return
    if not is_url(config.stack.state or ""):
        for monitor in monitors:
            inputs.unresolved[monitor.address] = (
                "its CronJob records windows in the stack's state, which the cluster "
                "cannot reach on this machine's SQLite file: give the stack a state: "
                "postgresql://... (run `mlinfra monitor run` here meanwhile)")
        return
    files = monitor_context(config)
    image = image_name(config, f"{config.name}-monitor", files)
    objects.append(RenderedObject("image-monitor", "", "Image", {"name": image},
                                  context=files))
    state_secrets = [SecretValue(env=m.group(2)[1:]) for m in
                     INTERPOLATION.finditer(str(config.stack.state))
                     if m.group(1) == "secret"]
    secrets += state_secrets
    stack_file = config.stack.name
    if config.stack.file:
        with contextlib.suppress(ValueError):  # a stack file outside the project: by name
            rel = Path(config.stack.file).resolve().relative_to(config.root.resolve())
            stack_file = f"{PROJECT_DIR}/{rel.as_posix()}"
    for monitor in monitors:
        endpoint = config.get("Endpoint", str(monitor.spec["endpoint"]))
        store = collect_datastore(config, endpoint) if endpoint is not None else None
        if store is None:
            continue  # validate refuses a monitor of an endpoint without collect:
        args = ["monitor", "run", monitor.name, "-C", PROJECT_DIR, "-s", stack_file]
        monitor_env: dict[str, str | SecretValue] = {s.env: s for s in state_secrets}
        depends = [f"namespace-{namespace(config)}", "image-monitor"]
        if object_captures(config) is not None:
            # the captures are in the object-storage artifact store: no claim
            volumes: list[dict[str, Any]] = []
            mounts: list[dict[str, Any]] = []
            monitor_env.update(storage_env(config))
        else:
            volumes, mounts = _datastore_volumes(config, [store])
            args += ["--captures", datastore_mount(store)]
            depends.append(f"pvc-{store}")
        container: dict[str, Any] = {
            "name": "monitor", "image": image, "args": args,
            "env": _env(monitor_env), "volumeMounts": mounts}
        if any(isinstance(v, SecretValue) for v in monitor_env.values()):
            depends.append(f"secret-{SECRETS}")
        objects.append(RenderedObject(f"cronjob-{monitor.name}", monitor.address, "CronJob", {
            "apiVersion": "batch/v1", "kind": "CronJob",
            "metadata": _meta(config, f"monitor-{monitor.name}", monitor.address),
            "spec": {"schedule": monitor_schedule(monitor), "concurrencyPolicy": "Forbid",
                     "successfulJobsHistoryLimit": 3, "failedJobsHistoryLimit": 3,
                     "jobTemplate": {"spec": {"backoffLimit": 0, "template": {
                         "metadata": {"labels": labels(config.name, config.stack.name,
                                                       monitor.address)},
                         "spec": {"restartPolicy": "Never", "containers": [container],
                                  "volumes": volumes}}}}}},
            depends_on=tuple(depends)))


def _sha(value: Any) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def render(config: Config, inputs: StackInputs) -> list[RenderedObject]:
    """Every object of the stack, dependencies first within each resource."""
    objects: list[RenderedObject] = []
    _workspace(config, objects)
    _datastores(config, objects)
    env_images = _images(config, objects, inputs)
    secrets: list[SecretValue] = []
    _jobs(config, objects, env_images, secrets)
    render_agent(config, objects, namespace(config), secrets, SECRETS)
    _monitors(config, objects, inputs, secrets)
    endpoints = [e for e in config.of("Endpoint").values() if e.name in inputs.models]
    remote_captures = object_captures(config) is not None and (
        any(collect_datastore(config, e) for e in endpoints)
        or any(m.spec.get("endpoint") for m in config.of("Monitor").values()))
    if remote_captures or any(m.url for e in endpoints for m in inputs.models[e.name].values()):
        secrets += [v for v in storage_env(config).values() if isinstance(v, SecretValue)]
    _secrets(config, objects, secrets)
    if endpoints:
        files = serving_context(config, inputs)
        objects.append(RenderedObject("image-serving", "", "Image", {
            "name": image_name(config, "serving", files)}, context=files))
        serving = objects[-1].body["name"]
        for endpoint in endpoints:
            _endpoint(config, endpoint, inputs, serving, objects)
    return objects


SCORING_DIR = "/mlinfra/job"


def scoring_job(config: Config, score: str, job_id: str, folder: Path, image: str,
                shards: int, settings: dict[str, Any], compute: str | None, claim: str,
                artifacts: Path) -> RenderedObject:
    """A staged scoring (mlinfra.batch.shard) as an Indexed Job: pod N scores shard N
    (`completions` = the shards), `max_concurrency` pods at once, each shard retried
    `retries` times on its own (`backoffLimitPerIndex`), and past the error threshold
    (in whole mini-batches) the Job stops (`maxFailedIndexes`). The job's folder is a
    subPath of `claim`, the PersistentVolumeClaim holding the stack's artifacts."""
    owner = f"batchscore.{score}"
    try:
        sub = folder.relative_to(artifacts)
    except ValueError:
        raise RenderError(f"{owner}: {folder} is outside the stack's artifacts folder "
                          f"{artifacts}, the only folder a Job reaches (through the claim "
                          f"{claim})") from None
    container: dict[str, Any] = {
        "name": "score", "image": image,
        "command": ["python", "-m", "mlinfra.batch.shard", SCORING_DIR],
        "volumeMounts": [{"name": "artifacts", "mountPath": SCORING_DIR,
                          "subPath": sub.as_posix()}]}
    resources = _resources(config, compute)
    if resources:
        container["resources"] = resources
    name = ("score-" + job_id)[:63]
    spec: dict[str, Any] = {
        "completionMode": "Indexed", "completions": max(1, shards),
        "parallelism": int(settings.get("max_concurrency", 2)),
        "backoffLimitPerIndex": int(settings.get("retries", 3)),
        "template": {
            "metadata": {"labels": labels(config.name, config.stack.name, owner,
                                          run=job_id)},
            "spec": {"restartPolicy": "Never", "containers": [container],
                     "volumes": [{"name": "artifacts",
                                  "persistentVolumeClaim": {"claimName": claim}}]}}}
    threshold = int(settings.get("error_threshold", 0))
    if threshold != -1:
        # NOTE: Kubernetes refuses a Job whose maxFailedIndexes passes its completions
        # or 100,000 (a rule of its API server, in no schema), as a threshold of more
        # rows than the input has would give
        spec["maxFailedIndexes"] = min(
            threshold // int(settings.get("mini_batch_size", 10000)), spec["completions"],
            100_000)
    meta = _meta(config, name, owner, run=job_id)
    timeout = float(settings.get("timeout_s", 600))
    waves = math.ceil(max(1, shards) / spec["parallelism"]) * (spec["backoffLimitPerIndex"] + 1)
    meta["annotations"] = {"pulumi.com/timeoutSeconds": str(math.ceil(timeout * waves))}
    return RenderedObject(f"job-{name}", owner, "Job", {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec})

"""What docker and kubernetes run, whatever the platform: the job runs (a job, or one
step of a pipeline) with their command filled in for paths inside the container, the
endpoint servers' configs, each resource's environment variables (secrets as
`SecretValue`) and its compute's resources.

Inside a container every datastore is mounted at /mnt/datastores/NAME; a run writes
its outputs to runs/RUN/ in the default datastore, where a later step reads them.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

from mlinfra.graph import default_datastore
from mlinfra.monitoring.captures import object_captures, retention
from mlinfra.providers.manifests import RenderError, SecretValue
from mlinfra.providers.manifests.inputs import ModelFile
from mlinfra.spec.model import (
    INTERPOLATION,
    OUTPUT_REF,
    Config,
    Ref,
    Resource,
    duration_in,
    duration_s,
)

DATASTORES = "/mnt/datastores"
STATUS_DIR = "/tmp/mlinfra/status"


def datastore_mount(name: str) -> str:
    return f"{DATASTORES}/{name}"


@dataclass(slots=True, init=False)
class JobRun:
    """One container run to completion: a job, or a pipeline's step (`key` is the job's
    name or PIPELINE-STEP). `after` names the runs whose outputs it reads."""

    key: str
    owner: str
    job: Resource
    command: str
    after: tuple[str, ...]
    env: dict[str, str | SecretValue]
    timeout_s: float | None
    data: tuple[tuple[str, str], ...]  # (datastore, path in it) of each Data input

    def __init__(self, key: str, owner: str, job: Resource, command: str,
                 after: tuple[str, ...], env: dict[str, str | SecretValue],
                 timeout_s: float | None, data: tuple[tuple[str, str], ...] = ()) -> None:
        self.key, self.owner, self.job, self.command = key, owner, job, command
        self.after, self.env, self.timeout_s = after, env, timeout_s
        self.data = data


def environment_variables(*specs: dict[str, Any]) -> dict[str, str | SecretValue]:
    """Variables of an Environment and a Job, in that order. A value that holds
    ${secret.X} becomes a SecretValue read from X at apply time; one that also holds
    text around it is refused (a secret is a whole value here)."""
    out: dict[str, str | SecretValue] = {}
    for spec in specs:
        for name, value in (spec or {}).items():
            text = str(value)
            match = INTERPOLATION.fullmatch(text.strip())
            if match and match.group(1) == "secret":
                out[name] = SecretValue(env=match.group(2)[1:])
            elif "${secret." in text:
                raise RenderError(f"env {name}: a secret must be the whole value "
                                  f"(${{secret.NAME}}) on docker and kubernetes stacks")
            else:
                out[name] = text
    return out


def compute_resources(config: Config, name: str | None) -> dict[str, Any]:
    compute = config.get("Compute", name) if name else None
    return dict(compute.spec.get("resources") or {}) if compute else {}


def _outputs_dir(config: Config, run: str) -> str:
    store = default_datastore(config)
    if store is None:
        raise RenderError("jobs on docker and kubernetes write their outputs to a datastore: "
                          "set default_datastore on the workspace")
    return f"{datastore_mount(store)}/runs/{run}"


def _data_path(config: Config, text: str) -> str:
    ref = Ref.parse(text)
    data = config.get("Data", ref.name) if ref else None
    if data is None:
        raise RenderError(f"input '{text}' names no Data")
    store = str(data.spec.get("datastore") or default_datastore(config) or "")
    return f"{datastore_mount(store)}/{data.spec['path']}"


def _data_of(config: Config, text: str) -> tuple[str, str]:
    ref = Ref.parse(text)
    data = config.get("Data", ref.name) if ref else None
    assert data is not None  # _data_path said which input names no Data
    store = str(data.spec.get("datastore") or default_datastore(config) or "")
    return store, str(data.spec["path"])


def object_datastore(config: Config, name: str) -> Resource | None:
    """The Datastore `name` when it is on object storage (its path an s3:// URL)."""
    from mlinfra.spec.storage import is_object_url

    store = config.get("Datastore", name)
    return store if store is not None and is_object_url(str(store.spec.get("path", ""))) \
        else None


def datastore_env(config: Config, store: Resource) -> dict[str, str | SecretValue]:
    """What a container needs to read an object-storage Datastore: its credentials
    (each a ${secret.X}) as the SDK's own variables, its endpoint and region."""
    return _object_env(store.spec, f"{store.address}")


def _run(config: Config, key: str, owner: str, job: Resource, inputs: dict[str, str],
         params: dict[str, Any], upstream: dict[str, tuple[str, str]]) -> JobRun:
    """`upstream`: input name -> (run key, output file) for inputs another run makes."""
    outputs = {k: str(v) for k, v in (job.spec.get("outputs") or {}).items()}
    paths: dict[str, str] = {}
    after = []
    data: list[tuple[str, str]] = []
    for name, value in inputs.items():
        if name in upstream:
            run, filename = upstream[name]
            paths[name] = f"{_outputs_dir(config, run)}/{filename}"
            after.append(run)
        else:
            paths[name] = _data_path(config, value)
            data.append(_data_of(config, value))
    out_dir = _outputs_dir(config, key) if outputs else ""

    def fill(match: Any) -> str:
        namespace, field = match.group(1), match.group(2)[1:]
        if namespace == "inputs" and field in paths:
            return shlex.quote(paths[field])
        if namespace == "outputs" and field in outputs:
            return shlex.quote(f"{out_dir}/{outputs[field]}")
        if namespace == "params" and field in params:
            return shlex.quote(str(params[field]))
        return str(match.group(0))

    command = INTERPOLATION.sub(fill, str(job.spec["command"]))
    if out_dir:
        command = f"mkdir -p {shlex.quote(out_dir)} && {command}"
    env_name = job.spec.get("environment")
    env = config.get("Environment", str(env_name)) if env_name else None
    try:
        variables = environment_variables(env.spec.get("env") or {} if env else {},
                                          job.spec.get("env") or {})
    except RenderError as err:
        raise RenderError(f"{owner}: {err.message}") from err
    return JobRun(key, owner, job, command, tuple(sorted(set(after))), variables,
                  duration_s(job.spec.get("timeout")), tuple(sorted(set(data))))


def _output_file(job: Resource | None, output: str) -> str:
    outputs = (job.spec.get("outputs") or {}) if job else {}
    return str(outputs.get(output, output))


def job_runs(config: Config) -> list[JobRun]:
    """Every job that is not a pipeline step, and every pipeline step."""
    steps_of = {str(s.get("job")) for p in config.of("Pipeline").values()
                for s in (p.spec.get("steps") or {}).values() if isinstance(s, dict)}
    runs = []
    for job in config.of("Job").values():
        if job.name in steps_of:
            continue
        upstream = {}
        for name, value in (job.spec.get("inputs") or {}).items():
            match = OUTPUT_REF.match(str(value))
            if match:
                producer = config.get("Job", match.group(2))
                upstream[name] = (match.group(2), _output_file(producer, match.group(3)))
        runs.append(_run(config, job.name, job.address, job,
                         dict(job.spec.get("inputs") or {}), job.spec.get("params") or {},
                         upstream))
    for pipeline in config.of("Pipeline").values():
        steps = pipeline.spec.get("steps") or {}
        for step_name, step in steps.items():
            step_job = config.get("Job", str(step["job"]))
            assert step_job is not None  # validated
            inputs = {**(step_job.spec.get("inputs") or {}), **(step.get("inputs") or {})}
            upstream = {}
            for name, value in inputs.items():
                match = OUTPUT_REF.match(str(value))
                if match and match.group(1) == "steps":
                    producer = config.get("Job", str(steps[match.group(2)]["job"]))
                    upstream[name] = (f"{pipeline.name}-{match.group(2)}",
                                      _output_file(producer, match.group(3)))
            params = {**(step_job.spec.get("params") or {}), **(step.get("params") or {})}
            runs.append(_run(config, f"{pipeline.name}-{step_name}", pipeline.address,
                             step_job, inputs, params, upstream))
    return runs


def endpoint_config(config: Config, endpoint: Resource, models: dict[str, ModelFile],
                    model_path: dict[str, str], only: str | None = None,
                    captures: str | None = None) -> dict[str, Any]:
    """The server's config without its key hashes (the image's entry point adds them).
    `only`: a server for that one deployment, taking all of its traffic (kubernetes,
    where the HTTPRoute splits the traffic between deployments)."""
    deployments = {}
    for deployment in endpoint.spec["deployments"]:
        name = deployment["name"]
        if only is not None and name != only:
            continue
        request = deployment.get("request") or {}
        model = models[name]
        deployments[name] = {
            "model": model.name, "version": model.version, "sha256": model.sha256,
            "path": model_path[name],
            "timeout_ms": duration_in(request.get("timeout_ms"), 0.001, 5000),
            "max_batch_size": request.get("max_batch_size", 32),
            "max_batch_delay_ms": duration_in(request.get("max_batch_delay_ms"), 0.001, 2)}
        if model.url:
            deployments[name]["url"] = model.url
    collect = dict(endpoint.spec.get("collect") or {})
    if collect.get("sample"):
        store = collect.pop("datastore", None) or default_datastore(config)
        if store is None:
            raise RenderError(f"{endpoint.address}: collect needs a datastore: name one in "
                              "collect.datastore or set the workspace's default_datastore")
        remote = object_captures(config)
        folder = remote or captures or f"{datastore_mount(str(store))}/captures"
        collect["path"] = f"{folder}/{endpoint.name}"
        if remote is not None:
            collect["storage"] = capture_storage(config)
        size, seconds = retention(collect.pop("retention", None))
        if size is not None:
            collect["retention_bytes"] = size
        if seconds is not None:
            collect["retention_s"] = seconds
    traffic = ({only: 100} if only is not None
               else dict(endpoint.spec.get("traffic") or {}))
    mirror = {} if only is not None else dict(endpoint.spec.get("mirror") or {})
    return {"endpoint": endpoint.name, "generation": 1, "port": 8080,
            "workers": int(endpoint.spec.get("workers", 2)),
            "auth": str(endpoint.spec.get("auth", "key")), "deployments": deployments,
            "traffic": traffic, "mirror": mirror, "collect": collect,
            "max_request_bytes": int(endpoint.spec.get("max_request_bytes", 1 << 20)),
            "status_dir": STATUS_DIR}


def capture_storage(config: Config) -> dict[str, str]:
    """The endpoint and region a server writes its object-storage captures with."""
    storage = config.stack.settings.get("storage") or {}
    return {k: str(storage[k]) for k in ("endpoint_url", "region") if storage.get(k)}


def collect_datastore(config: Config, endpoint: Resource) -> str | None:
    collect = endpoint.spec.get("collect") or {}
    if not collect.get("sample"):
        return None
    return str(collect.get("datastore") or default_datastore(config) or "") or None


def keys_secret(endpoint: Resource) -> SecretValue | None:
    """The endpoint's keys, comma-separated: generated once by the provider and kept
    encrypted in the Pulumi stack's config."""
    if endpoint.spec.get("auth", "key") == "none":
        return None
    return SecretValue(generated=f"{endpoint.name}-keys")


FETCHED_MODELS = "/tmp/mlinfra/models"

# credentials: field -> the variable the cloud's SDK reads
_SDK_VARIABLES = {"access_key_id": "AWS_ACCESS_KEY_ID",
                  "secret_access_key": "AWS_SECRET_ACCESS_KEY",
                  "session_token": "AWS_SESSION_TOKEN",
                  "token": "GOOGLE_APPLICATION_CREDENTIALS",
                  "account_name": "AZURE_STORAGE_ACCOUNT_NAME",
                  "account_key": "AZURE_STORAGE_ACCOUNT_KEY",
                  "connection_string": "AZURE_STORAGE_CONNECTION_STRING",
                  "sas_token": "AZURE_STORAGE_SAS_TOKEN"}


def fetched_model_path(deployment: str) -> str:
    """Where a server puts the model it fetches from the artifact store at start."""
    return f"{FETCHED_MODELS}/{deployment}/model.onnx"


def storage_env(config: Config) -> dict[str, str | SecretValue]:
    """What a container needs to read the stack's object-storage `artifacts:` as this
    machine does: the `storage:` credentials (each a ${secret.X}, a SecretValue here)
    as the SDK's own variables, the endpoint and the region. Without credentials the
    container uses the cloud's chain (workload identity, instance role)."""
    return _object_env(config.stack.settings.get("storage") or {},
                       f"{config.stack.file}: storage")


def _object_env(storage: dict[str, Any], owner: str) -> dict[str, str | SecretValue]:
    env: dict[str, str | SecretValue] = {}
    for field, value in sorted((storage.get("credentials") or {}).items()):
        match = INTERPOLATION.fullmatch(str(value).strip())
        if not (match and match.group(1) == "secret"):
            raise RenderError(f"{owner}.credentials.{field}: a "
                              "credential is a whole ${secret.NAME}, read at apply time")
        env[_SDK_VARIABLES[field]] = SecretValue(env=match.group(2)[1:])
    if storage.get("endpoint_url"):
        env["AWS_ENDPOINT_URL"] = str(storage["endpoint_url"])
    if storage.get("region"):
        env["AWS_DEFAULT_REGION"] = str(storage["region"])
    return env

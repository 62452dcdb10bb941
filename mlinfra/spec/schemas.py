"""The JSON Schemas (draft 2020-12) of every kind, built from one place.

The schemas are the contract with users: editors complete and check YAML with them
(`# yaml-language-server: $schema=...`), and `mlinfra validate` applies them first.
A field whose change forces the resource to be replaced carries
`"x-mlinfra-replace": true`, as Terraform providers mark ForceNew.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

Schema = dict[str, Any]

DRAFT = "https://json-schema.org/draft/2020-12/schema"
BASE_ID = "https://mlinfra.dev/schemas"
NAME_PATTERN = "^[a-z][a-z0-9-]{0,62}$"
REPLACE = "x-mlinfra-replace"

# A reference to a versioned thing: `fraud`, `fraud:3`, `fraud@champion`.
VERSIONED_REF_PATTERN = r"^[a-z][a-z0-9-]{0,62}(:[1-9][0-9]*|@[a-z][a-z0-9_-]{0,62})?$"
DURATION_PATTERN = r"^[0-9]+(ms|s|m|h|d)?$"
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?$"

_AVERAGED = ("f1_macro", "f1_weighted", "precision_macro", "precision_weighted",
             "recall_macro", "recall_weighted")
# A Model's evaluation metrics by task; the task is read from the model's outputs.
EVALUATION_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "accuracy", "f1", "precision", "recall", "logloss", *_AVERAGED),
    "multiclass": ("auc", "accuracy", "logloss", *_AVERAGED),
    "regression": ("rmse", "mae", "r2"),
}


def _s(description: str, **kw: Any) -> Schema:
    return {"description": description, **kw}


def _string(description: str, **kw: Any) -> Schema:
    return _s(description, type="string", **kw)


def _name_ref(what: str) -> Schema:
    return _string(f"Name of the {what}.", pattern=NAME_PATTERN)


def _replace(schema: Schema) -> Schema:
    return {**schema, REPLACE: True}


def _map_of(description: str, values: Schema, **kw: Any) -> Schema:
    return _s(description, type="object", additionalProperties=values, **kw)


def _obj(description: str, properties: dict[str, Schema], required: list[str] | None = None,
         **kw: Any) -> Schema:
    schema = _s(description, type="object", properties=properties,
                additionalProperties=False, **kw)
    if required:
        schema["required"] = required
    return schema


_COMMON: dict[str, Schema] = {
    "name": _replace(_string(
        "Unique name of the resource within its kind: lowercase letters, digits and '-', "
        "starting with a letter, at most 63 characters.", pattern=NAME_PATTERN)),
    "description": _string("What this resource is for; shown in plans and listings."),
    "tags": _map_of("Free-form labels, kept with the resource and its versions.",
                    {"type": ["string", "number", "boolean"]}),
}

_DURATION_TEXT = "A duration: seconds as a number, or a string such as '90s', '30m', '2h'."
_DURATION: Schema = {"description": _DURATION_TEXT,
             "anyOf": [{"type": "integer", "minimum": 1},
                       {"type": "string", "pattern": DURATION_PATTERN}]}


def _duration_in(unit: str, description: str, minimum: float,
                 default: float | None = None) -> Schema:
    """A duration field whose name gives its unit (`_ms`, `_s`): a number in that unit,
    or a string with its own unit, as every duration may be written ('200ms', '2s')."""
    schema: Schema = {"description": f"{description} A number of {unit}, or a duration "
                      "such as '500ms', '2s', '1m'.",
                      "anyOf": [{"type": "number", "minimum": minimum},
                                {"type": "string", "pattern": DURATION_PATTERN}]}
    if default is not None:
        schema["default"] = default
    return schema


def _kind(kind: str, description: str, properties: dict[str, Schema],
          required: list[str] | None = None, **kw: Any) -> Schema:
    props = {"kind": _s(f"Always '{kind}'.", const=kind), **_COMMON, **properties}
    schema = _obj(description, props, ["kind", "name", *(required or [])], **kw)
    return {"$schema": DRAFT, "$id": f"{BASE_ID}/{kind.lower()}.json",
            "title": kind, **schema}


def _variables() -> Schema:
    return _map_of(
        "Variables: name -> value; resources use them as ${var.NAME}.",
        {"description": "A variable's value.",
         "type": ["string", "number", "boolean", "array", "object", "null"]},
        propertyNames={"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"})


def _project() -> Schema:
    declared = _obj("A variable's declaration.", {
        "description": _string("What the variable means."),
        "default": _s("Value used when the stack does not set one."),
        "sensitive": _s("Treat the value like a ${secret.X}: usable only in a job's command, "
                        "params and env and an environment's requirements and env, shown "
                        "as (sensitive), stored only as a salted hash.", type="boolean",
                        default=False),
    })
    return _kind("Project", "The root of an mlinfra project: the folder holding mlinfra.yaml.", {
        "default_stack": _string("Stack used when -s/--stack is not given: "
                                 "stacks/<default_stack>.yaml.", pattern=NAME_PATTERN,
                                 default="dev"),
        "variables": _map_of("Variables the project declares, with optional defaults; "
                             "a stack sets their values.", declared,
                             propertyNames={"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}),
    })


def _stack() -> Schema:
    return _kind("Stack", "Binds a project to a provider, a state location and variables.", {
        "provider": _replace(_string("Where resources are created: `local` (this machine), "
                                     "`docker` or `kubernetes` (applied through Pulumi; "
                                     "plan and apply need the Pulumi CLI), or a provider "
                                     "another package installs (the `mlinfra.providers` "
                                     "entry points).",
                                     pattern=NAME_PATTERN, default="local")),
        "state": _string("Where state is kept: a path to a SQLite file (relative to the "
                         "project), or postgresql://USER@HOST/DB[?schema=NAME] for a "
                         "team (the password from ${secret.X} or PGPASSWORD). Default: "
                         ".mlinfra/<stack>/state.db."),
        "artifacts": _string("Where the workspace's artifacts are kept: a folder "
                             "(relative to the project, or absolute; it holds the run "
                             "folders too), or object storage, s3://BUCKET/PREFIX, "
                             "gs://... or az://... (`storage` says how to reach it). With "
                             "a shared state, a place every machine that applies the "
                             "stack reaches. Default: .mlinfra/<stack>.", minLength=1),
        "storage": _obj("How to reach the object storage `artifacts:` names.",
                        _object_options()),
        "variables": _variables(),
        "docker": _obj("Settings of the docker provider.", {
            "host": _string("Docker daemon address, e.g. unix:///var/run/docker.sock."),
            "network": _string("Network the containers join.", pattern=NAME_PATTERN),
            "registry": _string("Registry the built images are pushed to."),
            "base_image": _string("Image every built image starts from, instead of each "
                                  "Environment's `image` (e.g. a mirror, or an image "
                                  "built locally)."),
        }),
        "kubernetes": _obj("Settings of the kubernetes provider.", {
            "context": _string("kubeconfig context to use."),
            "namespace": _replace(_string("Namespace for every object.", pattern=NAME_PATTERN)),
            "registry": _string("Registry the built images are pushed to."),
            "gateway": _string("Gateway API Gateway the endpoints' HTTPRoutes attach to."),
            "base_image": _string("Image every built image starts from, instead of each "
                                  "Environment's `image`."),
            "storage_class": _string("StorageClass of the datastores' "
                                     "PersistentVolumeClaims (default: the cluster's)."),
            "artifacts_claim": _string("PersistentVolumeClaim, in the stack's namespace, "
                                       "holding the stack's `artifacts:` folder: each job "
                                       "run's Job reads its code and inputs and writes its "
                                       "outputs there. Needed to run jobs.",
                                       pattern=NAME_PATTERN),
        }),
        "pulumi": _obj("Settings of the Pulumi Automation API used by docker and kubernetes.", {
            "backend": _string("Pulumi state backend URL; a relative file:// path is "
                               "relative to the project. Default: "
                               "file://.mlinfra/<stack>/pulumi."),
            "stack": _string("Pulumi stack name. Default: the mlinfra stack's name."),
        }),
    })


def _workspace() -> Schema:
    return _kind("Workspace", "The home of the registry, runs and artifacts: one per project.", {
        "default_datastore": _name_ref("Datastore that Data uses when it names none"),
    })


def _compute() -> Schema:
    return _kind("Compute", "Where jobs and endpoints run.", {
        "type": _replace(_string("Kind of compute.", enum=["local", "docker", "kubernetes"],
                                 default="local")),
        "max_concurrency": _s("local: how many jobs run at once.", type="integer",
                              minimum=1, default=2),
        "min_instances": _s("docker / kubernetes: fewest replicas.", type="integer",
                            minimum=0, default=0),
        "max_instances": _s("docker / kubernetes: most replicas.", type="integer",
                            minimum=1, default=4),
        "resources": _obj("Resources of one instance.", {
            "cpu": _s("CPU cores, e.g. '1' or '500m'.", type=["string", "number"],
                      pattern=QUANTITY_PATTERN),
            "memory": _string("Memory, e.g. '2Gi'.", pattern=QUANTITY_PATTERN),
            "gpu": _s("GPUs per instance.", type="integer", minimum=0),
        }),
    })


def _object_options() -> dict[str, Schema]:
    return {
        "endpoint_url": _string("Object storage endpoint, for S3-compatible servers "
                                "(MinIO, Ceph) or a local emulator; default: the cloud's."),
        "region": _string("s3: the bucket's region (default: the AWS chain's)."),
        "profile": _string("s3: the AWS profile (~/.aws); gcs: the Google Cloud project."),
        "credentials": _map_of(
            "Credentials, each a ${secret.NAME} (read from the environment when the "
            "storage is opened, never written): s3 access_key_id, secret_access_key, "
            "session_token; gcs token; azure_blob account_name, account_key, "
            "connection_string, sas_token. Without it, the cloud's own chain (environment "
            "variables, profiles, workload identity).", _string("A credential."),
            propertyNames={"enum": ["access_key_id", "secret_access_key", "session_token",
                                    "token", "account_name", "account_key",
                                    "connection_string", "sas_token"]}),
    }


def _datastore() -> Schema:
    return _kind("Datastore", "A place data lives: a folder, or object storage through "
                 "fsspec (s3fs, gcsfs, adlfs: pip install 'mlinfra[s3]', [gcs] or [azure]).", {
        "type": _replace(_string("Kind of datastore.", enum=["local", "s3", "gcs",
                                                             "azure_blob"],
                                 default="local")),
        "path": _replace(_string("local: folder, relative to the project, or absolute; "
                                 "s3: s3://BUCKET/PREFIX; gcs: gs://BUCKET/PREFIX; "
                                 "azure_blob: az://CONTAINER/PREFIX.", minLength=1)),
        **_object_options(),
    }, ["path"])


def _data() -> Schema:
    expectation = _s(
        "One Great Expectations expectation: {expect_...: {arguments}}.",
        type="object", minProperties=1, maxProperties=1,
        propertyNames={"pattern": "^expect_[a-z0-9_]+$"},
        additionalProperties={"type": "object"})
    return _kind("Data", "A versioned reference into a datastore: every new content of the "
                 "file or folder is a new version.", {
                     "datastore": _replace(_name_ref(
                         "Datastore holding the data (default: the workspace's)")),
                     "path": _string("File or folder inside the datastore.", minLength=1),
                     "format": _string("How the data is stored.",
                                       enum=["csv", "parquet", "jsonl"], default="csv"),
                     "expectations": _s(
                         "Great Expectations checks, run on new content before it takes a "
                         "version (content that fails takes none); validate checks their "
                         "names and arguments against GX's registry.",
                         type="array", items=expectation),
                 }, ["path"])


def _environment() -> Schema:
    return _kind("Environment", "A Python environment: a virtual environment locally, an "
                 "image on docker and kubernetes.", {
                     "python": _replace(_string("Python version, e.g. '3.11'.",
                                                pattern=r"^3\.[0-9]+(\.[0-9]+)?$")),
                     "requirements": _s("Packages, as pip requirement strings.",
                                        type="array", items={"type": "string", "minLength": 1}),
                     "requirements_file": _string("A requirements.txt, relative to the project."),
                     "image": _string("Base image for docker and kubernetes.",
                                      default="python:3.11-slim"),
                     "env": _map_of("Environment variables of every process in it.",
                                    {"type": ["string", "number", "boolean"]}),
                 })


def _job() -> Schema:
    return _kind("Job", "A training or processing step; it runs when its inputs change.", {
        "code": _string("Folder holding the code, relative to the project; "
                        "snapshotted for every run.", default="."),
        "command": _string("Command line; ${inputs.X}, ${outputs.X} and ${params.X} "
                           "are filled in; a ${secret.X} is expanded by the shell from "
                           "the run's environment.", minLength=1),
        "environment": _name_ref("Environment the command runs in"),
        "compute": _name_ref("Compute the job runs on"),
        "experiment": _string("Experiment the runs are grouped under (default: the job's "
                              "name)."),
        "inputs": _map_of("Inputs: name -> Data reference (transactions, transactions:3) "
                          "or another job's output (${jobs.NAME.outputs.OUT}).",
                          {"type": "string", "minLength": 1}),
        "params": _map_of("Parameters passed to the command and recorded with the run.",
                          {"type": ["string", "number", "boolean"]}),
        "outputs": _map_of("Outputs: name -> file or folder the command writes.",
                           {"type": "string", "minLength": 1}),
        "env": _map_of("Extra environment variables.",
                       {"type": ["string", "number", "boolean"]}),
        "timeout": {**_DURATION, "description": "Longest a run may take; then it is "
                    "killed (whole process group). " + _DURATION_TEXT},
    }, ["command"])


def _pipeline() -> Schema:
    step = _obj("One step: a job, with inputs that may come from other steps.", {
        "job": _name_ref("Job this step runs"),
        "inputs": _map_of("Overrides of the job's inputs: a Data reference or "
                          "${steps.STEP.outputs.OUT}.", {"type": "string", "minLength": 1}),
        "params": _map_of("Overrides of the job's params.",
                          {"type": ["string", "number", "boolean"]}),
    }, ["job"])
    return _kind("Pipeline", "A DAG of jobs; an unchanged step is reused, not rerun.", {
        "steps": _map_of("Steps by name.", step, minProperties=1,
                         propertyNames={"pattern": NAME_PATTERN}),
    }, ["steps"])


def _run_output(what: str) -> list[Schema]:
    """The ways to name a run's output: a job's, or a pipeline step's."""
    return [_obj(f"A job's output{what}.", {"job": _name_ref("Job"),
                                            "output": _string("Output name of the job.")},
                 ["job", "output"]),
            _obj(f"A pipeline step's output{what}.", {
                "pipeline": _name_ref("Pipeline"),
                "step": _string("Step name.", pattern=NAME_PATTERN),
                "output": _string("Output name of the step's job.")},
                ["pipeline", "step", "output"])]


def _model() -> Schema:
    source = _s("Where versions come from: a job's output, a pipeline step's output, or a "
                "file.", oneOf=[
                    *_run_output(""),
                    _obj("A file in the project.", {"path": _string("Path of the file.")},
                         ["path"]),
                ])
    metrics = list(dict.fromkeys(m for names in EVALUATION_METRICS.values() for m in names))
    data = _s("Labelled data to score on: a Data reference (holdout, holdout:3), or the "
              "output of the latest run of a job or pipeline step (a csv file unless its "
              "name ends in .jsonl or .parquet).", oneOf=[
                  _string("A Data reference.", pattern=VERSIONED_REF_PATTERN),
                  *_run_output(", from the state of its latest run")])
    return _kind("Model", "A registered model: named, versioned, with aliases.", {
        "from": source,
        "format": _replace(_string("Model format.", enum=["onnx"], default="onnx")),
        "evaluation": _obj("How a new version is scored when it is registered.", {
            "data": data,
            "label": _string("Column holding the truth; its values, as they are in the "
                             "data, are the classes of a classifier.", minLength=1),
            "features": _s("Columns the model reads, in the order of its single 2-D "
                           "input, or matched by name to its inputs. Default: every "
                           "column but the label, in file order.", type="array",
                           minItems=1, uniqueItems=True, items={"type": "string",
                                                                "minLength": 1}),
            "positive": _s("Binary classifiers: the positive class, for auc, f1, "
                           "precision and recall. Default: the greater of the two "
                           "classes (1 of 0/1).", type=["string", "number", "boolean"]),
            "metrics": _s(
                "Metrics to compute; the model's outputs decide its task. Binary "
                "classifiers: auc, accuracy, f1, precision, recall (of the positive "
                "class), logloss and the averages below. Multiclass: auc (one-vs-rest, "
                "macro), accuracy, logloss, f1_macro, f1_weighted, precision_macro, "
                "precision_weighted, recall_macro, recall_weighted. Regressors: rmse, "
                "mae, r2. Default: auc and accuracy (accuracy alone without "
                "probabilities); rmse, mae and r2.", type="array", minItems=1,
                uniqueItems=True, items={"enum": metrics}),
        }, ["data", "label"]),
        "monitoring": _obj("Monitoring of the versions this model registers.", {
            "reference": _string("Data whose profile is each new version's reference for "
                                 "drift (default: the data its run read).",
                                 pattern=VERSIONED_REF_PATTERN),
        }),
    }, ["from"])


def _endpoint() -> Schema:
    deployment = _obj("A model behind the endpoint.", {
        "name": _string("Deployment name, used in traffic and mirror.", pattern=NAME_PATTERN),
        "model": _string("Model reference: fraud (latest), fraud:3, fraud@champion.",
                         pattern=VERSIONED_REF_PATTERN),
        "request": _obj("Request handling.", {
            "timeout_ms": _duration_in(
                "ms", "Longest a request may take (504 after). A model that answers in "
                "under 0.5 ms is scored on the server's event loop within "
                "max_batch_delay_ms and is not timed out.", 1, 5000),
            "max_batch_size": _s("Most requests scored in one call.", type="integer",
                                 minimum=1, default=32),
            "max_batch_delay_ms": _duration_in(
                "ms", "Longest a request may wait for a batch to fill. A batch is scored as "
                "soon as a turn of the server's event loop brings no new request, so it "
                "rarely waits this long, and never on a timer.", 0, 2),
        }),
    }, ["name", "model"])
    percent = {"type": "integer", "minimum": 0, "maximum": 100}
    return _kind("Endpoint", "An online endpoint: an ONNX Runtime server with deployments "
                 "and a traffic split.", {
                     "compute": _replace(_name_ref("Compute the server runs on")),
                     "auth": _string("key: Bearer keys required; none: open.",
                                     enum=["key", "none"], default="key"),
                     "port": _replace(_s("Port to listen on (default: a free one).",
                                         type="integer", minimum=1, maximum=65535)),
                     "workers": _s("Server worker processes, each serving every "
                                   "deployment. A change restarts the server on the same "
                                   "port, the new one answering before the old one stops.",
                                   type="integer", minimum=1, default=2),
                     "max_request_bytes": _s("Larger bodies get 413.", type="integer",
                                             minimum=1024, default=1048576),
                     "deployments": _s("Deployments.", type="array", minItems=1,
                                       items=deployment),
                     "traffic": _map_of("Share of live traffic per deployment, summing to "
                                        "100.", {**percent, "description": "Percent."}),
                     "mirror": _map_of("Shadow share per deployment: copies of requests, "
                                       "never answered to the caller.",
                                       {**percent, "maximum": 50, "description": "Percent."}),
                     "collect": _obj("Request capture for drift monitoring.", {
                         "sample": _s("Share of requests captured.", type="number",
                                      minimum=0, maximum=1),
                         "datastore": _name_ref("Datastore the captures go to "
                                                "(default: the workspace's)"),
                         "retention": _string("How much of the captures is kept: a size "
                                              "(500Mi, 2Gi) or days (7d); the oldest hours "
                                              "go first. Default: the server's "
                                              "--captures-bytes x (backups + 1), 300 MiB.",
                                              pattern=r"^([0-9]+d|[0-9]+(\.[0-9]+)?"
                                                      r"(k|M|G|T|Ki|Mi|Gi|Ti)?)$"),
                     }),
                 }, ["deployments", "traffic"])


def _promotion() -> Schema:
    bound = _obj("Bounds on a metric.", {
        "min": _s("Lowest value that passes.", type="number"),
        "max": _s("Highest value that passes.", type="number")})
    return _kind("Promotion", "How a new version becomes the alias' version.", {
        "model": _name_ref("Model governed"),
        "alias": _string("Alias moved on promotion.", pattern="^[a-z][a-z0-9_-]{0,62}$",
                         default="champion"),
        "compare": _obj("Challenger against champion.", {
            "metric": _string("Metric compared."),
            "direction": _string("Which way is better.", enum=["max", "min"],
                                 default="max"),
            "min_delta": _s("Smallest improvement that counts.", type="number", minimum=0,
                            default=0),
        }, ["metric"]),
        "gates": _obj("What a candidate must pass first.", {
            "metrics": _map_of("Bounds per metric.", bound),
            "data": _s("Data whose expectations must pass.", type="array",
                       items={"type": "string", "pattern": VERSIONED_REF_PATTERN}),
        }),
        "rollout": _obj("Progressive rollout of a promoted version on an endpoint that "
                        "serves model@alias: a canary deployment takes the steps' shares "
                        "of the endpoint's traffic; each hold is judged on its own "
                        "requests; a breach puts the traffic and the alias back.", {
            "endpoint": _name_ref("Endpoint"),
            "steps": _s("Traffic percentages, ending at 100.", type="array", minItems=1,
                        items={"type": "integer", "minimum": 1, "maximum": 100},
                        default=[10, 50, 100]),
            "hold_s": _duration_in("s", "How long each step is watched.", 0, 5),
            "min_requests": _s("Fewest requests to the new version a hold is judged on; "
                               "fewer is inconclusive and the step holds again.",
                               type="integer", minimum=1, default=100),
            "replay": _s("When a hold sees no request at all, replay captured requests "
                         "(the endpoint's collect:) to the new version as shadow traffic.",
                         type="boolean", default=False),
            "on_no_traffic": _s("What an inconclusive rollout (too few requests to judge, "
                                "and none to replay) does: `wait` returns the traffic and "
                                "leaves the candidate pending, judged again by the next "
                                "apply or ci run; `promote` promotes it unjudged.",
                                enum=["wait", "promote"], default="wait"),
            "rollback_on": _obj("Thresholds that roll back.", {
                "error_rate": _s("Error (5xx) share.", type="number", minimum=0, maximum=1,
                                 default=0.02),
                "p99_ms": _duration_in("ms", "p99 latency.", 0),
            }),
        }, ["endpoint"]),
    }, ["model"])


def _webhook() -> Schema:
    return _kind("Webhook", "Events delivered over HTTP as they happen, signed as Standard "
                 "Webhooks specifies (webhook-id, webhook-timestamp, webhook-signature), "
                 "at least once, retried with backoff for up to a day.", {
        "url": _string("Where events are POSTed: an http:// or https:// URL (a "
                       "${secret.X} when the URL itself is a credential, as Slack's are).",
                       minLength=1),
        "secret": _string("The signing key, as ${secret.NAME} (a whsec_... key of Standard "
                          "Webhooks, or any text). Without it, events are sent unsigned."),
        "events": _s("Event types delivered (the catalog's names, e.g. model.promoted); "
                     "* globs: rollout.*, *.", type="array", minItems=1,
                     items={"type": "string", "minLength": 1}, default=["*"]),
        "format": _string("cloudevents: the CloudEvents 1.0 JSON envelope (structured "
                          "mode); slack: a Slack incoming-webhook message.",
                          enum=["cloudevents", "slack"], default="cloudevents"),
        "retry": _obj("How failed deliveries are retried (5xx, 408, 429, connection "
                      "errors): exponential backoff with jitter.", {
            "first": {**_DURATION, "description": "Wait before the second try. "
                      + _DURATION_TEXT, "default": "5s"},
            "max": {**_DURATION, "description": "Longest wait between tries. "
                    + _DURATION_TEXT, "default": "1h"},
            "for": {**_DURATION, "description": "How long after the first try tries go "
                    "on; then the event is dead-lettered. " + _DURATION_TEXT,
                    "default": "24h"},
        }),
    }, ["url"])


def _schedule() -> Schema:
    return _kind("Schedule", "Work run on a clock by `mlinfra agent` (or `agent --once` from "
                 "cron, a Kubernetes CronJob or a GitHub Actions schedule).", {
        "cron": _string("Five-field cron expression, in `timezone`.", minLength=1),
        "every": {**_DURATION, "description": "Or: an interval, fired at its multiples "
                  "since the Unix epoch. " + _DURATION_TEXT},
        "timezone": _string("IANA time zone the cron expression is read in.",
                            default="UTC", minLength=1),
        "run": _s("What fires: {monitor: NAME}, {pipeline: NAME} (retrain on the latest "
                  "data) or {apply: true}.", type="object", minProperties=1,
                  maxProperties=1, additionalProperties=False, properties={
                      "monitor": _name_ref("Monitor to run"),
                      "pipeline": _name_ref("Pipeline to run on the latest data"),
                      "apply": _s("Apply the whole stack.", const=True)}),
        "catchup": _s("Fire every instant missed while no agent ran (at most 100); "
                      "false fires only the newest.", type="boolean", default=False),
        "overlap": _string("forbid: an instant is not fired while the schedule's previous "
                           "run is still under way; allow: it is.",
                           enum=["forbid", "allow"], default="forbid"),
    }, ["run"], oneOf=[{"required": ["cron"]}, {"required": ["every"]}])
def _monitor() -> Schema:
    numeric = ["normalized_wasserstein", "jensen_shannon", "psi", "ks"]
    categorical = ["jensen_shannon", "psi", "l_infinity", "chi_squared"]

    def choice(what: str, metrics: list[str], default: str, threshold: float) -> Schema:
        return _obj(f"The drift metric of {what} columns and its threshold.", {
            "metric": _string(f"Metric (default {default}). Distances drift above the "
                              "threshold; ks and chi_squared are tests whose p-value "
                              "drifts below it, Bonferroni-corrected over the features.",
                              enum=metrics, default=default),
            "threshold": _s(f"Distance above which a column drifted, or p-value below "
                            f"which it did (default {threshold} for {default}; psi 0.2; "
                            "p 0.05).", type="number", exclusiveMinimum=0),
        })

    return _kind("Monitor", "Drift, quality and performance of what an endpoint serves, "
                 "in windows judged against the reference profile of the model version "
                 "that served them.", {
                     "endpoint": _name_ref("Endpoint whose captures (its collect:) are the "
                                           "production rows"),
                     "model": _string("Instead of an endpoint: the model (fraud@champion) "
                                      "whose reference judges `data`.",
                                      pattern=VERSIONED_REF_PATTERN),
                     "data": _name_ref("With model: the Data asset of production rows; "
                                       "each new content is one window"),
                     "window": _s("Length of a time window (1h, 30m); a window is judged "
                                  "once it has ended. Default 1h.",
                                  anyOf=[{"type": "integer", "minimum": 1},
                                         {"type": "string", "pattern": DURATION_PATTERN}]),
                     "rows": _s("Instead of time: windows of this many rows.",
                                type="integer", minimum=1),
                     "min_rows": _s("A window with fewer rows is 'insufficient data', never "
                                    "an alert.", type="integer", minimum=1, default=500),
                     "signals": _obj("What is judged in each window (default: data_drift "
                                     "on all features).", {
                         "data_drift": _obj("Each feature's distribution against the "
                                            "reference.", {
                             "features": _s("all, or the columns to watch.",
                                            anyOf=[{"const": "all"},
                                                   {"type": "array", "minItems": 1,
                                                    "uniqueItems": True,
                                                    "items": {"type": "string",
                                                              "minLength": 1}}],
                                            default="all"),
                             "numeric": choice("numeric", numeric, "normalized_wasserstein",
                                               0.1),
                             "categorical": choice("categorical", categorical,
                                                   "jensen_shannon", 0.1),
                         }),
                         "prediction_drift": _obj("The model's outputs against its "
                                                  "outputs on the reference data.", {
                             "metric": _string("Metric (default normalized_wasserstein).",
                                               enum=numeric,
                                               default="normalized_wasserstein"),
                             "threshold": _s("Drift threshold (default 0.1).",
                                             type="number", exclusiveMinimum=0),
                         }),
                         "data_quality": _obj("Nulls and values outside the reference.", {
                             "null_rate": _s("Largest rise of a feature's null share over "
                                             "the reference's.", type="number", minimum=0,
                                             maximum=1),
                             "out_of_range_rate": _s("Largest share of values outside the "
                                                     "reference's [min, max] (categories "
                                                     "it never saw).", type="number",
                                                     minimum=0, maximum=1),
                         }),
                         "performance": _obj("The model's metric on labelled rows (labels "
                                             "posted to /v2/models/NAME/feedback, or "
                                             "rows of a Data asset), joined by request "
                                             "id.", {
                             "labels": _string("Data asset of (request_id, [row,] label) "
                                               "rows.", pattern=VERSIONED_REF_PATTERN),
                             "label": _string("The asset's label column (default label).",
                                              minLength=1, default="label"),
                             "metric": _string("Metric.", enum=["auc", "accuracy", "rmse",
                                                                "mae", "r2"]),
                             "min": _s("Lowest value that passes.", type="number"),
                             "max": _s("Highest value that passes.", type="number"),
                         }, ["metric"]),
                     }),
                     "alert_after": _s("Consecutive drifting windows that breach the "
                                       "monitor.", type="integer", minimum=1, default=1),
                     "on_breach": _s("What a breach causes: retrain a pipeline or job "
                                     "(with new data only).", type="array",
                                     items=_obj("An action.", {
                                         "retrain": _name_ref("Pipeline or Job to retrain"),
                                     }, ["retrain"])),
                     "schedule": _string("On docker and kubernetes: when a CronJob runs "
                                         "mlinfra monitor run (cron syntax; default: "
                                         "every window, or hourly).", minLength=9),
                 })
def _batch_endpoint() -> Schema:
    deployment = _obj("A model that scores, with Azure ML's batch deployment settings.", {
        "name": _string("Deployment name.", pattern=NAME_PATTERN),
        "model": _string("Model reference: fraud (latest), fraud:3, fraud@champion.",
                         pattern=VERSIONED_REF_PATTERN),
        "mini_batch_size": _s("Rows in one mini-batch: the unit a worker scores, retries "
                              "and a resumed job skips.", type="integer", minimum=1,
                              default=10000),
        "max_concurrency": _s("Worker processes scoring at once on this compute, each "
                              "with one onnxruntime session using cores / max_concurrency "
                              "threads (Azure ML: max_concurrency_per_instance).",
                              type="integer", minimum=1, default=2),
        "error_threshold": _s("Rows whose mini-batch failed every attempt that are "
                              "tolerated; past it the job stops and fails. -1: any number.",
                              type="integer", minimum=-1, default=0),
        "retries": _s("Further attempts of a mini-batch that failed (Azure ML: "
                      "retry_settings.max_retries).", type="integer", minimum=0, default=3),
        "timeout": {**_DURATION, "description": "Longest one mini-batch may take; then its "
                    "worker is stopped and the mini-batch tried again. " + _DURATION_TEXT},
        "output_action": _string("append_row: write every scored row to the output; "
                                 "summary_only: only the summary and the errors.",
                                 enum=["append_row", "summary_only"], default="append_row"),
        "output_file_name": _string("The output's file name (default: predictions.FORMAT).",
                                    pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"),
    }, ["name", "model"])
    score = _obj("A declared scoring: the data scored with the default (or named) "
                 "deployment, kept current by plan and apply; its output is a new version "
                 "of the Data asset `output`, with lineage.", {
                     "data": _string("Data reference scored: transactions (latest), "
                                     "transactions:3.", pattern=VERSIONED_REF_PATTERN),
                     "output": _string("Name of the Data asset whose versions hold the "
                                       "scores (not a declared Data).", pattern=NAME_PATTERN),
                     "deployment": _string("Deployment that scores (default: `default`).",
                                           pattern=NAME_PATTERN),
                 }, ["data", "output"])
    return _kind("BatchEndpoint", "A batch endpoint (Azure ML's names): deployments that "
                 "score whole data assets or files in mini-batches, and the scorings plan "
                 "and apply keep current.", {
                     "compute": _name_ref("Compute the scoring runs on"),
                     "deployments": _s("Deployments.", type="array", minItems=1,
                                       items=deployment),
                     "default": _string("Deployment used when none is named (default: the "
                                        "first).", pattern=NAME_PATTERN),
                     "output": _obj("What a scoring writes.", {
                         "format": _string("The output file's format.",
                                           enum=["csv", "parquet", "jsonl"], default="csv"),
                         "columns": _s("Columns of the output, in order, among row_id, the "
                                       "model's outputs (a 2-D output gives one column per "
                                       "class: probabilities_0, ..., or its ZipMap's labels; "
                                       "an output's name stands for all of them, a class "
                                       "column's for that one) and the kept input "
                                       "columns. Default: row_id, the kept columns, every "
                                       "output.", type="array", minItems=1, uniqueItems=True,
                                       items={"type": "string", "minLength": 1}),
                         "keep_input_columns": _s("Input columns copied to the output "
                                                  "(e.g. an id).", type="array",
                                                  uniqueItems=True,
                                                  items={"type": "string", "minLength": 1}),
                     }),
                     "score": _s("Declared scorings.", type="array", items=score),
                 }, ["deployments"])


SCHEMAS: dict[str, Schema] = {s["title"]: s for s in (
    _project(), _stack(), _workspace(), _compute(), _datastore(), _data(), _environment(),
    _job(), _pipeline(), _model(), _endpoint(), _promotion(), _monitor(),
    _batch_endpoint(), _webhook(), _schedule())}

KINDS: tuple[str, ...] = tuple(SCHEMAS)

# Kinds that live in the project folder as resources (Project and Stack are settings).
RESOURCE_KINDS: tuple[str, ...] = tuple(k for k in KINDS if k not in ("Project", "Stack"))

# Kinds no file declares: made from others when a project is loaded (a BatchEndpoint's
# `score:` entries are BatchScore resources, so plan and apply treat each as one).
DERIVED_KINDS: tuple[str, ...] = ("BatchScore",)


@cache
def replace_fields(kind: str) -> frozenset[str]:
    """Top-level fields of `kind` whose change forces replacement."""
    if kind not in SCHEMAS:  # a derived kind
        return frozenset()
    props = SCHEMAS[kind]["properties"]
    return frozenset(name for name, spec in props.items() if spec.get(REPLACE))


def schema_filename(kind: str) -> str:
    return f"{kind.lower()}.json"


def any_resource() -> Schema:
    """One schema for any resource document, chosen by its `kind`: for editors on files
    that hold several kinds (`---`)."""
    defs = {kind: {k: v for k, v in SCHEMAS[kind].items() if k not in ("$schema", "$id")}
            for kind in RESOURCE_KINDS}
    return {
        "$schema": DRAFT, "$id": f"{BASE_ID}/resource.json", "title": "mlinfra resource",
        "description": "Any mlinfra resource; the fields depend on `kind`.",
        "type": "object", "required": ["kind", "name"],
        "properties": {"kind": {"description": "Kind of the resource.",
                                "enum": list(RESOURCE_KINDS)}},
        "allOf": [{"if": {"properties": {"kind": {"const": kind}}},
                   "then": {"$ref": f"#/$defs/{kind}"}} for kind in RESOURCE_KINDS],
        "$defs": defs,
    }


def export(out: Path) -> list[Path]:
    """Write one file per kind, and resource.json, into `out`; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    documents = {schema_filename(kind): schema for kind, schema in SCHEMAS.items()}
    documents["resource.json"] = any_resource()
    for filename, schema in documents.items():
        path = out / filename
        path.write_text(json.dumps(schema, indent=2) + "\n")
        written.append(path)
    return written

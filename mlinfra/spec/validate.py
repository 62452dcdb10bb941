"""Validation: each document against its kind's schema, then the references between them.

Both passes return `Problem`s rather than raising, so a user sees every error at once.
"""

from __future__ import annotations

import graphlib
import os
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any, cast

from mlinfra.spec.fastcheck import Check, compile_schema, ecma_regex
from mlinfra.spec.model import INTERPOLATION, OUTPUT_REF, Config, Ref, Resource
from mlinfra.spec.schemas import NAME_PATTERN, SCHEMAS, VERSIONED_REF_PATTERN
from mlinfra.spec.yamlfile import Path_, Problem

if TYPE_CHECKING:
    from jsonschema import Draft202012Validator, ValidationError

_JSON_TYPES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a mapping", type(None): "nothing (null)"}
_PATTERN_HINTS = {
    NAME_PATTERN: "a name: lowercase letters, digits and '-', starting with a letter, "
                  "at most 63 characters",
    VERSIONED_REF_PATTERN: "a reference: NAME, NAME:VERSION or NAME@ALIAS",
}


def did_you_mean(word: str, candidates: Any) -> str:
    from difflib import get_close_matches  # only when something is wrong

    match = get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f" (did you mean '{match[0]}'?)" if match else ""


@cache
def _validator(kind: str) -> Draft202012Validator:
    # NOTE: imported here: jsonschema costs more to import than a plan of 1,000
    # resources takes, and is needed only to explain an invalid document.
    from jsonschema import Draft202012Validator, ValidationError, validators

    def pattern(_: Any, expected: str, instance: Any, __: Any) -> Iterator[ValidationError]:
        if isinstance(instance, str) and not ecma_regex(expected).search(instance):
            yield ValidationError(f"{instance!r} does not match {expected!r}")

    ecma = validators.extend(Draft202012Validator, {"pattern": pattern})  # type: ignore[no-untyped-call]
    return cast("Draft202012Validator", ecma(SCHEMAS[kind]))


@cache
def _fast(kind: str) -> Check:
    return compile_schema(SCHEMAS[kind])


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _type_name(value: Any) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _expected_types(types: Any) -> str:
    names = {"string": "a string", "integer": "an integer", "number": "a number",
             "boolean": "true or false", "array": "a list", "object": "a mapping",
             "null": "null"}
    types = [types] if isinstance(types, str) else list(types)
    return " or ".join(names.get(t, t) for t in types)


def _messages(err: ValidationError) -> Iterator[tuple[Path_, str, bool]]:
    """(path, message, at_key) for one jsonschema error, in a person's words."""
    path: Path_ = tuple(err.absolute_path)
    schema, instance, kind = err.schema, err.instance, str(err.validator)
    expected: Any = err.validator_value
    if kind == "additionalProperties" and isinstance(instance, dict) and isinstance(schema,
                                                                                    dict):
        known = schema.get("properties", {})
        for extra in instance:
            if extra not in known:
                yield ((*path, extra), f"unknown field '{extra}'{did_you_mean(extra, known)}",
                       True)
    elif kind == "required" and isinstance(instance, dict):
        for missing in expected:
            if missing not in instance:
                yield path, f"missing required field '{missing}'", False
    elif kind == "type":
        yield path, (f"expected {_expected_types(err.validator_value)}, got "
                     f"{_type_name(instance)}"), False
    elif kind == "enum":
        options = ", ".join(str(o) for o in expected)
        yield path, (f"must be one of: {options} (got {_short(instance)})"
                     + did_you_mean(str(instance), expected)), False
    elif kind == "pattern":
        hint = _PATTERN_HINTS.get(expected, f"matching {expected}")
        yield path, f"{_short(instance)} is not {hint}", False
    elif kind == "anyOf" and isinstance(schema, dict) and "duration" in schema.get(
            "description", ""):
        yield path, f"{_short(instance)} is not a duration such as 90s, 30m or 2h", False
    elif kind == "oneOf" and path[-1:] == ("from",):
        yield path, ("must be one of {job: NAME, output: NAME}, {pipeline: NAME, step: "
                     "NAME, output: NAME} or {path: FILE}"), False
    elif kind == "oneOf" and path[-2:] == ("evaluation", "data"):
        yield path, ("must be a Data reference (NAME or NAME:VERSION), {job: NAME, output: "
                     "NAME} or {pipeline: NAME, step: NAME, output: NAME}"), False
    elif kind == "oneOf" and path == () and isinstance(instance, dict) and (
            instance.get("kind") == "Schedule"):
        yield path, "give either cron: (with timezone:) or every:, not both", False
    elif kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        word = "at least" if "inimum" in kind else "at most"
        yield path, f"must be {word} {err.validator_value} (got {instance})", False
    elif kind == "const":
        yield path, f"must be {err.validator_value!r}", False
    else:
        yield path, err.message if len(err.message) < 200 else err.message[:197] + "...", False


def check_schema(file: str, doc: int, spec: dict[str, Any], kind: str,
                 label: str = "") -> list[Problem]:
    """The document against its kind's schema, and a Data's expectations against Great
    Expectations' registry (a file the parse cache knows passed is not checked again)."""
    # NOTE: jsonschema reports each missing field of one `required` as its own error,
    # and each names them all: a message is kept once.
    found = {} if _fast(kind)(spec) else dict.fromkeys(
        found for err in _validator(kind).iter_errors(spec) for found in _messages(err))
    problems = [Problem(file, message, doc, path, label, at_key)
                for path, message, at_key in found]
    if kind == "Data" and isinstance(spec.get("expectations"), list) and spec["expectations"]:
        problems.extend(Problem(file, message, doc, path, label, at_key)
                        for path, message, at_key in _expectations(spec["expectations"]))
    return problems


def _expectations(items: list[Any]) -> Iterator[tuple[Path_, str, bool]]:
    """Unknown expectations, unknown and missing arguments: (path, message, at_key).
    Items that are not {name: {arguments}} are the schema's to report."""
    from mlinfra.spec.expectations import known

    table = known()
    if table is None:  # Great Expectations is not installed: apply says so
        return
    for index, item in enumerate(items):
        if not isinstance(item, dict) or len(item) != 1:
            continue
        (name, arguments), = item.items()
        if not isinstance(name, str) or not isinstance(arguments, dict):
            continue
        found = table.get(name)
        if found is None:
            yield (("expectations", index, name), f"unknown expectation '{name}'"
                   + did_you_mean(name, table), True)
            continue
        for argument in arguments:
            if argument not in found.accepted:
                yield (("expectations", index, name, argument), f"{name} has no argument "
                       f"'{argument}'" + did_you_mean(str(argument), found.accepted), True)
        missing = [a for a in found.required if a not in arguments]
        if missing:
            yield (("expectations", index, name), f"{name} needs argument"
                   f"{'s' if len(missing) > 1 else ''} "
                   + ", ".join(f"'{a}'" for a in missing), True)


class _References:
    """The semantic checks; each method adds problems for one kind."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.problems: list[Problem] = []
        self.default_datastore: str | None = None
        self.score_outputs: dict[str, str] = {}  # a scoring's output -> who writes it

    def add(self, res: Resource, path: Path_, message: str, at_key: bool = False) -> None:
        self.problems.append(Problem(res.file, message, res.doc, path, res.label, at_key))

    def name(self, res: Resource, path: Path_, kind: str, name: Any) -> Resource | None:
        """Check that `kind` named `name` exists; returns it."""
        if not isinstance(name, str):
            return None
        found = self.config.get(kind, name)
        if found is None:
            known = self.config.of(kind)
            self.add(res, path, f"unknown {kind.lower()} '{name}'{did_you_mean(name, known)}"
                     + ("" if known else f": the project defines no {kind}"))
        return found

    def ref(self, res: Resource, path: Path_, kind: str, text: Any) -> Resource | None:
        if not isinstance(text, str):
            return None
        parsed = Ref.parse(text)
        if parsed is None:
            self.add(res, path, f"'{text}' is not a reference: use NAME, NAME:VERSION or "
                     "NAME@ALIAS")
            return None
        if kind == "Data" and parsed.alias is not None:
            self.add(res, path, f"data has versions but no aliases: use {parsed.name} or "
                     f"{parsed.name}:VERSION")
        return self.name(res, path, kind, parsed.name)

    def inside(self, res: Resource, path: Path_, value: Any, allow_absolute: bool = False,
               must_exist: bool = False) -> None:
        """A path must stay inside the project folder (symlinks resolved)."""
        if not isinstance(value, str):
            return
        if os.path.isabs(value):
            if not allow_absolute:
                self.add(res, path, f"'{value}' is absolute: give a path inside the project")
            return
        root = os.path.realpath(self.config.root)
        target = os.path.realpath(os.path.join(root, value))
        if os.path.commonpath([root, target]) != root:
            self.add(res, path, f"'{value}' escapes the project folder")
        elif must_exist and not os.path.exists(target):
            looped = os.path.islink(target)  # realpath stops where a loop of links starts
            self.add(res, path, f"'{value}' is a loop of symbolic links" if looped
                     else f"'{value}' does not exist")

    def run(self) -> list[Problem]:
        workspaces = list(self.config.of("Workspace").values())
        for extra in workspaces[1:]:
            self.add(extra, ("name",), f"a project has one Workspace; "
                     f"workspace/{workspaces[0].name} is already defined in "
                     f"{workspaces[0].file}")
        for kind in ("Workspace", "Datastore", "Data", "Environment", "Job", "Pipeline",
                     "Model", "Endpoint", "Promotion", "Monitor", "BatchEndpoint", "Webhook",
                     "Schedule"):
            check = getattr(self, f"_{kind.lower()}")
            for res in self.config.of(kind).values():
                check(res, res.spec)
        self._job_cycles()
        return self.problems

    def _workspace(self, res: Resource, spec: dict[str, Any]) -> None:
        store = spec.get("default_datastore")
        if store is not None and self.name(res, ("default_datastore",), "Datastore", store):
            self.default_datastore = store

    def _datastore(self, res: Resource, spec: dict[str, Any]) -> None:
        kind, path = spec.get("type", "local"), spec.get("path")
        if kind == "local":
            if isinstance(path, str) and "://" in path:
                self.add(res, ("path",), f"'{path}' is a URL: set `type:` to s3, gcs or "
                         "azure_blob for object storage, or give a folder")
            else:
                self.inside(res, ("path",), path, allow_absolute=True)
            for field in ("endpoint_url", "region", "profile", "credentials"):
                if field in spec:
                    self.add(res, (field,), f"{field} is for object storage; this "
                             "datastore is a local folder", at_key=True)
            return
        from mlinfra.spec.storage import (
            CREDENTIALS,
            SCHEME_OF_TYPE,
            scheme_problem,
            whole_secret,
        )

        scheme = SCHEME_OF_TYPE[str(kind)]
        if isinstance(path, str):
            problem = scheme_problem(path)
            if "://" not in path or path.split("://", 1)[0] not in (scheme, *(
                    {"gcs": ("gcs",), "azure_blob": ("abfs",)}.get(str(kind), ()))):
                self.add(res, ("path",), f"a {kind} datastore's path is "
                         f"{scheme}://BUCKET/PREFIX, not '{path}'")
            elif problem:
                self.add(res, ("path",), problem)
        for field, value in (spec.get("credentials") or {}).items():
            if field not in CREDENTIALS[str(kind)]:
                self.add(res, ("credentials", field), f"'{field}' is not a {kind} "
                         f"credential: use {', '.join(CREDENTIALS[str(kind)])}", at_key=True)
            elif not whole_secret(value):
                self.add(res, ("credentials", field), "a credential is a whole "
                         "${secret.NAME}, read from the environment, never written here")

    def _data(self, res: Resource, spec: dict[str, Any]) -> None:
        stores = self.config.of("Datastore")
        if "datastore" in spec:
            self.name(res, ("datastore",), "Datastore", spec["datastore"])
        elif self.default_datastore is None and len(stores) != 1:
            self.add(res, (), "names no datastore, and there is no single Datastore nor a "
                     "Workspace default_datastore to use")
        data_path = spec.get("path")
        if isinstance(data_path, str) and (os.path.isabs(data_path) or os.path.normpath(
                data_path).split(os.sep)[0] == ".."):
            self.add(res, ("path",), f"'{data_path}' must be a path inside the datastore")

    def _environment(self, res: Resource, spec: dict[str, Any]) -> None:
        if "requirements" in spec and "requirements_file" in spec:
            self.add(res, ("requirements_file",), "give requirements or requirements_file, "
                     "not both")
        self.inside(res, ("requirements_file",), spec.get("requirements_file"),
                    must_exist=True)

    def _job(self, res: Resource, spec: dict[str, Any]) -> None:
        self.inside(res, ("code",), spec.get("code"), must_exist=True)
        if "environment" in spec:
            self.name(res, ("environment",), "Environment", spec["environment"])
        if "compute" in spec:
            self.name(res, ("compute",), "Compute", spec["compute"])
        for key, value in (spec.get("inputs") or {}).items():
            self._input(res, ("inputs", key), value, "jobs")
        for key, value in (spec.get("outputs") or {}).items():
            if isinstance(value, str) and (os.path.isabs(value) or os.path.normpath(
                    value).split(os.sep)[0] in ("..", ".")):
                self.add(res, ("outputs", key), f"'{value}' must be a path inside the run's "
                         "outputs folder: relative, not leaving it with '..'")
        command = spec.get("command")
        if isinstance(command, str):
            declared = {"inputs": spec.get("inputs") or {}, "outputs": spec.get("outputs") or {},
                        "params": spec.get("params") or {}}
            for match in INTERPOLATION.finditer(command):
                namespace, rest = match.group(1), match.group(2)[1:]
                if namespace in declared and rest not in declared[namespace]:
                    self.add(res, ("command",), f"${{{namespace}.{rest}}} is not declared in "
                             f"{namespace}{did_you_mean(rest, declared[namespace])}")

    def _input(self, res: Resource, path: Path_, value: Any, namespace: str,
               steps: dict[str, Any] | None = None) -> None:
        if not isinstance(value, str):
            return
        if "${" not in value:
            self.ref(res, path, "Data", value)
            return
        match = OUTPUT_REF.match(value)
        if match is None or match.group(1) != namespace:
            self.add(res, path, f"'{value}' is not an input: use a Data reference or "
                     f"${{{namespace}.NAME.outputs.OUTPUT}}")
            return
        target, output = match.group(2), match.group(3)
        if namespace == "jobs":
            job = self.name(res, path, "Job", target)
        else:
            assert steps is not None
            step = steps.get(target)
            if step is None:
                self.add(res, path, f"unknown step '{target}'{did_you_mean(target, steps)}")
                return
            job = self.config.get("Job", step.get("job", "")) if isinstance(step, dict) else None
        if job is not None and output not in (job.spec.get("outputs") or {}):
            self.add(res, path, f"job '{job.name}' has no output '{output}'"
                     + did_you_mean(output, job.spec.get("outputs") or {}))

    def _job_cycles(self) -> None:
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for job in self.config.of("Job").values():
            for value in (job.spec.get("inputs") or {}).values():
                match = OUTPUT_REF.match(value) if isinstance(value, str) else None
                if match and match.group(1) == "jobs":
                    sorter.add(job.name, match.group(2))
        self._cycle(sorter, "Job", lambda name: self.config.of("Job")[name], ("inputs",))

    def _cycle(self, sorter: graphlib.TopologicalSorter[str], what: str, owner: Any,
               path: Path_) -> None:
        try:
            sorter.prepare()
        except graphlib.CycleError as err:
            cycle = err.args[1]
            res = owner(cycle[0])
            if res is not None:
                self.add(res, path, f"{what.lower()}s form a cycle: {' -> '.join(cycle)}")

    def _pipeline(self, res: Resource, spec: dict[str, Any]) -> None:
        steps = spec.get("steps") or {}
        sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
        for step_name, step in steps.items():
            if not isinstance(step, dict):
                continue
            sorter.add(step_name)
            self.name(res, ("steps", step_name, "job"), "Job", step.get("job"))
            for key, value in (step.get("inputs") or {}).items():
                self._input(res, ("steps", step_name, "inputs", key), value, "steps", steps)
                match = OUTPUT_REF.match(value) if isinstance(value, str) else None
                if match and match.group(1) == "steps" and match.group(2) in steps:
                    sorter.add(step_name, match.group(2))
        self._cycle(sorter, "Step", lambda _: res, ("steps",))

    def _model(self, res: Resource, spec: dict[str, Any]) -> None:
        source = spec.get("from")
        if isinstance(source, dict):
            if "path" in source:
                self.inside(res, ("from", "path"), source["path"], must_exist=True)
            else:
                self._run_output(res, ("from",), source)
        evaluation = spec.get("evaluation")
        if isinstance(evaluation, dict):
            data = evaluation.get("data")
            if isinstance(data, dict):
                self._run_output(res, ("evaluation", "data"), data)
            else:
                self.ref(res, ("evaluation", "data"), "Data", data)
            metrics: list[tuple[Path_, str]] = [
                (("evaluation", "metrics", i), m)
                for i, m in enumerate(evaluation.get("metrics") or []) if isinstance(m, str)]
            self._one_task(res, metrics)
            if isinstance(source, dict) and isinstance(source.get("path"), str) and metrics:
                self._task_of_file(res, source["path"], metrics)

    def _task_of_file(self, res: Resource, rel: str, metrics: list[tuple[Path_, str]]
                      ) -> None:
        """A model given as a file says what it is: its metrics must be of its task."""
        path = self.config.root / rel
        task = _file_task(path) if path.is_file() else None
        for where, metric in metrics:
            other = _task_of(metric)
            if task is not None and other is not None and other != task:
                self.add(res, where, f"'{metric}' is a {other} metric and {rel} is a "
                         f"{task} model (judged by its outputs)")
                return

    def _one_task(self, res: Resource, metrics: list[tuple[Path_, str]]) -> None:
        """A model is a classifier or a regressor: metrics of both can never all be
        computed, so the first of the other task than the first metric's is refused."""
        first: tuple[str, str] | None = None
        for path, metric in metrics:
            task = _task_of(metric)
            if task is None:
                continue
            if first is None:
                first = (metric, task)
            elif task != first[1]:
                self.add(res, path, f"'{metric}' is a {task} metric and '{first[0]}' a "
                         f"{first[1]} one: a model is a classifier or a regressor, never "
                         "both")
                return

    def _run_output(self, res: Resource, path: Path_, source: dict[str, Any]) -> None:
        """{job, output} or {pipeline, step, output}: each name must exist."""
        if "job" in source:
            job = self.name(res, (*path, "job"), "Job", source["job"])
            pipelines = sorted(p.name for p in self.config.of("Pipeline").values()
                               if any(isinstance(s, dict) and s.get("job") == source["job"]
                                      for s in (p.spec.get("steps") or {}).values()))
            if job is not None and pipelines:
                # Such a job runs only as its pipeline's step: it has no run of its own.
                self.add(res, (*path, "job"), f"job '{job.name}' runs only as a step of "
                         f"pipeline '{pipelines[0]}': name {{pipeline: {pipelines[0]}, "
                         "step: STEP, output: OUTPUT}")
        elif "pipeline" in source:
            pipeline = self.name(res, (*path, "pipeline"), "Pipeline", source["pipeline"])
            steps = pipeline.spec.get("steps") or {} if pipeline else {}
            step = source.get("step")
            found = steps.get(step) if isinstance(step, str) else None
            if pipeline is not None and found is None:
                self.add(res, (*path, "step"), f"pipeline '{pipeline.name}' has no step "
                         f"'{step}'" + did_you_mean(str(step), steps))
            job = (self.config.get("Job", str(found.get("job")))
                   if isinstance(found, dict) else None)
        else:
            return
        output = source.get("output")
        outputs = (job.spec.get("outputs") or {}) if job is not None else {}
        if job is not None and output not in outputs:
            self.add(res, (*path, "output"), f"job '{job.name}' has no output '{output}'"
                     + did_you_mean(str(output), outputs))

    def _endpoint(self, res: Resource, spec: dict[str, Any]) -> None:
        if "compute" in spec:
            self.name(res, ("compute",), "Compute", spec["compute"])
        names: list[str] = []
        for index, deployment in enumerate(spec.get("deployments") or []):
            if not isinstance(deployment, dict):
                continue
            name = deployment.get("name")
            if name in names:
                self.add(res, ("deployments", index, "name"), f"duplicate deployment '{name}'")
            names.append(str(name))
            self.ref(res, ("deployments", index, "model"), "Model", deployment.get("model"))
        traffic = spec.get("traffic") or {}
        mirror = spec.get("mirror") or {}
        for section, shares in (("traffic", traffic), ("mirror", mirror)):
            for deployment in shares:
                if deployment not in names:
                    self.add(res, (section, deployment), f"unknown deployment '{deployment}'"
                             + did_you_mean(deployment, names), at_key=True)
        total = sum(v for v in traffic.values() if isinstance(v, int))
        if traffic and total != 100:
            self.add(res, ("traffic",), f"traffic shares sum to {total}; they must sum to 100")
        for deployment, share in mirror.items():
            if share and traffic.get(deployment):
                self.add(res, ("mirror", deployment), f"deployment '{deployment}' takes live "
                         "traffic; only a deployment with no traffic share can be mirrored")
        collect = spec.get("collect") or {}
        if "datastore" in collect:
            self.name(res, ("collect", "datastore"), "Datastore", collect["datastore"])

    def _promotion(self, res: Resource, spec: dict[str, Any]) -> None:
        model = spec.get("model")
        found = self.name(res, ("model",), "Model", model)
        gates = spec.get("gates") or {}
        if found is not None:
            compared = [(("compare", "metric"), (spec.get("compare") or {}).get("metric"))]
            bounded = [(("gates", "metrics", m), m) for m in gates.get("metrics") or {}]
            for path, metric in compared + bounded:
                if isinstance(metric, str):
                    self._evaluated(res, path, found, metric)
            self._one_task(res, [(p, m) for p, m in compared + bounded if isinstance(m, str)])
        for index, data in enumerate(gates.get("data") or []):
            self.ref(res, ("gates", "data", index), "Data", data)
        rollout = spec.get("rollout")
        if not isinstance(rollout, dict):
            return
        endpoint = self.name(res, ("rollout", "endpoint"), "Endpoint", rollout.get("endpoint"))
        steps = rollout.get("steps") or []
        if steps and (steps[-1] != 100 or steps != sorted(set(steps))):
            self.add(res, ("rollout", "steps"), "steps must rise and end at 100, e.g. "
                     "[10, 50, 100]")
        if endpoint is not None:
            refs = (Ref.parse(str(d.get("model", "")))
                    for d in endpoint.spec.get("deployments") or [] if isinstance(d, dict))
            if model not in {ref.name for ref in refs if ref is not None}:
                self.add(res, ("rollout", "endpoint"), f"endpoint '{endpoint.name}' has no "
                         f"deployment of model '{model}'")


    def _webhook(self, res: Resource, spec: dict[str, Any]) -> None:
        from mlinfra.spec.events import event_problems, url_problem

        url = spec.get("url")
        if isinstance(url, str):
            problem = url_problem(url)
            if problem:
                self.add(res, ("url",), problem)
        for index, message in event_problems(spec.get("events")):
            self.add(res, ("events", index), message)

    def _schedule(self, res: Resource, spec: dict[str, Any]) -> None:
        from mlinfra.spec.events import schedule_problems

        for path, message in schedule_problems(spec):
            self.add(res, path, message)
        run = spec.get("run") or {}
        if isinstance(run, dict):
            if "pipeline" in run:
                self.name(res, ("run", "pipeline"), "Pipeline", run["pipeline"])
            if "monitor" in run:
                self.name(res, ("run", "monitor"), "Monitor", run["monitor"])
    def _monitor(self, res: Resource, spec: dict[str, Any]) -> None:
        """What a monitor watches must exist and be able to give it rows: an endpoint
        with collect:, or a model and a Data asset; its features must be the model's; a
        threshold must be one its metric can reach; labels need a request id column."""
        model: Resource | None = None
        if "endpoint" in spec:
            for other in ("model", "data"):
                if other in spec:
                    self.add(res, (other,), f"{other} is for a monitor of a Data asset; "
                             "this one watches an endpoint's captures", at_key=True)
            endpoint = self.name(res, ("endpoint",), "Endpoint", spec["endpoint"])
            if endpoint is not None:
                if not (endpoint.spec.get("collect") or {}).get("sample"):
                    self.add(res, ("endpoint",), f"endpoint '{endpoint.name}' has no collect: "
                             "(it captures nothing to monitor): add collect: {sample: 0.1} "
                             "to it")
                for deployment in endpoint.spec.get("deployments") or []:
                    ref = Ref.parse(str((deployment or {}).get("model", "")))
                    model = self.config.get("Model", ref.name) if ref else None
                    if model is not None:
                        break
        elif "model" in spec or "data" in spec:
            if "model" not in spec or "data" not in spec:
                self.add(res, (), "a monitor of a Data asset needs both model: and data:")
            model = self.ref(res, ("model",), "Model", spec.get("model"))
            self.name(res, ("data",), "Data", spec.get("data"))
        else:
            self.add(res, (), "a monitor watches an endpoint (endpoint: NAME) or a Data "
                     "asset (model: NAME@ALIAS with data: NAME)")
        if "window" in spec and "rows" in spec:
            self.add(res, ("rows",), "give window: (time) or rows:, not both", at_key=True)
        signals = spec.get("signals") or {}
        drift = signals.get("data_drift") or {}
        features = drift.get("features")
        known = self._model_features(model) if model is not None else None
        if isinstance(features, list) and model is not None and known is not None:
            for index, feature in enumerate(features):
                if feature not in known:
                    self.add(res, ("signals", "data_drift", "features", index),
                             f"model '{model.name}' has no feature '{feature}' (its "
                             f"features: {', '.join(known)}){did_you_mean(str(feature), known)}")
        bounded = {"jensen_shannon": 0.8326, "l_infinity": 1.0, "ks": 1.0,
                   "chi_squared": 1.0}
        defaults = {"numeric": "normalized_wasserstein", "categorical": "jensen_shannon"}
        for section in ("numeric", "categorical"):
            choice = drift.get(section) or {}
            metric = choice.get("metric", defaults[section])
            threshold = choice.get("threshold")
            top = bounded.get(metric)
            if isinstance(threshold, int | float) and top is not None and threshold >= top:
                what = "a p-value" if metric in ("ks", "chi_squared") else "a distance"
                self.add(res, ("signals", "data_drift", section, "threshold"),
                         f"{metric} is {what} below {top:g}: a threshold of {threshold} "
                         "would never drift")
        performance = signals.get("performance")
        if isinstance(performance, dict):
            metric = str(performance.get("metric", "auc"))
            if "min" not in performance and "max" not in performance:
                self.add(res, ("signals", "performance"), "give min: or max: for the metric")
            elif metric in ("rmse", "mae") and "max" not in performance:
                self.add(res, ("signals", "performance"), f"{metric} is better lower: give "
                         f"max: (the highest {metric} that passes)")
            elif metric in ("auc", "accuracy", "r2") and "min" not in performance:
                self.add(res, ("signals", "performance"), f"{metric} is better higher: give "
                         f"min: (the lowest {metric} that passes)")
            evaluation = model.spec.get("evaluation") if model is not None else None
            declared = [str(m) for m in (evaluation or {}).get("metrics") or []] \
                if isinstance(evaluation, dict) else []
            tasks = {_task_of(m) for m in declared} - {None}
            wanted = _task_of(metric)
            if model is not None and len(tasks) == 1 and wanted is not None \
                    and wanted not in tasks:
                kind = "regressor's" if wanted == "regression" else "classifier's"
                task = "a regressor" if "regression" in tasks else "a classifier"
                self.add(res, ("signals", "performance", "metric"), f"{metric} is a {kind} "
                         f"metric; model '{model.name}' is {task} (its evaluation gives "
                         f"{', '.join(declared)})")
            labels = self.ref(res, ("signals", "performance", "labels"), "Data",
                              performance.get("labels"))
            if labels is not None:
                header = self._csv_header(labels)
                if header is not None and "request_id" not in header:
                    self.add(res, ("signals", "performance", "labels"),
                             f"labels '{labels.name}' have no request_id column (columns: "
                             f"{', '.join(header)}): labels are joined to captured rows by "
                             "request id")
                column = str(performance.get("label", "label"))
                if header is not None and column not in header:
                    self.add(res, ("signals", "performance", "label"),
                             f"labels '{labels.name}' have no column '{column}'"
                             f"{did_you_mean(column, header)}")
        for index, action in enumerate(spec.get("on_breach") or []):
            target = (action or {}).get("retrain") if isinstance(action, dict) else None
            if isinstance(target, str) and self.config.get("Pipeline", target) is None \
                    and self.config.get("Job", target) is None:
                known_runs = [*self.config.of("Pipeline"), *self.config.of("Job")]
                self.add(res, ("on_breach", index, "retrain"), f"no pipeline or job "
                         f"'{target}'{did_you_mean(target, known_runs)}")

    def _data_file(self, data: Resource) -> str | None:
        stores = list(self.config.of("Datastore"))
        store_name = data.spec.get("datastore") or self.default_datastore or (
            stores[0] if len(stores) == 1 else None)
        store = self.config.get("Datastore", str(store_name)) if store_name else None
        base = os.path.join(str(self.config.root), str(store.spec.get("path", "."))) \
            if store is not None else str(self.config.root)
        return os.path.join(base, str(data.spec.get("path", "")))

    def _csv_header(self, data: Resource) -> list[str] | None:
        """The columns of a csv Data asset's current file (None: not csv, or unread)."""
        if str(data.spec.get("format", "csv")) != "csv":
            return None
        path = self._data_file(data)
        try:
            with open(str(path), encoding="utf-8", errors="replace") as f:
                first = f.readline()
        except OSError:
            return None
        return [c.strip().strip('"') for c in first.strip().split(",")] if first else None

    def _model_features(self, model: Resource) -> list[str] | None:
        """The columns a model reads: its evaluation's features, else its evaluation
        data's columns but the label (None when they cannot be told)."""
        evaluation = model.spec.get("evaluation")
        if not isinstance(evaluation, dict):
            return None
        if isinstance(evaluation.get("features"), list):
            return [str(f) for f in evaluation["features"]]
        data = evaluation.get("data")
        ref = Ref.parse(data) if isinstance(data, str) else None
        asset = self.config.get("Data", ref.name) if ref else None
        header = self._csv_header(asset) if asset is not None else None
        if header is None:
            return None
        return [c for c in header if c != evaluation.get("label")]
    def _batchendpoint(self, res: Resource, spec: dict[str, Any]) -> None:
        if "compute" in spec:
            self.name(res, ("compute",), "Compute", spec["compute"])
        deployments: dict[str, dict[str, Any]] = {}
        for index, deployment in enumerate(spec.get("deployments") or []):
            if not isinstance(deployment, dict):
                continue
            name = str(deployment.get("name"))
            if name in deployments:
                self.add(res, ("deployments", index, "name"), f"duplicate deployment '{name}'")
            deployments[name] = deployment
            self.ref(res, ("deployments", index, "model"), "Model", deployment.get("model"))
        default = spec.get("default")
        if isinstance(default, str) and deployments and default not in deployments:
            self.add(res, ("default",), f"unknown deployment '{default}'"
                     + did_you_mean(default, deployments))
        chosen_default = default if isinstance(default, str) else next(iter(deployments), None)
        for index, entry in enumerate(spec.get("score") or []):
            if not isinstance(entry, dict):
                continue
            self.ref(res, ("score", index, "data"), "Data", entry.get("data"))
            output = entry.get("output")
            if isinstance(output, str):
                if self.config.get("Data", output) is not None:
                    self.add(res, ("score", index, "output"), f"'{output}' is a declared "
                             "Data (a file in a datastore): a scoring's output is a Data "
                             "asset of its own; name another")
                first = self.score_outputs.setdefault(output, res.label)
                if first != res.label or sum(
                        1 for e in spec.get("score") or []
                        if isinstance(e, dict) and e.get("output") == output) > 1:
                    self.add(res, ("score", index, "output"), f"output '{output}' is "
                             f"written by another scoring too ({first}): each scoring "
                             "writes its own Data asset")
            name = str(entry.get("deployment", chosen_default))
            if "deployment" in entry and name not in deployments:
                self.add(res, ("score", index, "deployment"), f"unknown deployment "
                         f"'{name}'" + did_you_mean(str(name), deployments))
            elif deployments.get(str(name), {}).get("output_action") == "summary_only":
                self.add(res, ("score", index), f"deployment '{name}' has output_action: "
                         "summary_only, so a declared scoring would keep no scores: use "
                         "append_row, or score it with mlinfra batch invoke")

    def _evaluated(self, res: Resource, path: Path_, model: Resource, metric: str) -> None:
        """A promotion judges the metrics its model's evaluation produces: one it does not
        would fail every candidate, so it is refused before anything runs."""
        evaluation = model.spec.get("evaluation")
        if not isinstance(evaluation, dict):
            self.add(res, path, f"model '{model.name}' has no evaluation, so it has no metric "
                     f"'{metric}': add evaluation: {{data, label, metrics}} to it")
            return
        # Without metrics:, a classifier gets auc and accuracy, a regressor rmse, mae, r2.
        produced = list(evaluation.get("metrics") or ["auc", "accuracy", "rmse", "mae", "r2"])
        if metric not in produced:
            self.add(res, path, f"the evaluation of model '{model.name}' does not produce "
                     f"'{metric}' (it produces {', '.join(produced)})"
                     f"{did_you_mean(metric, produced)}: add it to its evaluation.metrics")


def _file_task(path: os.PathLike[str]) -> str | None:
    """"classifier" or "regression" as an ONNX file's outputs say (as evaluation reads
    them: labels, class maps or a probability table make a classifier; one number a
    row, a regressor), or None when the file cannot be read."""
    import onnx
    from onnx import TensorProto

    try:
        model = onnx.load(os.fspath(path), load_external_data=False)
    except Exception:  # not ONNX: registration says why
        return None
    floats = (TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16)
    for output in model.graph.output:
        kind = output.type.WhichOneof("value")
        if kind in ("sequence_type", "map_type"):
            return "classifier"
        if kind != "tensor_type":
            continue
        tensor = output.type.tensor_type
        if tensor.elem_type not in floats:
            return "classifier"
        dims = tensor.shape.dim
        if len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value >= 2:
            return "classifier"
    return "regression" if model.graph.output else None


def _task_of(metric: str) -> str | None:
    from mlinfra.spec.schemas import EVALUATION_METRICS

    if metric in EVALUATION_METRICS["regression"]:
        return "regression"
    if metric in EVALUATION_METRICS["binary"] or metric in EVALUATION_METRICS["multiclass"]:
        return "classifier"
    return None


def check_references(config: Config) -> list[Problem]:
    return _References(config).run()

"""The dependency graph: which resources a resource refers to, in what order to walk them."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Mapping
from typing import Any

from mlinfra.spec.model import Config, Ref, Resource

_USES_WORKSPACE = {"Data", "Job", "Pipeline", "Model", "Endpoint", "Promotion",
                   "BatchEndpoint", "BatchScore"}


def address(kind: str, name: str) -> str:
    return f"{kind.lower()}.{name}"


def _data_name(text: Any) -> str | None:
    if not isinstance(text, str) or "${" in text:
        return None
    ref = Ref.parse(text)
    return ref.name if ref else None


def references(res: Resource, config: Config, workspace: str) -> list[str]:
    """Addresses `res` depends on, from the references in its fields."""
    spec = res.spec
    deps: list[str] = []

    def add(kind: str, name: Any) -> None:
        if isinstance(name, str) and config.get(kind, name) is not None:
            deps.append(address(kind, name))

    if res.kind in _USES_WORKSPACE:
        deps.append(workspace)
    if res.kind == "Workspace":
        add("Datastore", spec.get("default_datastore"))
    elif res.kind == "Data":
        store = spec.get("datastore") or default_datastore(config)
        add("Datastore", store)
    elif res.kind == "Job":
        add("Environment", spec.get("environment"))
        add("Compute", spec.get("compute"))
        for value in (spec.get("inputs") or {}).values():
            add("Data", _data_name(value))
            if isinstance(value, str) and value.startswith("${jobs."):
                add("Job", value[len("${jobs."):].split(".", 1)[0])
    elif res.kind == "Pipeline":
        for step in (spec.get("steps") or {}).values():
            add("Job", step.get("job"))
            job = config.get("Job", str(step.get("job")))
            inputs = {**((job.spec.get("inputs") or {}) if job else {}),
                      **(step.get("inputs") or {})}
            for value in inputs.values():
                add("Data", _data_name(value))
    elif res.kind == "Model":
        source = spec.get("from") or {}
        add("Job", source.get("job"))
        add("Pipeline", source.get("pipeline"))
        data = (spec.get("evaluation") or {}).get("data")
        if isinstance(data, dict):  # a run's output: after the job or pipeline ran
            add("Job", data.get("job"))
            add("Pipeline", data.get("pipeline"))
        else:
            add("Data", _data_name(data))
    elif res.kind == "Endpoint":
        add("Compute", spec.get("compute"))
        for deployment in spec.get("deployments") or []:
            model = Ref.parse(str(deployment.get("model", "")))
            add("Model", model.name if model else None)
        add("Datastore", (spec.get("collect") or {}).get("datastore"))
        # An alias a Promotion moves is resolved after that promotion ran.
        for deployment in spec.get("deployments") or []:
            model = Ref.parse(str(deployment.get("model", "")))
            for promotion in config.of("Promotion").values():
                if model and model.alias and promotion.spec.get("model") == model.name and (
                        promotion.spec.get("alias", "champion") == model.alias):
                    add("Promotion", promotion.name)
    elif res.kind == "Schedule":
        run = spec.get("run") or {}
        add("Pipeline", run.get("pipeline"))
        add("Monitor", run.get("monitor"))
    elif res.kind == "Monitor":
        add("Endpoint", spec.get("endpoint"))
        model = Ref.parse(str(spec.get("model", "")))
        add("Model", model.name if model else None)
        add("Data", _data_name(spec.get("data")))
        performance = (spec.get("signals") or {}).get("performance") or {}
        add("Data", _data_name(performance.get("labels")))
    elif res.kind == "BatchEndpoint":
        add("Compute", spec.get("compute"))
        for deployment in spec.get("deployments") or []:
            _model_and_promotion(str(deployment.get("model", "")), config, add)
    elif res.kind == "BatchScore":
        add("BatchEndpoint", spec.get("endpoint"))
        add("Data", _data_name(spec.get("data")))
        endpoint = config.get("BatchEndpoint", str(spec.get("endpoint")))
        for deployment in (endpoint.spec.get("deployments") or []) if endpoint else []:
            if deployment.get("name") == spec.get("deployment"):
                _model_and_promotion(str(deployment.get("model", "")), config, add)
    elif res.kind == "Promotion":
        # NOTE: not on its rollout endpoint: the endpoint waits for the promotion.
        add("Model", spec.get("model"))
        for data in (spec.get("gates") or {}).get("data") or []:
            add("Data", _data_name(data))
    return sorted(set(deps))


def _model_and_promotion(text: str, config: Config, add: Any) -> None:
    """A model reference's Model and, for an alias a Promotion moves, that Promotion:
    what uses `fraud@champion` is applied after the promotion that may move it."""
    model = Ref.parse(text)
    if model is None:
        return
    add("Model", model.name)
    for promotion in config.of("Promotion").values():
        if model.alias and promotion.spec.get("model") == model.name and (
                promotion.spec.get("alias", "champion") == model.alias):
            add("Promotion", promotion.name)


def default_datastore(config: Config) -> str | None:
    """The datastore Data uses when it names none: the workspace's, or the only one."""
    for workspace in config.of("Workspace").values():
        if workspace.spec.get("default_datastore"):
            return str(workspace.spec["default_datastore"])
    stores = list(config.of("Datastore"))
    return stores[0] if len(stores) == 1 else None


def topological(deps: Mapping[str, Iterable[str]]) -> list[str]:
    """Nodes with their dependencies first; ties in name order. Edges to nodes not in
    `deps` are ignored."""
    sorter: graphlib.TopologicalSorter[str] = graphlib.TopologicalSorter()
    for node in sorted(deps):
        sorter.add(node, *(d for d in deps[node] if d in deps))
    order: list[str] = []
    sorter.prepare()
    while sorter.is_active():
        ready = sorted(sorter.get_ready())
        order.extend(ready)
        sorter.done(*ready)
    return order


def closure(start: Iterable[str], deps: Mapping[str, Iterable[str]]) -> set[str]:
    """`start` and everything it depends on, transitively."""
    seen: set[str] = set()
    stack = list(start)
    while stack:
        node = stack.pop()
        if node not in seen:
            seen.add(node)
            stack.extend(deps.get(node, ()))
    return seen

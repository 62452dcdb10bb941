"""A model version's lineage as a graph: the run that trained it, the pipeline run
around it and the runs whose outputs it read, the commit, the data versions, the
environment, and the endpoints that serve it now. Each node links to its page."""

from __future__ import annotations

from typing import Any

from mlinfra.registry.models import ModelVersion
from mlinfra.runs.store import RunStore
from mlinfra.state.store import StateStore

_UPSTREAM_MARK = "(run "


class Graph:
    """Nodes (id, label, kind, href) and edges (from, to), from cause to effect."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.edges: list[dict[str, str]] = []

    def node(self, node_id: str, label: str, kind: str, href: str = "") -> str:
        self.nodes.setdefault(node_id, {"id": node_id, "label": label, "kind": kind,
                                        "href": href})
        return node_id

    def edge(self, source: str, target: str) -> None:
        if {"from": source, "to": target} not in self.edges:
            self.edges.append({"from": source, "to": target})

    def to_json(self) -> dict[str, Any]:
        return {"nodes": list(self.nodes.values()), "edges": self.edges}


def serving(store: StateStore, version: ModelVersion) -> list[tuple[str, str]]:
    """(endpoint, deployment) pairs that serve `version` now, as the state records what
    each endpoint's server was given."""
    out = []
    for resource in store.resources().values():
        if resource.kind != "Endpoint":
            continue
        served = resource.outputs.get("served") or {}
        for deployment, ref in sorted(served.items()):
            if ref == version.ref:
                out.append((resource.name, str(deployment)))
    return out


def lineage(store: StateStore, version: ModelVersion) -> Graph:
    graph = Graph()
    model = graph.node(f"model:{version.ref}", version.ref, "model",
                       f"/models/{version.name}/{version.version}")
    runs = RunStore(store)
    run = runs.get(version.run_id) if version.run_id else None
    if run is not None:
        node = graph.node(f"run:{run.id}", f"run {run.id}", "run", f"/runs/{run.id}")
        graph.edge(node, model)
        _run_sources(graph, runs, run, node, set())
        if run.parent:
            parent = graph.node(f"run:{run.parent}", f"pipeline run {run.parent}", "run",
                                f"/runs/{run.parent}")
            graph.edge(parent, node)
    else:
        for label in version.lineage.get("data") or []:
            graph.edge(_data(graph, str(label)), model)
    evaluated = version.metrics.get("evaluated_on")
    if isinstance(evaluated, str) and evaluated:
        name = evaluated.split(":", 1)[0]
        graph.edge(graph.node(f"data:{evaluated}", f"evaluated on {evaluated}", "data",
                              f"/data#{name}"), model)
    for endpoint, deployment in serving(store, version):
        node = graph.node(f"endpoint:{endpoint}", f"endpoint {endpoint} ({deployment})",
                          "endpoint", f"/endpoints#{endpoint}")
        graph.edge(model, node)
    return graph


def _data(graph: Graph, label: str) -> str:
    name = label.split(":", 1)[0]
    return graph.node(f"data:{label}", f"data {label}", "data", f"/data#{name}")


def _run_sources(graph: Graph, runs: RunStore, run: Any, node: str, seen: set[str]) -> None:
    """The commit, environment and inputs of `run`, and of the runs it read from."""
    if run.id in seen:
        return
    seen.add(run.id)
    commit = (run.git or {}).get("commit")
    if commit:
        dirty = " (dirty)" if run.git.get("dirty") else ""
        graph.edge(graph.node(f"commit:{commit}", f"commit {commit[:12]}{dirty}", "commit"),
                   node)
    venv = (run.environment or {}).get("venv")
    if venv:
        graph.edge(graph.node(f"env:{venv}", f"environment {str(venv).rsplit('/', 1)[-1]}",
                              "environment", f"/runs/{run.id}#environment"), node)
    for label in run.inputs.values():
        text = str(label)
        if _UPSTREAM_MARK in text and text.endswith(")"):
            upstream_id = text.rsplit(_UPSTREAM_MARK, 1)[1][:-1]
            upstream = runs.get(upstream_id)
            if upstream is None:
                continue
            up = graph.node(f"run:{upstream.id}", f"run {upstream.id}", "run",
                            f"/runs/{upstream.id}")
            graph.edge(up, node)
            _run_sources(graph, runs, upstream, up, seen)
        else:
            graph.edge(_data(graph, text), node)

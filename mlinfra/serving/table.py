"""The routing table of an endpoint: its deployments, traffic weights and mirrors.

A table is immutable once built; a new configuration builds a new table (reusing the
loaded models whose files did not change, loading and warming the others) and the
server swaps one reference. Requests under way keep the table they started with.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlinfra.serving.batcher import Batcher
from mlinfra.serving.model import LoadedModel


@dataclass
class Deployment:
    """`spec` is its entry in the config: an unchanged entry keeps this deployment.
    `label` names its model version; `headers` say who answered, on every response."""

    name: str
    model: LoadedModel
    batcher: Batcher
    timeout_s: float
    spec: dict[str, Any] = field(default_factory=dict)
    label: str = field(init=False)
    headers: list[tuple[bytes, bytes]] = field(init=False)

    def __post_init__(self) -> None:
        self.label = f"{self.model.name}:{self.model.version}"
        self.headers = [(b"mlinfra-deployment", self.name.encode()),
                        (b"mlinfra-model", self.label.encode())]


@dataclass
class Table:
    """Invariant: every deployment's model answered a warm-up; weights sum to 100."""

    endpoint: str
    generation: int
    deployments: dict[str, Deployment]
    weights: list[tuple[str, float]]
    mirror: dict[str, float] = field(default_factory=dict)
    key_hashes: list[bytes] = field(default_factory=list)
    max_request_bytes: int = 1 << 20
    collect_sample: float = 0.0
    collect_path: str | None = None  # the captures' folder (serving.captures)
    collect_retention_bytes: int | None = None
    collect_retention_s: float | None = None
    # an object-storage collect_path (s3://...): the endpoint and region to reach it
    collect_storage: dict[str, str] = field(default_factory=dict)

    def pick(self, pinned: str | None = None) -> Deployment | None:
        if pinned is not None:
            return self.deployments.get(pinned)
        roll = random.random() * 100
        for name, cumulative in self.weights:
            if roll < cumulative:
                return self.deployments[name]
        return self.deployments[self.weights[-1][0]] if self.weights else None

    def serving(self) -> list[Deployment]:
        """The deployments that take traffic (a share above 0), in the split's order."""
        return [self.deployments[name] for name, _ in self.weights]

    def versions(self) -> list[str]:
        """The model versions answering requests: those of the deployments taking
        traffic, as V2 model metadata lists them."""
        return list(dict.fromkeys(str(d.model.version) for d in self.serving()))

    def pick_version(self, version: str) -> Deployment | None:
        """A deployment taking traffic that serves `version`, chosen by the split among
        those that do."""
        shares, previous = [], 0.0
        for name, cumulative in self.weights:
            if str(self.deployments[name].model.version) == version:
                shares.append((name, cumulative - previous))
            previous = cumulative
        if not shares:
            return None
        roll = random.random() * sum(share for _, share in shares)
        for name, share in shares:
            roll -= share
            if roll < 0:
                return self.deployments[name]
        return self.deployments[shares[-1][0]]


def read_config(path: Path) -> dict[str, Any]:
    return dict(json.loads(path.read_text()))


def build(config: dict[str, Any], previous: Table | None = None) -> Table:
    """A table for `config`, reusing `previous`'s deployments whose config entry is
    unchanged (model and request settings alike)."""
    old = previous.deployments if previous else {}
    deployments: dict[str, Deployment] = {}
    for name, spec in config["deployments"].items():
        reuse = old.get(name)
        if reuse is not None and reuse.spec == spec:
            deployments[name] = reuse
            continue
        model = LoadedModel.load(spec["model"], int(spec["version"]), Path(spec["path"]),
                                 spec["sha256"])
        batcher = Batcher(model, int(spec["max_batch_size"]),
                          float(spec.get("max_batch_delay_ms", 2)) / 1000)
        deployments[name] = Deployment(name, model, batcher, float(spec["timeout_ms"]) / 1000,
                                       dict(spec))
    weights, total = [], 0.0
    for name, share in config.get("traffic", {}).items():
        if share > 0:
            total += share
            weights.append((name, total))
    collect = config.get("collect") or {}
    return Table(
        endpoint=config["endpoint"], generation=int(config["generation"]),
        deployments=deployments, weights=weights,
        mirror={k: float(v) for k, v in (config.get("mirror") or {}).items() if v},
        key_hashes=[bytes.fromhex(h) for h in config.get("key_hashes", [])],
        max_request_bytes=int(config.get("max_request_bytes", 1 << 20)),
        collect_sample=float(collect.get("sample", 0.0)), collect_path=collect.get("path"),
        collect_retention_bytes=collect.get("retention_bytes"),
        collect_retention_s=collect.get("retention_s"),
        collect_storage=dict(collect.get("storage") or {}))


def retired(previous: Table, current: Table) -> list[Deployment]:
    """Deployments of `previous` that `current` no longer uses."""
    kept = {id(d) for d in current.deployments.values()}
    return [d for d in previous.deployments.values() if id(d) not in kept]

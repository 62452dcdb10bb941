"""Counters and latency histograms per deployment, in Prometheus' text format."""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field

BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (inf past the last)."""
        if not self.n:
            return 0.0
        rank, seen = q * self.n, 0
        for bound, count in zip((*self.buckets, float("inf")), self.counts, strict=True):
            seen += count
            if seen >= rank:
                return bound
        return float("inf")


class Metrics:
    """This worker's counts since it started."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = defaultdict(int)
        self.latency: dict[str, Histogram] = {}
        self.batches: dict[str, Histogram] = {}
        self.mirror: dict[tuple[str, str], int] = defaultdict(int)

    def observe(self, deployment: str, status: int, seconds: float) -> None:
        self.requests[(deployment, status)] += 1
        hist = self.latency.get(deployment)
        if hist is None:
            hist = self.latency[deployment] = Histogram(BUCKETS_S)
        hist.observe(seconds)

    def observe_batches(self, deployment: str, sizes: list[int]) -> None:
        hist = self.batches.get(deployment)
        if hist is None:
            hist = self.batches[deployment] = Histogram(tuple(float(b) for b in BATCH_BUCKETS))
        for size in sizes:
            hist.observe(size)

    def summary(self) -> dict[str, dict[str, float]]:
        """Per deployment: requests, errors (5xx), p99 upper bound in ms."""
        out: dict[str, dict[str, float]] = {}
        for (deployment, status), count in self.requests.items():
            entry = out.setdefault(deployment, {"requests": 0, "errors": 0, "p99_ms": 0.0})
            entry["requests"] += count
            if status >= 500:
                entry["errors"] += count
        for deployment, hist in self.latency.items():
            out.setdefault(deployment, {"requests": 0, "errors": 0, "p99_ms": 0.0})[
                "p99_ms"] = hist.quantile(0.99) * 1000
        return out

    def render(self, endpoint: str) -> str:
        lines = ["# HELP mlinfra_requests_total Requests answered, by deployment and status.",
                 "# TYPE mlinfra_requests_total counter"]
        for (deployment, status), count in sorted(self.requests.items()):
            lines.append(f'mlinfra_requests_total{{endpoint="{endpoint}",deployment='
                         f'"{deployment}",code="{status}"}} {count}')
        for name, hists, help_ in (
                ("mlinfra_request_seconds", self.latency, "Request latency."),
                ("mlinfra_batch_size", self.batches, "Requests scored per onnxruntime call.")):
            lines += [f"# HELP {name} {help_}", f"# TYPE {name} histogram"]
            for deployment, hist in sorted(hists.items()):
                labels = f'endpoint="{endpoint}",deployment="{deployment}"'
                seen = 0
                for bound, count in zip(hist.buckets, hist.counts, strict=False):
                    seen += count
                    lines.append(f'{name}_bucket{{{labels},le="{bound:g}"}} {seen}')
                lines.append(f'{name}_bucket{{{labels},le="+Inf"}} {hist.n}')
                lines.append(f"{name}_sum{{{labels}}} {hist.total:.6f}")
                lines.append(f"{name}_count{{{labels}}} {hist.n}")
        lines += ["# HELP mlinfra_mirror_total Shadow requests, by agreement with the answer.",
                  "# TYPE mlinfra_mirror_total counter"]
        for (deployment, outcome), count in sorted(self.mirror.items()):
            lines.append(f'mlinfra_mirror_total{{endpoint="{endpoint}",deployment='
                         f'"{deployment}",outcome="{outcome}"}} {count}')
        return "\n".join(lines) + "\n"

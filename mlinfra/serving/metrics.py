"""Counters and latency histograms per deployment, in Prometheus' text format, and
their snapshots, which add up across the workers of a server (see `shared`)."""

# NOTE: these counters are kept by hand, not by prometheus_client's multiprocess mode,
# because that costs more than 5% of requests/s. benchmarks/serving.py --metrics-only
# shows it in the rows "metrics builtin" and "metrics prometheus" (the same endpoint
# served both ways, alternating rounds, one run): prometheus_client took 14-20 us more
# server CPU per request (201 vs 184 us at 64 connections, 249 vs 235 at 8; in another
# run 196 vs 180 and 198 vs 178), so -6% to -10% of requests/s when the cores are the
# limit; the rows' median requests/s were -16% and -24% (2784 vs 3325, 1617 vs 2130 at
# 64 and 8 connections; 2 workers, 2 shared cores). An in-process micro-benchmark agrees:
# 19.4 us a request with prometheus_client multiprocess, 1.2 us here. The text format and
# names are Prometheus' own, and the studio reads them with prometheus_client's parser.

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

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
    """Counts since a worker started, or the sum of several workers' (`add`)."""

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

    def snapshot(self) -> dict[str, Any]:
        """Every count, as JSON."""
        return {"requests": [[d, s, n] for (d, s), n in self.requests.items()],
                "latency": {d: [h.counts, h.total] for d, h in self.latency.items()},
                "batches": {d: [h.counts, h.total] for d, h in self.batches.items()},
                "mirror": [[d, o, n] for (d, o), n in self.mirror.items()]}

    def add(self, snapshot: dict[str, Any]) -> None:
        """Add another worker's `snapshot` to these counts."""
        for deployment, status, count in snapshot.get("requests", []):
            self.requests[(deployment, int(status))] += int(count)
        for deployment, outcome, count in snapshot.get("mirror", []):
            self.mirror[(deployment, outcome)] += int(count)
        for key, hists, buckets in (("latency", self.latency, BUCKETS_S),
                                    ("batches", self.batches,
                                     tuple(float(b) for b in BATCH_BUCKETS))):
            for deployment, (counts, total) in snapshot.get(key, {}).items():
                hist = hists.get(deployment)
                if hist is None:
                    hist = hists[deployment] = Histogram(buckets)
                if len(counts) != len(hist.counts):
                    continue  # written with other buckets: not comparable
                hist.counts = [a + int(b) for a, b in zip(hist.counts, counts, strict=True)]
                hist.total += float(total)
                hist.n += sum(int(c) for c in counts)

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

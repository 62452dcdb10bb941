"""What an endpoint's server says at /metrics, read as Prometheus reads it.

The text is parsed by `prometheus_client`'s parser; latency percentiles come from the
request histogram as Prometheus' histogram_quantile computes them (linear within the
bucket the rank falls in), and the request rate from two scrapes, the one before kept
in memory per endpoint.
"""

from __future__ import annotations

import math
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

PERCENTILES = (0.5, 0.95, 0.99)


@dataclass
class DeploymentStats:
    """One deployment's counters at one scrape, and what follows from them."""

    requests: float = 0.0
    errors: float = 0.0  # answers with a 5xx status
    rejected: float = 0.0  # 4xx
    buckets: list[tuple[float, float]] = field(default_factory=list)  # (le, cumulative)
    latency_sum: float = 0.0
    rate: float | None = None  # requests per second since the scrape before

    def percentile(self, q: float) -> float | None:
        """Seconds below which `q` of the requests were answered (None: no requests)."""
        return histogram_quantile(q, self.buckets)


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile over cumulative (upper bound, count) buckets."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    total = ordered[-1][1]
    rank = q * total
    previous_bound, previous_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return previous_bound  # the highest finite bound, as Prometheus answers
            if count == previous_count:
                return bound
            return previous_bound + (bound - previous_bound) * \
                (rank - previous_count) / (count - previous_count)
        previous_bound, previous_count = bound, count
    return previous_bound


def parse(text: str) -> dict[str, DeploymentStats]:
    """The exposition text -> stats per deployment."""
    out: dict[str, DeploymentStats] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            deployment = sample.labels.get("deployment")
            if deployment is None:
                continue
            stats = out.setdefault(deployment, DeploymentStats())
            if sample.name == "mlinfra_requests_total":
                code = int(sample.labels.get("code", "0") or 0)
                stats.requests += sample.value
                if code >= 500:
                    stats.errors += sample.value
                elif code >= 400:
                    stats.rejected += sample.value
            elif sample.name == "mlinfra_request_seconds_bucket":
                stats.buckets.append((float(sample.labels["le"]), sample.value))
            elif sample.name == "mlinfra_request_seconds_sum":
                stats.latency_sum = sample.value
    return out


def fetch(url: str, key: str | None, timeout: float = 2.0) -> str:
    request = urllib.request.Request(url.rstrip("/") + "/metrics")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    with urllib.request.urlopen(request, timeout=timeout) as answer:
        return str(answer.read().decode("utf-8", "replace"))


class Scraper:
    """Scrapes endpoints and keeps each one's last scrape, for rates."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, tuple[float, dict[str, DeploymentStats]]] = {}

    def scrape(self, name: str, url: str, key: str | None) -> dict[str, Any]:
        """{"stats": {deployment: DeploymentStats}, "error": ""} for endpoint `name`."""
        try:
            text = fetch(url, key)
        except urllib.error.HTTPError as err:
            return {"stats": {}, "error": f"{url}/metrics answered HTTP {err.code}"}
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            return {"stats": {}, "error": f"{url} cannot be reached ({reason})"}
        now = time.monotonic()
        stats = parse(text)
        with self._lock:
            before = self._last.get(name)
            self._last[name] = (now, stats)
        if before is not None and now > before[0]:
            elapsed = now - before[0]
            for deployment, current in stats.items():
                old = before[1].get(deployment)
                if old is not None and current.requests >= old.requests:
                    current.rate = (current.requests - old.requests) / elapsed
        return {"stats": stats, "error": ""}

"""Shadow traffic: a copy of a request scored on a mirrored deployment, whose answer is
compared with the one returned and never returned itself."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Coroutine
from typing import Any

import numpy as np

from mlinfra.serving.metrics import Metrics
from mlinfra.serving.table import Deployment, Table


def mirror(table: Table, answered: Deployment, feeds: dict[str, np.ndarray],
           outputs: list[np.ndarray], metrics: Metrics,
           spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
    """Send a copy to each mirrored deployment with its share of requests."""
    for name, share in table.mirror.items():
        shadow = table.deployments.get(name)
        if shadow is not None and shadow is not answered and random.random() * 100 < share:
            spawn(_shadow(shadow, feeds, outputs, metrics))


async def _shadow(shadow: Deployment, feeds: dict[str, np.ndarray],
                  answer: list[np.ndarray], metrics: Metrics) -> None:
    """Score a copy on a mirrored deployment; record agreement, answer no one."""
    try:
        async with asyncio.timeout(shadow.timeout_s):
            got = await shadow.batcher.infer(feeds)
        same = len(got) == len(answer) and all(
            g.shape == a.shape and np.allclose(g, a, rtol=1e-4, atol=1e-6)
            for g, a in zip(got, answer, strict=True))
        outcome = "agree" if same else "differ"
    except Exception:
        outcome = "error"
    metrics.mirror[(shadow.name, outcome)] += 1

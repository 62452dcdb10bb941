"""Is a win noise? A paired bootstrap of the difference between candidate and champion.

Both versions are scored on the candidate's evaluation data; the rows are resampled
with repeats (the same rows for both, so the pair is compared on each resample), and
the 2.5th and 97.5th percentiles of the differences make a 95% interval (Efron's
percentile interval). An interval that holds 0 says the data cannot tell the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass

from mlinfra.providers.base import Context
from mlinfra.registry.models import ModelVersion
from mlinfra.runs.jobs import artifact_store
from mlinfra.spec.model import Resource

RESAMPLES = 1000


@dataclass(frozen=True)
class Compared:
    """One metric of both versions on the same rows: values, candidate - champion, and
    the bootstrap interval of that difference (None when too few resamples could be
    scored)."""

    metric: str
    champion: float
    candidate: float
    difference: float
    low: float | None
    high: float | None
    resamples: int


def compare(ctx: Context, model: Resource, candidate: ModelVersion, champion: ModelVersion,
            resamples: int = RESAMPLES, seed: int = 0) -> tuple[str, list[Compared]]:
    """(the data both were scored on, each evaluated metric compared); raises
    ModelInvalid when a version cannot be scored on it."""
    import numpy as np

    from mlinfra.registry.evaluate import ModelInvalid
    from mlinfra.registry.register import ModelHandler

    store = artifact_store(ctx)
    handler = ModelHandler()
    new = handler.predictions(model, ctx, store.path(candidate.sha256))
    old = handler.predictions(model, ctx, store.path(champion.sha256))
    rng = np.random.default_rng(seed)
    differences: dict[str, list[float]] = {m: [] for m in new.metrics}
    for _ in range(resamples):
        rows = rng.integers(0, new.rows, new.rows)
        try:
            a, b = new.score(rows), old.score(rows)
        except ModelInvalid:  # a resample without both classes has no auc
            continue
        for metric in new.metrics:
            differences[metric].append(a[metric] - b[metric])
    full_new, full_old = new.score(), old.score()
    out = []
    for metric in new.metrics:
        found = differences[metric]
        enough = len(found) >= resamples // 2
        low, high = (np.percentile(found, [2.5, 97.5]) if enough else (None, None))
        out.append(Compared(metric, full_old[metric], full_new[metric],
                            full_new[metric] - full_old[metric],
                            float(low) if low is not None else None,
                            float(high) if high is not None else None, len(found)))
    return new.data, out

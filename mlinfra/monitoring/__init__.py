"""Monitoring: what an endpoint serves, judged against what its model was trained on.

An endpoint's `collect:` captures scored rows as Parquet, partitioned by hour
(`mlinfra.serving.captures` writes them; `captures` reads them). Each model version gets
a reference profile when it is registered (`reference`, `profile`): quantile sketches
and frequencies of the data its run read, and of the model's outputs on it. A `Monitor`
cuts the captures into windows (by time or rows), judges each against the profile of
the version that served it (`monitor`: data drift, prediction drift, data quality,
performance on labelled rows; `metrics`), records the verdicts in the state (`records`)
and is breached after `alert_after` drifting windows in a row (`verdicts`). `planning` says
in a plan what a breach would cause.

`run(session, name)` is the one entry point for schedulers (the agent, a CronJob).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Verdict", "run", "status"]


def __getattr__(name: str) -> Any:
    # NOTE: imported on first use: NumPy costs more than a plan takes, and the plan and
    # the providers import this package's light modules (captures, records).
    if name in __all__:
        from importlib import import_module

        return getattr(import_module("mlinfra.monitoring.verdicts"), name)
    raise AttributeError(name)

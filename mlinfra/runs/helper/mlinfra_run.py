"""Log metrics and params from a script that mlinfra runs. No dependencies.

    from mlinfra_run import log_metric, log_param
    log_param("C", 1.0)
    log_metric("val_auc", 0.91, step=3)

mlinfra puts this folder on the job's PYTHONPATH and reads what is logged into the
run as it arrives. Run outside mlinfra, the calls print what they would log.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import time
from typing import Any

_DIR = os.environ.get("MLINFRA_RUN_DIR")


def _write(record: dict[str, Any]) -> None:
    if not _DIR:
        print(f"[mlinfra_run] {record}")
        return
    with open(os.path.join(_DIR, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def log_metric(key: str, value: float, step: int | None = None) -> None:
    """Record a number; with `step`, one point of a curve."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"log_metric({key!r}, {value!r}): the value must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"log_metric({key!r}, {value!r}): the value must be finite")
    if step is not None and (isinstance(step, bool) or not isinstance(step, numbers.Integral)):
        raise TypeError(f"log_metric({key!r}, step={step!r}): step must be a whole number")
    _write({"type": "metric", "key": str(key), "value": number,
            "step": None if step is None else int(step), "at": time.time()})


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    for key, value in metrics.items():
        log_metric(key, value, step)


def log_param(key: str, value: Any) -> None:
    if not isinstance(value, str | int | float | bool | type(None)):
        value = str(value)
    _write({"type": "param", "key": str(key), "value": value, "at": time.time()})

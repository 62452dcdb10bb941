"""A Data asset's expectations, checked with Great Expectations (ephemeral, offline)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlinfra.errors import MlinfraError


@dataclass(frozen=True)
class CheckResult:
    expectation: str
    kwargs: dict[str, Any]
    success: bool
    unexpected: int | None
    total: int | None
    detail: str = ""

    def describe(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.kwargs.items())
        counts = (f": {self.unexpected} of {self.total} rows fail"
                  if self.unexpected is not None else "")
        return f"{self.expectation}({args}){counts}{self.detail}"


class DataCheckFailed(MlinfraError):
    def __init__(self, name: str, failures: list[CheckResult]) -> None:
        lines = "\n".join(f"  - {f.describe()}" for f in failures)
        super().__init__(f"data {name} failed {len(failures)} expectation"
                         f"{'s' if len(failures) != 1 else ''}:\n{lines}")
        self.failures = failures


def _read(path: Path, fmt: str) -> Any:
    import pandas as pd

    if fmt == "csv":
        return pd.read_csv(path)
    if fmt == "jsonl":
        return pd.read_json(path, lines=True)
    return pd.read_parquet(path)


def _class_name(snake: str) -> str:
    return "".join(part.capitalize() for part in snake.split("_"))


def check(name: str, path: Path, fmt: str, expectations: list[dict[str, Any]]
          ) -> list[CheckResult]:
    """Run every expectation on the data; returns one result per expectation."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # offline: no usage statistics
    import great_expectations as gx
    import great_expectations.expectations as gxe

    frame = _read(path, fmt)
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(f"mlinfra-{name}")
    asset = source.add_dataframe_asset(name=name)
    batch = asset.add_batch_definition_whole_dataframe("all").get_batch(
        batch_parameters={"dataframe": frame})
    results = []
    for item in expectations:
        (snake, kwargs), = item.items()
        cls = getattr(gxe, _class_name(snake), None)
        if cls is None:
            results.append(CheckResult(snake, kwargs, False, None, None,
                                       ": Great Expectations has no such expectation"))
            continue
        try:
            outcome = batch.validate(cls(**kwargs))
        except Exception as err:  # bad arguments: reported as a failed expectation
            results.append(CheckResult(snake, kwargs, False, None, None, f": {err}"))
            continue
        detail = outcome.result or {}
        results.append(CheckResult(snake, kwargs, bool(outcome.success),
                                   detail.get("unexpected_count"),
                                   detail.get("element_count"),
                                   "" if outcome.success or "unexpected_count" in detail
                                   else f": {_exception(outcome)}"))
    return results


def _exception(outcome: Any) -> str:
    """GE keeps the error per metric: {metric id: {"exception_message": ...}}."""
    info = getattr(outcome, "exception_info", None) or {}
    for value in info.values() if isinstance(info, dict) else ():
        if isinstance(value, dict) and value.get("exception_message"):
            return str(value["exception_message"]).splitlines()[0][:200]
    return "failed"


def require(name: str, path: Path, fmt: str, expectations: list[dict[str, Any]]) -> None:
    failures = [r for r in check(name, path, fmt, expectations) if not r.success]
    if failures:
        raise DataCheckFailed(name, failures)

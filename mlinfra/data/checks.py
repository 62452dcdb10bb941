"""A Data asset's expectations, checked with Great Expectations (ephemeral, offline).

Every verdict is recorded in the state store by (asset, content sha256, expectations
digest): the same content is never checked twice against the same expectations, and
`mlinfra data validate` shows what apply found. Content that fails takes no version.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.state.cloudevents import with_see
from mlinfra.state.model import digest
from mlinfra.state.store import Cursor, StateStore, upsert
from mlinfra.state.work import Event


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


class DataChanged(MlinfraError):
    """The file's bytes are not the content the caller meant to check."""


def _read(path: Path, fmt: str, sha256: str | None) -> Any:
    """The data as a DataFrame; a file is read once, from the bytes whose sha256 is
    checked, so the verdict is about exactly that content."""
    import pandas as pd

    source: Any = path
    if path.is_file():
        raw = path.read_bytes()
        if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
            raise DataChanged(f"{path} changed while it was being checked: apply again")
        source = io.BytesIO(raw)
    try:
        if fmt == "csv":
            return pd.read_csv(source)
        if fmt == "jsonl":
            return pd.read_json(source, lines=True)
        return pd.read_parquet(source)
    except Exception as err:  # pandas and its engines raise many types for bad files
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else repr(err)
        raise MlinfraError(f"cannot read {path} as {fmt} to check its expectations: "
                           f"{first}") from err


def check(name: str, path: Path, fmt: str, expectations: list[dict[str, Any]],
          sha256: str | None = None) -> list[CheckResult]:
    """Run every expectation on the data; returns one result per expectation. With
    `sha256`, a file whose bytes are not that content raises DataChanged."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")  # offline: no usage statistics
    import great_expectations as gx
    import great_expectations.expectations
    from great_expectations.exceptions.exceptions import ExpectationNotFoundError
    from great_expectations.expectations.registry import get_expectation_impl

    frame = _read(path, fmt, sha256)
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
        try:
            cls = get_expectation_impl(snake)
        except ExpectationNotFoundError:
            results.append(CheckResult(snake, kwargs, False, None, None,
                                       ": Great Expectations has no such expectation"))
            continue
        try:
            outcome = batch.validate(cls(**kwargs))
        except Exception as err:  # bad arguments: reported as a failed expectation
            results.append(CheckResult(snake, kwargs, False, None, None,
                                       f": {str(err).strip()[:300]}"))
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


@dataclass(frozen=True)
class CheckRecord:
    """The verdict of one asset's expectations on one content."""

    name: str
    sha256: str
    passed: bool
    results: list[CheckResult]
    checked_at: float
    reused: bool = False  # read from the record, not checked now

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.success]


class DataChecks:
    """Recorded verdicts, in the state store: (asset, content sha256, digest of the
    expectations and format) -> passed or failed, with every expectation's result."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    @staticmethod
    def _key(fmt: str, expectations: list[dict[str, Any]]) -> str:
        return digest({"format": fmt, "expectations": expectations})

    def get(self, name: str, sha256: str, fmt: str, expectations: list[dict[str, Any]]
            ) -> CheckRecord | None:
        rows = self.store.query(
            "SELECT passed, results, checked_at FROM data_checks WHERE name=? AND sha256=? "
            "AND expectations=?", (name, sha256, self._key(fmt, expectations)))
        if not rows:
            return None
        try:
            results = [CheckResult(**r) for r in json.loads(rows[0][1])]
        except (ValueError, TypeError):
            return None  # a damaged record: checked again
        return CheckRecord(name, sha256, bool(rows[0][0]), results, float(rows[0][2]),
                           reused=True)

    def check(self, name: str, sha256: str, path: Path, fmt: str,
              expectations: list[dict[str, Any]], label: str | None = None) -> CheckRecord:
        """The recorded verdict for this content, or the expectations run now on `path`
        (whose bytes must be that content) and recorded."""
        found = self.get(name, sha256, fmt, expectations)
        if found is not None:
            return found
        results = check(label or name, path, fmt, expectations,
                        sha256 if path.is_file() else None)
        record = CheckRecord(name, sha256, all(r.success for r in results), results,
                             time.time())
        if self.store.readonly:  # `data validate` reads; the next apply records it
            return record
        # A verdict on content, kept as a cache: the same bytes get the same verdict,
        # and a failed one is announced once, with it.
        def write(cur: Cursor) -> None:
            cur.execute(upsert("data_checks", ("name", "sha256", "expectations", "passed",
                                               "results", "checked_at"),
                               ("name", "sha256", "expectations")),
                        (name, sha256, self._key(fmt, expectations), int(record.passed),
                         json.dumps([asdict(r) for r in results], default=str),
                         record.checked_at))
            if not record.passed:
                self.store.record_events(cur, [Event(
                    "data.expectations_failed", f"data.{name}", with_see(
                        {"data": name, "sha256": sha256,
                         "failed": [r.describe() for r in record.failures]},
                        f"mlinfra data validate {name}"), record.checked_at)])

        self.store.cache_write(write)
        return record

    def require(self, name: str, sha256: str, path: Path, fmt: str,
                expectations: list[dict[str, Any]], label: str | None = None) -> CheckRecord:
        """As `check`; raises DataCheckFailed (naming `label`) when an expectation fails."""
        record = self.check(name, sha256, path, fmt, expectations, label)
        if not record.passed:
            raise DataCheckFailed(label or name, record.failures)
        return record

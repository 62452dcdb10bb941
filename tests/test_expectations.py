"""Great Expectations in mlinfra: validate checks expectation names and arguments
against GX's own registry (kept in the user's cache, so GX is imported once per
version), and Data whose content fails its expectations is recorded as failed and
takes no version number."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra.data import checks
from mlinfra.data.checks import DataChanged, DataChecks
from mlinfra.data.versions import DataVersions
from mlinfra.providers.base import ProviderError
from mlinfra.spec.expectations import installed_version
from tests.conftest import Result

TYPOS = """\
kind: Data
name: prices
path: prices.csv
expectations:
  - expect_column_values_to_be_postive: {column: price}
  - expect_column_values_to_not_be_null: {colum: price}
  - expect_column_values_to_be_in_set: {column: price}
  - expect_column_values_to_be_between: {column: price, min_value: 0}
"""

EXPECTED = [
    "data.yaml:5:5: data/prices: expectations[0].expect_column_values_to_be_postive: "
    "unknown expectation 'expect_column_values_to_be_postive' (did you mean "
    "'expect_column_values_to_be_of_type'?)",
    "data.yaml:6:5: data/prices: expectations[1].expect_column_values_to_not_be_null: "
    "expect_column_values_to_not_be_null needs argument 'column'",
    "data.yaml:6:43: data/prices: expectations[1].expect_column_values_to_not_be_null.colum: "
    "expect_column_values_to_not_be_null has no argument 'colum' (did you mean 'column'?)",
    "data.yaml:7:5: data/prices: expectations[2].expect_column_values_to_be_in_set: "
    "expect_column_values_to_be_in_set needs argument 'value_set'",
]


@pytest.mark.parametrize("command", ["validate", "plan"])
def test_expectation_names_and_arguments_are_checked(
        project: Callable[..., Path], cli: Callable[..., Result], command: str) -> None:
    project({"data.yaml": TYPOS, "data/prices.csv": "price\n1\n"})
    result = cli(command)
    assert result.code == 1
    assert result.err.splitlines() == [*EXPECTED, "4 errors in 1 file"]


def test_right_expectations_pass(project: Callable[..., Path],
                                 cli: Callable[..., Result]) -> None:
    project({"data.yaml": TYPOS.replace("postive", "unique").replace("colum:", "column:")
             .replace("{column: price}\n  - expect_column_values_to_be_between",
                      "{column: price, value_set: [1, 2]}\n  - "
                      "expect_column_values_to_be_between"),
             "data/prices.csv": "price\n1\n"})
    result = cli("validate")
    assert result.code == 0, result.err


def _validate_in_a_process(root: Path, cache: Path) -> tuple[str, bool]:
    """Run `mlinfra validate` in a new interpreter: its errors, and whether it imported
    great_expectations."""
    code = ("import sys; from mlinfra.cli import main\n"
            "code = main(['validate', '-C', sys.argv[1]])\n"
            "print('GX' if 'great_expectations' in sys.modules else 'no GX')")
    done = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True,
                          text=True, check=True, timeout=120,
                          env={**os.environ, "MLINFRA_CACHE_DIR": str(cache),
                               "MLINFRA_NO_CACHE": "1"})
    return done.stderr, done.stdout.splitlines()[-1] == "GX"


def test_the_table_is_built_once_per_gx_version(project: Callable[..., Path],
                                                tmp_path: Path) -> None:
    root = project({"data.yaml": TYPOS, "data/prices.csv": "price\n1\n"})
    cache = tmp_path / "cache"
    errors, imported = _validate_in_a_process(root, cache)
    assert imported and errors.splitlines()[:4] == EXPECTED
    version = installed_version()
    import great_expectations

    assert version == great_expectations.__version__
    table = cache / f"gx-expectations-1-{version}.json"
    assert "expect_column_values_to_not_be_null" in json.loads(table.read_text())[
        "expectations"]

    again, imported = _validate_in_a_process(root, cache)
    assert not imported and again == errors

    # What validate knows comes from that file: an expectation only it names passes.
    cached = json.loads(table.read_text())
    cached["expectations"]["expect_column_values_to_be_postive"] = {
        "accepted": ["column"], "required": ["column"]}
    table.write_text(json.dumps(cached))
    trusted, imported = _validate_in_a_process(root, cache)
    assert not imported and "expect_column_values_to_be_postive" not in trusted

    table.write_text("{not json")  # a damaged table is built again
    rebuilt, imported = _validate_in_a_process(root, cache)
    assert imported and rebuilt == errors
    assert json.loads(table.read_text())["version"] == version


# -- Data that fails its expectations ---------------------------------------------------

DATA = """\
kind: Data
name: transactions
path: transactions.csv
expectations:
  - expect_column_values_to_not_be_null: {column: a}
"""
GOOD = "a,y\n1.0,1\n2.0,0\n"
BAD = "a,y\n,1\n2.0,0\n"
REPORT = "expect_column_values_to_not_be_null(column='a'): 1 of 2 rows fail"


def _version(cli: Callable[..., Result]) -> int:
    outputs = json.loads(cli("output", "data.transactions", "--json").out)
    return int(outputs["data.transactions"]["version"])


def test_failing_content_takes_no_version(project: Callable[..., Path],
                                          cli: Callable[..., Result],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    root = project({"data.yaml": DATA, "data/transactions.csv": GOOD})
    assert cli("apply", "--auto-approve").code == 0
    assert _version(cli) == 1

    (root / "data" / "transactions.csv").write_text(BAD)
    failed = cli("apply", "--auto-approve")
    assert failed.code == 1
    assert "data.transactions: data transactions (sha256 " in failed.err
    assert REPORT in failed.err and "no version registered" in failed.err
    assert _version(cli) == 1  # the state still holds the last good version

    # The verdict is recorded: neither apply nor `data validate` checks it again.
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("checked again")

    with monkeypatch.context() as patched:
        patched.setattr(checks, "check", refuse)
        planned = cli("plan")  # the plan says it now, not the next apply
        assert planned.code == 1 and "checked before" in planned.err, planned.out
        assert REPORT in planned.err and "fix the data" in planned.err
        again = cli("apply", "--auto-approve")
        assert again.code == 1 and REPORT in again.err
        shown = cli("data", "validate", "transactions")
    assert shown.code == 1 and f"FAIL {REPORT}" in shown.out
    assert "no version): 0 passed, 1 failed (checked " in shown.out
    assert ", recorded)" in shown.out

    (root / "data" / "transactions.csv").write_text(GOOD.replace("2.0", "3.0"))
    fixed = cli("apply", "--auto-approve")
    assert fixed.code == 0, fixed.err
    assert _version(cli) == 2  # the failed content took no number
    shown = cli("data", "validate", "transactions")
    assert shown.code == 0 and "transactions:2: 1 passed, 0 failed" in shown.out


JOB = """\
kind: Job
name: train
command: python -c "print('trained')"
inputs: {data: transactions}
"""


def test_the_job_gate_checks_before_a_version_is_registered(
        project: Callable[..., Path]) -> None:
    """A job reads a stored copy of its input; when that content fails, the run does
    not start and the content takes no version."""
    from mlinfra.engine import open_session
    from mlinfra.runs.jobs import Resolver, run_job

    root = project({"data.yaml": DATA + "---\n" + JOB, "data/transactions.csv": BAD})
    session = open_session(root, None, "test", write=True)
    try:
        job = session.config.get("Job", "train")
        assert job is not None
        with pytest.raises(ProviderError, match="no run started") as failed:
            run_job(session.ctx, job, str(session.ctx.facts(job)["run_hash"]),
                    Resolver(session.ctx))
        assert REPORT in failed.value.message
        assert DataVersions(session.store).list("transactions") == []
        sha = DataVersions(session.store).content_sha256(root / "data" / "transactions.csv")
        record = DataChecks(session.store).get(
            "transactions", sha, "csv", [{"expect_column_values_to_not_be_null":
                                          {"column": "a"}}])
        assert record is not None and not record.passed
        assert [r.describe() for r in record.failures] == [REPORT]
    finally:
        session.close()


def test_a_check_is_of_the_bytes_it_names(tmp_path: Path) -> None:
    from mlinfra.state.sqlite import SqliteStore

    path = tmp_path / "t.csv"
    path.write_text(GOOD)
    store = SqliteStore(tmp_path / "state.db", command="test")
    try:
        with pytest.raises(DataChanged, match="changed while it was being checked"):
            DataChecks(store).check("t", "0" * 64, path, "csv",
                                    [{"expect_column_values_to_not_be_null": {"column": "a"}}])
        assert store.query("SELECT COUNT(*) FROM data_checks") == [(0,)]
    finally:
        store.close()

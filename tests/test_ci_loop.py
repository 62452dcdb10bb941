"""The whole loop on the quickstart, in a real Git repository:
commits go through `mlinfra ci run` as pushes to main would. A first commit trains,
promotes and serves v1; a better model is promoted and rolled out step by step while a
client sends requests, none failing; a worse one is registered and not promoted, the
report saying why with the table; data that fails its expectations trains nothing; a
commit processed once is not processed again."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from mlinfra.registry.decisions import figures
from tests.conftest import Result
from tests.test_ci import commit, git
from tests.test_promotion_rollout import Requests

Cli = Callable[..., Result]
PATCH = 'y = np.array([int(r["is_fraud"]) for r in rows])\n'


def ignoring(root: Path, *features: str) -> None:
    """Train with those features zeroed: the model ignores them (a known loss)."""
    train = root / "train" / "train.py"
    text = train.read_text().split(PATCH)
    rest = text[1].split("# ignored\n", 1)[-1]
    ignored = (f"X[:, [FEATURES.index(c) for c in {list(features)!r}]] = 0  # ignored\n"
               if features else "")
    train.write_text(text[0] + PATCH + ignored + rest)


def champion(cli: Cli, root: Path) -> int:
    shown = cli("models", "show", "fraud@champion", "-C", str(root))
    assert shown.code == 0, shown.err
    return int(json.loads(shown.out)["version"])


def auc_of(cli: Cli, root: Path, version: int) -> float:
    shown = json.loads(cli("models", "show", f"fraud:{version}", "-C", str(root)).out)
    return float(shown["metrics"]["auc"])


@pytest.mark.slow
def test_the_loop_on_the_quickstart(quickstart: Path, cli: Cli, tmp_path: Path) -> None:
    root = quickstart
    stack = root / "stacks" / "dev.yaml"
    stack.write_text(stack.read_text() + "  auc_floor: 0.6\n")
    serving = root / "serving.yaml"
    serving.write_text(re.sub(
        r"rollout: \{.*?\}\}", "rollout: {endpoint: fraud-api, steps: [10, 50, 100], "
        "hold_s: 1, min_requests: 5,\n          rollback_on: {error_rate: 0.02}}",
        serving.read_text(), flags=re.S))
    ignoring(root, "merchant_risk")
    git(root, "init", "-q")
    commit(root, "the quickstart, with a model that ignores merchant_risk")
    try:
        timings = _loop(root, cli, tmp_path / "report.md")
    finally:
        destroyed = cli("destroy", "--auto-approve", "-C", str(root))
    assert destroyed.code == 0, destroyed.err  # the endpoint is stopped, not left running
    (tmp_path / "timings.json").write_text(json.dumps(timings, indent=2))
    print("timings", json.dumps(timings))


def _loop(root: Path, cli: Cli, report: Path) -> dict[str, float]:
    timings: dict[str, float] = {}
    loop_started = time.perf_counter()

    def ci_run() -> Result:
        started = time.perf_counter()
        done = cli("ci", "run", "-C", str(root), "--report", str(report))
        timings[f"run {len(timings) + 1}"] = time.perf_counter() - started
        return done

    # 1. v1 is trained, promoted (the alias was empty) and served.
    first = ci_run()
    assert first.code == 0, first.out + first.err
    assert champion(cli, root) == 1
    invoked = cli("endpoints", "invoke", "fraud-api", "-C", str(root), "--data",
                  str(root / "sample-request.json"))
    assert invoked.code == 0 and "from fraud:1" in invoked.err, invoked.err
    # 2. A better model (it reads every feature): v2 promoted and rolled out step by step
    # while a client sends requests; none fails.
    ignoring(root)
    commit(root, "use every feature")
    url = json.loads(cli("output", "endpoint.fraud-api", "--json", "-C", str(root)).out)[
        "endpoint.fraud-api"]["url"]
    key = (root / ".mlinfra/dev/endpoints/fraud-api/operator.key").read_text().strip()
    with Requests(url, key, {"inputs": [[120.0, 3, 0.7, 15.0, 400]]}) as load:
        time.sleep(0.3)
        second = ci_run()
        time.sleep(0.3)
    assert second.code == 0, second.out + second.err
    assert champion(cli, root) == 2
    sent = sum(load.statuses.values())
    assert load.statuses == Counter({200: sent}), load.statuses
    assert load.models["fraud:1"] and load.models["fraud:2"], load.models
    text = report.read_text()
    assert "fraud:2 promoted (fraud@champion: 1 → 2)" in text, text
    steps = re.findall(r"^\| (\d+)% \| \d+ \| \d+ \| [0-9.]+ \| [^|]+ \| passed \|$", text,
                       re.M)
    assert steps == ["10", "50", "100"], text
    assert "Rollout on `fraud-api`: **complete**" in text
    # 3. A worse model: v3 registered, not promoted; the report says why, with the table.
    ignoring(root, "amount")
    commit(root, "drop the amount")
    third = ci_run()
    assert third.code == 0, third.out + third.err
    assert champion(cli, root) == 2
    text = report.read_text()
    v2, v3 = auc_of(cli, root, 2), auc_of(cli, root, 3)
    assert "fraud:3 rejected (fraud@champion stays 2)" in text, text
    shown3, shown2 = figures(v3, v2)
    assert f"auc {shown3} < champion {shown2} + 0.005" in text
    row = next(line for line in text.splitlines() if line.startswith("| auc (compared)"))
    assert f"| {v2:.4g} | {v3:.4g} | {v3 - v2:+.4f} | [" in row, row
    tags = json.loads(cli("models", "show", "fraud:3", "-C", str(root)).out)["tags"]
    assert tags["mlinfra.rejected"] == f"auc {shown3} < champion {shown2} + 0.005"
    # 4. The same commit again does nothing, and says so (a new process, as CI runs it).
    started = time.perf_counter()
    again = subprocess.run([sys.executable, "-m", "mlinfra", "ci", "run", "-C", str(root)],
                           capture_output=True, text=True, timeout=60, check=False)
    timings["unchanged"] = time.perf_counter() - started
    assert again.returncode == 0 and "nothing to do" in again.stdout, again.stdout
    # 5. Data that fails its expectations: nothing is trained.
    runs = cli("runs", "list", "-C", str(root)).out.count("\n")
    with open(root / "data" / "transactions.csv", "a") as f:
        f.write("-5.0,3,0.2,1.0,100,0\n")
    commit(root, "a negative amount")
    fourth = ci_run()
    assert fourth.code == 1
    text = report.read_text()
    assert "`data.transactions`: data transactions" in text and "failed 1 expectation" in text
    assert "No run" in text
    assert cli("runs", "list", "-C", str(root)).out.count("\n") == runs
    assert champion(cli, root) == 2
    timings["loop"] = time.perf_counter() - loop_started
    history = json.loads(cli("history", "--json", "-C", str(root)).out)
    assert [h["outcome"] for h in history] == ["promoted", "promoted", "rejected"]
    assert {h["commit"] for h in history} <= {git(root, "rev-parse", f"HEAD~{n}")
                                              for n in range(1, 4)}
    return timings

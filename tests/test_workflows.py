"""The GitHub Actions workflows: this project's, and the one users copy.
Both pass check-jsonschema's vendored schema of GitHub workflows, and the users' one
keeps the promises the README makes: plan on pull requests, run on pushes to main, one
concurrency group per stack, and no more permission than needed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO

WORKFLOWS = [REPO / ".github" / "workflows" / "ci.yml", REPO / "examples" / "github" /
             "mlinfra.yml"]


def validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema",
                           "vendor.github-workflows", *map(str, paths)],
                          capture_output=True, text=True, timeout=120, check=False)


def load(path: Path) -> dict[Any, Any]:
    found = yaml.safe_load(path.read_text())
    assert isinstance(found, dict)
    return found


def test_the_workflows_pass_the_github_workflow_schema(tmp_path: Path) -> None:
    checked = validate(*WORKFLOWS)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The validator does catch a mistake (a job without runs-on, a wrong key).
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOWS[1].read_text().replace("runs-on:", "run-on:", 1))
    refused = validate(broken)
    assert refused.returncode == 1 and "'runs-on' is a required property" in refused.stdout


@pytest.mark.parametrize("path", WORKFLOWS, ids=["ci.yml", "mlinfra.yml"])
def test_a_workflow_plans_pull_requests_and_runs_pushes_to_main(path: Path) -> None:
    workflow = load(path)
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as true
    assert "pull_request" in triggers and triggers["push"]["branches"] == ["main"]
    assert workflow["permissions"] == {"contents": "read"}
    steps = {name: " ".join(str(s.get("run", "")) for s in job["steps"])
             for name, job in workflow["jobs"].items()}
    planning = [n for n, text in steps.items() if "mlinfra ci plan" in text]
    running = [n for n, text in steps.items() if "mlinfra ci run" in text]
    assert len(planning) == 1 and len(running) == 1, steps
    plan, run = workflow["jobs"][planning[0]], workflow["jobs"][running[0]]
    assert "pull_request" in plan["if"] and "push" in run["if"]
    assert plan["permissions"] == {"contents": "read", "pull-requests": "write"}
    assert run.get("permissions", workflow["permissions"]) == {"contents": "read"}
    for job in (plan, run):
        checkout = next(s for s in job["steps"] if str(s.get("uses", "")).startswith(
            "actions/checkout"))
        assert checkout["with"]["fetch-depth"] == 0  # the merge base is needed
        group = job["concurrency"]["group"]  # one per stack
        assert "${{ matrix.stack }}" in group or group.endswith(("-dev", "-dev-${{ "
                                                                 "github.event.pull_request"
                                                                 ".number }}"))
    assert run["concurrency"]["cancel-in-progress"] is False  # a push never cancels one


def test_the_users_workflow_keeps_its_state_and_comments_with_the_token() -> None:
    workflow = load(WORKFLOWS[1])
    for job in workflow["jobs"].values():
        assert "self-hosted" in job["runs-on"]
        checkout = next(s for s in job["steps"] if "uses" in s and "checkout" in s["uses"])
        assert checkout["with"]["clean"] is False  # .mlinfra/ survives between runs
        assert "matrix.stack" in job["concurrency"]["group"]
    plan = workflow["jobs"]["plan"]
    step = next(s for s in plan["steps"] if "ci plan" in str(s.get("run", "")))
    assert step["env"] == {"GITHUB_TOKEN": "${{ secrets.GITHUB_TOKEN }}"}


def test_the_schedule_workflow_runs_the_agent_once_in_the_stacks_group() -> None:
    """examples/github/mlinfra-schedule.yml: a GitHub Actions `schedule:` trigger runs
    `mlinfra agent --once`, in the concurrency group of mlinfra.yml's ci run."""
    path = REPO / "examples" / "github" / "mlinfra-schedule.yml"
    checked = validate(path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    workflow = load(path)
    assert workflow[True]["schedule"] == [{"cron": "*/15 * * * *"}]
    assert workflow["permissions"] == {"contents": "read"}
    [job] = workflow["jobs"].values()
    runs = " ".join(str(s.get("run", "")) for s in job["steps"])
    assert "mlinfra agent --once" in runs
    users = load(WORKFLOWS[1])
    assert job["concurrency"]["group"] == users["jobs"]["run"]["concurrency"]["group"]
    checkout = next(s for s in job["steps"] if "checkout" in str(s.get("uses", "")))
    assert checkout["with"]["clean"] is False

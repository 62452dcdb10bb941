"""`mlinfra ci plan` and `ci run` on a small project in a real Git repository (and
their bad input): the plan report and the PR comment (against a local
HTTP server that records GitHub API calls), runs that fail, dirty trees, missing bases,
shallow clones, and two runs at once."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from mlinfra.state.lock import locked
from mlinfra.state.sqlite import SqliteStore
from tests.conftest import Result, onnx_model

Cli = Callable[..., Result]

TRAIN = '''\
import argparse, shutil, sys
p = argparse.ArgumentParser()
p.add_argument("--data"); p.add_argument("--model"); p.add_argument("--variant")
a = p.parse_args()
if a.variant == "broken":
    print("loading the data")
    print("Traceback: something is wrong with the features", file=sys.stderr)
    sys.exit(3)
shutil.copyfile(f"model-{a.variant}.onnx", a.model)
'''

PROJECT = """\
kind: Data
name: train-set
path: train.csv
expectations:
  - expect_column_values_to_be_between: {{column: a, min_value: -5, max_value: 5}}
---
kind: Data
name: holdout
path: holdout.csv
---
kind: Job
name: train
code: ./train
command: >-
  python train.py --data ${{inputs.data}} --model ${{outputs.model}}
  --variant ${{params.variant}}
inputs: {{data: train-set}}
params: {{variant: {variant}}}
outputs: {{model: model.onnx}}
"""

REGISTRY = """\
kind: Model
name: scorer
from: {job: train, output: model}
evaluation: {data: holdout, label: y, metrics: [auc, accuracy]}
---
kind: Promotion
name: scorer
model: scorer
compare: {metric: auc, direction: max, min_delta: 0.01}
gates: {metrics: {auc: {min: 0.3}}, data: [train-set]}
"""

ROWS = [(a, b, int(a > 0)) for a, b in
        [(1.0, 0.3), (-1.0, 0.8), (0.5, -0.7), (-0.4, -0.2), (2.0, 0.1), (-2.0, 0.9),
         (0.2, -1.0), (-0.1, 0.4), (1.5, -0.3), (-1.2, -0.6)]]
DATA = "a,b,y\n" + "".join(f"{a},{b},{y}\n" for a, b, y in ROWS)
WEIGHTS = {"good": (2.0, 0.0), "fair": (1.0, 0.8), "poor": (0.2, 1.0)}
STACK = "kind: Stack\nname: {name}\nprovider: local\n"


def git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.email=ci@example.com", "-c", "user.name=ci",
                           "-c", "init.defaultBranch=main", *args], cwd=root,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip()


def commit(root: Path, message: str) -> str:
    git(root, "add", "-A")
    git(root, "commit", "-qm", message)
    return git(root, "rev-parse", "HEAD")


@pytest.fixture
def repo(project: Callable[..., Path]) -> Path:
    """The project, committed on main: a job that copies a model of known quality."""
    files: dict[str, str | bytes] = {
        "training.yaml": PROJECT.format(variant="fair"), "registry.yaml": REGISTRY,
        "train/train.py": TRAIN,
        "data/train.csv": DATA, "data/holdout.csv": DATA, ".gitignore": ".mlinfra/\n",
        "stacks/dev.yaml": STACK.format(name="dev"),
        "stacks/prod.yaml": STACK.format(name="prod")}
    for name, weights in WEIGHTS.items():
        files[f"train/model-{name}.onnx"] = onnx_model(weights)
    root = project(files)
    git(root, "init", "-q")
    commit(root, "the scorer")
    return root


def set_variant(root: Path, variant: str) -> None:
    (root / "training.yaml").write_text(PROJECT.format(variant=variant))


def fenced_block(report: str, heading: str) -> list[str]:
    """The lines of the first code fence after `heading`."""
    after = report.split(heading, 1)[1]
    match = re.search(r"^(`{3,})\n(.*?)\n\1$", after, re.S | re.M)
    assert match is not None, report
    return match.group(2).splitlines()


# --- ci run ---------------------------------------------------------------------------

def test_ci_run_applies_records_the_commit_and_does_nothing_on_it_again(
        repo: Path, cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITHUB_EVENT_NAME", "push")
    monkeypatch.setenv("GITHUB_ACTOR", "alice")
    first = cli("ci", "run", "--report", str(tmp_path / "run.md"))
    assert first.code == 0, first.out + first.err
    decision = json.loads(cli("history", "--json").out)[0]
    assert decision["trigger"] == {"command": "ci run",
                                   "github": {"event": "push", "actor": "alice"}}
    assert decision["commit"] == git(repo, "rev-parse", "HEAD") and not decision["dirty"]
    text = (tmp_path / "run.md").read_text()
    assert "stack `dev`: ✅ applied" in text and "scorer:1 promoted" in text
    assert "| `train-" in text  # the run, with its status
    again = cli("ci", "run")
    assert again.code == 0 and "was processed by ci run" in again.out, again.out
    assert "nothing to do" in again.out
    # A new commit is processed: the poor model is rejected, with the comparison table.
    set_variant(repo, "poor")
    commit(repo, "poor")
    second = cli("ci", "run", "--report", str(tmp_path / "run.md"))
    assert second.code == 0, second.out + second.err
    text = (tmp_path / "run.md").read_text()
    assert "scorer:2 rejected (scorer@champion stays 1)" in text, text
    row = next(line for line in text.splitlines() if line.startswith("| auc (compared)"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "0.84" and cells[2] == "0.4" and cells[3] == "-0.4400", cells
    low, high = (float(x) for x in cells[4].strip("[]").split(","))
    assert low <= -0.44 <= high < 0, cells
    assert "`training.yaml`" in text and "`job.train`" in text  # what changed, and where


def test_a_failed_training_run_names_the_run_and_shows_its_log(
        repo: Path, cli: Cli, tmp_path: Path) -> None:
    assert cli("ci", "run").code == 0
    set_variant(repo, "broken")
    commit(repo, "broken")
    failed = cli("ci", "run", "--report", str(tmp_path / "run.md"))
    assert failed.code == 1, failed.out
    text = (tmp_path / "run.md").read_text()
    assert "stack `dev`: ❌ failed" in text and "`job.train`" in text
    match = re.search(r"Run `(train-[0-9a-f]+)` \(train\) failed", text)
    assert match is not None, text
    tail = fenced_block(text, match.group(0))
    assert "loading the data" in tail and any("something is wrong" in t for t in tail), tail
    assert "No promotion decision" in text  # nothing to promote
    assert "1 failed" in failed.err
    again = cli("ci", "run")  # a failed commit is not "processed": it is tried again
    assert again.code == 1 and "was processed" not in again.out
    # The next commit is compared with the last one applied without failure.
    good = git(repo, "rev-parse", "HEAD~1")
    set_variant(repo, "good")
    commit(repo, "fixed")
    fixed = cli("ci", "run", "--report", str(tmp_path / "run.md"))
    assert fixed.code == 0, fixed.err
    assert (f"compared with `{good[:12]}` (the last commit ci run applied without failure)"
            in (tmp_path / "run.md").read_text())


def test_data_that_fails_its_expectations_trains_nothing(repo: Path, cli: Cli,
                                                         tmp_path: Path) -> None:
    assert cli("ci", "run").code == 0
    runs = cli("runs", "list").out.count("\n")
    (repo / "data" / "train.csv").write_text(DATA + "9.0,0.1,1\n")
    set_variant(repo, "good")
    commit(repo, "bad rows")
    failed = cli("ci", "run", "--report", str(tmp_path / "run.md"))
    assert failed.code == 1
    text = (tmp_path / "run.md").read_text()
    assert "`data.train-set`: data train-set" in text and "failed 1 expectation" in text
    assert "not applied: `job.train`" in text and "No run" in text
    assert cli("runs", "list").out.count("\n") == runs


def test_ci_run_refuses_a_dirty_tree_unless_allowed(repo: Path, cli: Cli) -> None:
    set_variant(repo, "good")
    refused = cli("ci", "run")
    assert refused.code == 1
    assert "uncommitted changes (training.yaml)" in refused.err
    assert "--allow-dirty" in refused.err
    assert not (repo / ".mlinfra").exists()  # refused before the state was opened
    allowed = cli("ci", "run", "--allow-dirty")
    assert allowed.code == 0, allowed.err
    assert json.loads(cli("models", "show", "scorer@champion").out)["version"] == 1
    again = cli("ci", "run", "--allow-dirty")  # a dirty tree is never "processed"
    assert "was processed" not in again.out


def test_ci_run_plans_again_once_the_state_moved_since_the_commit_was_processed(
        repo: Path, cli: Cli) -> None:
    assert cli("ci", "run").code == 0
    assert "was processed" in cli("ci", "run").out
    assert cli("destroy", "--auto-approve").code == 0
    after_destroy = cli("ci", "run")  # the stack is empty: the commit is applied again
    assert after_destroy.code == 0 and "was processed" not in after_destroy.out
    assert "workspace.ws" in cli("state", "list").out
    assert cli("plan", "--detailed-exitcode").code == 0
    # an apply by hand of uncommitted files that fails halfway moves the state too
    set_variant(repo, "broken")
    (repo / "extra.yaml").write_text("kind: Data\nname: extra\npath: holdout.csv\n")
    assert cli("apply", "--auto-approve").code == 1
    assert "data.extra" in cli("state", "list").out
    git(repo, "checkout", "--", "training.yaml")
    (repo / "extra.yaml").unlink()
    again = cli("ci", "run")
    assert again.code == 0 and "was processed" not in again.out, again.out
    assert cli("plan", "--detailed-exitcode").code == 0


def test_ci_run_plans_again_after_a_run_of_a_dirty_tree(repo: Path, cli: Cli) -> None:
    assert cli("ci", "run").code == 0
    set_variant(repo, "good")
    assert cli("ci", "run", "--allow-dirty").code == 0
    assert json.loads(cli("models", "show", "scorer@champion").out)["version"] == 2
    git(repo, "checkout", "--", "training.yaml")  # back to the commit as it is
    clean = cli("ci", "run")
    assert clean.code == 0 and "was processed" not in clean.out, clean.out
    assert cli("plan", "--detailed-exitcode").code == 0


def test_mlinfra_own_folder_never_makes_the_tree_dirty(repo: Path, cli: Cli) -> None:
    (repo / ".gitignore").unlink()  # a project made without init's .gitignore
    commit(repo, "no .gitignore")
    assert cli("ci", "run").code == 0
    second = cli("ci", "run")
    assert second.code == 0 and "was processed" in second.out, second.out + second.err


def test_ci_run_in_a_depth_1_clone_says_what_to_fetch(repo: Path, cli: Cli,
                                                      tmp_path: Path) -> None:
    set_variant(repo, "good")
    commit(repo, "good")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "1", f"file://{repo}", str(clone))
    (clone / "data").mkdir(exist_ok=True)
    result = cli("ci", "run", "-C", str(clone))
    assert result.code == 1, result.err
    assert "shallow clone" in result.err and "fetch-depth: 0" in result.err, result.err


def test_two_ci_runs_at_once_one_fails_naming_the_holder(repo: Path, cli: Cli) -> None:
    assert cli("ci", "run").code == 0
    set_variant(repo, "good")
    commit(repo, "good")
    store = SqliteStore(repo / ".mlinfra" / "dev" / "state.db", command="ci run")
    try:
        with locked(store, "dev", "ci run"):
            busy = cli("ci", "run")
    finally:
        store.close()
    assert busy.code == 1 and "is locked" in busy.err and "ci run" in busy.err, busy.err
    assert "--lock-timeout" in busy.err
    done = cli("ci", "run", "--lock-timeout", "5s")
    assert done.code == 0, done.err


def test_a_plan_that_cannot_be_made_is_reported(repo: Path, cli: Cli,
                                                tmp_path: Path) -> None:
    (repo / "data" / "holdout.csv").unlink()
    commit(repo, "lost the holdout")
    failed = cli("ci", "run", "--report", str(tmp_path / "run.md"))
    assert failed.code == 1
    text = (tmp_path / "run.md").read_text()
    assert "cannot be applied" in text and "holdout.csv not found" in text


# --- ci plan --------------------------------------------------------------------------

def test_ci_plan_reports_what_a_branch_would_do(repo: Path, cli: Cli, tmp_path: Path) -> None:
    assert cli("apply", "--auto-approve").code == 0  # the state main has
    git(repo, "checkout", "-qb", "better")
    set_variant(repo, "good")
    commit(repo, "a better model")
    planned = cli("ci", "plan", "--report", str(tmp_path / "plan.md"))
    assert planned.code == 0, planned.err
    text = (tmp_path / "plan.md").read_text()
    assert text.startswith("<!-- mlinfra:ci-plan project=proj stack=dev -->")
    assert "its merge base with `main`" in text
    assert "| `training.yaml` | `data.holdout`, `data.train-set`, `job.train`" in text
    assert "Downstream of those: `model.scorer`, `promotion.scorer`" in text
    assert "- `job.train`: changed: params.variant fair -> good" in text
    assert ("**scorer**: the new version of scorer this apply registers will be compared "
            "with scorer@champion = 1 on auc, promoted if higher by 0.01 or more") in text
    assert "| `train-set` |" in text and "✅ passed" in text
    shown = cli("plan")
    assert fenced_block(text, "### Plan") == shown.out.rstrip("\n").split("\n")
    assert "Note: not in GitHub Actions" in planned.err
    # A plan never writes: the state is as apply left it.
    assert json.loads(cli("models", "show", "scorer@champion").out)["version"] == 1


def test_ci_plan_reports_invalid_yaml_and_exits_1(repo: Path, cli: Cli,
                                                  tmp_path: Path) -> None:
    git(repo, "checkout", "-qb", "typo")
    (repo / "training.yaml").write_text(PROJECT.format(variant="fair").replace(
        "name: holdout\npath", "name: holdout\npaht"))
    commit(repo, "typo")
    planned = cli("ci", "plan", "--report", str(tmp_path / "plan.md"))
    assert planned.code == 1
    text = (tmp_path / "plan.md").read_text()
    assert "cannot be planned" in text and "training.yaml:" in text and "paht" in text


def test_ci_plan_checks_new_data_against_its_expectations(repo: Path, cli: Cli,
                                                          tmp_path: Path) -> None:
    git(repo, "checkout", "-qb", "bad-data")
    (repo / "data" / "train.csv").write_text(DATA + "9.0,0.1,1\n")
    commit(repo, "bad rows")
    planned = cli("ci", "plan", "--report", str(tmp_path / "plan.md"))
    assert planned.code == 1  # the check is red: the merge would fail to apply
    text = (tmp_path / "plan.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `train-set`"))
    assert "(new: version 1)" in row and "❌ failed" in row and "1 of 11 rows fail" in row


def test_a_base_that_does_not_exist_is_named(repo: Path, cli: Cli) -> None:
    missing = cli("ci", "plan", "--base", "no-such-branch")
    assert missing.code == 1
    assert "base revision 'no-such-branch' does not exist" in missing.err


def test_a_shallow_clone_without_the_base_says_fetch_depth_0(repo: Path, cli: Cli,
                                                             tmp_path: Path) -> None:
    git(repo, "checkout", "-qb", "feature")
    set_variant(repo, "good")
    commit(repo, "good")
    git(repo, "checkout", "-q", "main")
    set_variant(repo, "poor")
    commit(repo, "main moves on")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", "--depth", "1", "--no-single-branch", "--branch", "feature",
        f"file://{repo}", str(clone))
    planned = cli("ci", "plan", "-C", str(clone), "--base", "origin/main")
    assert planned.code == 1
    assert "shallow clone" in planned.err and "fetch-depth: 0" in planned.err, planned.err
    single = tmp_path / "single"
    git(tmp_path, "clone", "-q", "--depth", "1", "--branch", "feature", f"file://{repo}",
        str(single))
    planned = cli("ci", "plan", "-C", str(single))
    assert planned.code == 1 and "fetch-depth: 0" in planned.err, planned.err


def test_ci_plan_allows_a_dirty_tree_and_shows_it(repo: Path, cli: Cli,
                                                  tmp_path: Path) -> None:
    git(repo, "checkout", "-qb", "wip")
    set_variant(repo, "good")
    planned = cli("ci", "plan", "--report", str(tmp_path / "plan.md"))
    assert planned.code == 0
    text = (tmp_path / "plan.md").read_text()
    assert "Not committed yet: `training.yaml`" in text and "params.variant" in text


# --- the pull-request comment ----------------------------------------------------------

class FakeGitHub(BaseHTTPRequestHandler):
    """Issue comments of one repository, and a record of every call. `failures` are
    answered first, one per call."""

    comments: dict[int, dict[str, Any]]
    calls: list[tuple[str, str, Any]]
    failures: list[tuple[int, dict[str, str]]]
    next_id: list[int]

    def log_message(self, *args: Any) -> None:
        return

    def _answer(self, status: int, body: Any = None, headers: dict[str, str] | None = None
                ) -> None:
        payload = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        url = urlparse(self.path)
        self.calls.append((method, url.path, body))
        assert self.headers["Authorization"] == "Bearer t0ken"
        if self.failures:
            status, headers = self.failures.pop(0)
            return self._answer(status, {"message": "try later"}, headers)
        parts = url.path.strip("/").split("/")
        if method == "GET" and parts[-1] == "comments":
            query = parse_qs(url.query)
            size, page = int(query["per_page"][0]), int(query["page"][0])
            listed = sorted(self.comments.values(), key=lambda c: c["id"])
            return self._answer(200, listed[(page - 1) * size: page * size])
        if method == "POST" and parts[-1] == "comments":
            self.next_id[0] += 1
            made = {"id": self.next_id[0], "body": body["body"],
                    "html_url": f"https://github.example/c/{self.next_id[0]}"}
            self.comments[made["id"]] = made
            return self._answer(201, made)
        number = int(parts[-1])
        if method == "PATCH":
            self.comments[number]["body"] = body["body"]
            return self._answer(200, self.comments[number])
        if method == "DELETE":
            del self.comments[number]
            return self._answer(204)
        return self._answer(404, {"message": "Not Found"})

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")


@pytest.fixture
def github(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[type[FakeGitHub]]:
    handler = type("Handler", (FakeGitHub,), {"comments": {}, "calls": [], "failures": [],
                                              "next_id": [100]})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 7},
                                 "repository": {"full_name": "team/fraud"}}))
    monkeypatch.setenv("GITHUB_TOKEN", "t0ken")
    monkeypatch.setenv("GITHUB_EVENT_PATH", str(event))
    monkeypatch.setenv("GITHUB_EVENT_NAME", "pull_request")
    monkeypatch.setenv("GITHUB_REPOSITORY", "team/fraud")
    monkeypatch.setenv("GITHUB_API_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("GITHUB_BASE_REF", "main")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(tmp_path / "summary.md"))
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_one_comment_per_pull_request_and_stack_updated_on_each_push(
        repo: Path, cli: Cli, github: type[FakeGitHub], tmp_path: Path) -> None:
    github.comments[50] = {"id": 50, "body": "LGTM", "html_url": "x"}  # a reviewer's
    git(repo, "checkout", "-qb", "better")
    set_variant(repo, "good")
    commit(repo, "a better model")
    first = cli("ci", "plan")
    assert first.code == 0, first.err
    assert "Created the comment on pull request #7" in first.err
    posts = [c for c in github.calls if c[0] == "POST"]
    assert [c[1] for c in posts] == ["/repos/team/fraud/issues/7/comments"]
    set_variant(repo, "poor")
    commit(repo, "another push")
    second = cli("ci", "plan")
    assert second.code == 0 and "Updated the comment" in second.err, second.err
    assert len([c for c in github.calls if c[0] == "POST"]) == 1
    patched = [c for c in github.calls if c[0] == "PATCH"]
    assert [c[1] for c in patched] == ["/repos/team/fraud/issues/comments/101"]
    assert re.search(r'params\.variant +\= "poor"', github.comments[101]["body"])
    assert set(github.comments) == {50, 101}
    # Another stack has a comment of its own.
    prod = cli("ci", "plan", "-s", "prod")
    assert prod.code == 0 and "Created the comment" in prod.err, prod.err
    assert set(github.comments) == {50, 101, 102}
    assert "stack=prod" in github.comments[102]["body"]
    assert "stack=dev" in github.comments[101]["body"]
    summary = (tmp_path / "summary.md").read_text()  # the job's summary page, too
    assert summary.count("<!-- mlinfra:ci-plan") == 3


def test_a_comment_posted_twice_by_racing_jobs_is_made_one(
        repo: Path, cli: Cli, github: type[FakeGitHub]) -> None:
    mark = "<!-- mlinfra:ci-plan project=proj stack=dev -->"
    github.comments[60] = {"id": 60, "body": mark + "\nold", "html_url": "x"}
    github.comments[61] = {"id": 61, "body": mark + "\nolder race", "html_url": "y"}
    git(repo, "checkout", "-qb", "b")
    assert cli("ci", "plan").code == 0
    assert set(github.comments) == {60}
    assert github.comments[60]["body"].startswith(mark + "\n## mlinfra ci plan")
    assert ("DELETE", "/repos/team/fraud/issues/comments/61", None) in github.calls


def test_github_failures_are_retried_then_reported(
        repo: Path, cli: Cli, github: type[FakeGitHub], tmp_path: Path) -> None:
    git(repo, "checkout", "-qb", "b")
    github.failures += [(502, {"Retry-After": "0"}), (429, {"Retry-After": "0"}),
                        (403, {"x-ratelimit-remaining": "0", "Retry-After": "0"})]
    retried = cli("ci", "plan")
    assert retried.code == 0 and "Created the comment" in retried.err, retried.err
    assert len(github.comments) == 1
    github.failures += [(503, {"Retry-After": "0"})] * 10
    report = tmp_path / "plan.md"
    failed = cli("ci", "plan", "--report", str(report))
    assert failed.code == 1
    assert "the report was written (the report is in" in failed.err
    assert "HTTP 503: try later (after 5 attempts)" in failed.err, failed.err
    assert report.read_text().startswith("<!-- mlinfra:ci-plan")
    github.failures.clear()
    github.failures.append((401, {}))
    refused = cli("ci", "plan")
    assert refused.code == 1 and "HTTP 401" in refused.err
    assert "after" not in refused.err.split("HTTP 401")[1]  # not retried


def test_a_push_event_posts_no_comment(repo: Path, cli: Cli, github: type[FakeGitHub],
                                       tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                       ) -> None:
    event = tmp_path / "push.json"
    event.write_text(json.dumps({"ref": "refs/heads/main"}))
    monkeypatch.setenv("GITHUB_EVENT_PATH", str(event))
    monkeypatch.setenv("GITHUB_EVENT_NAME", "push")
    planned = cli("ci", "plan", "--base", "HEAD")
    assert planned.code == 0
    assert "the push is not a pull request: no comment posted" in planned.err
    assert github.calls == []


def test_outside_a_git_repository_ci_says_so(project: Callable[..., Path], cli: Cli) -> None:
    project({})
    for command in ("plan", "run"):
        refused = cli("ci", command)
        assert refused.code == 1
        assert "is not in a Git repository: the ci commands compare commits" in refused.err


def test_a_report_too_long_for_a_comment_is_cut_where_it_says_so() -> None:
    from mlinfra.ci.github import MAX_COMMENT, fit
    from mlinfra.ci.report import fenced

    plan = fenced([f"  + line {n} with a ``` inside" for n in range(5000)])
    assert plan.startswith("````\n") and plan.endswith("\n````")  # never closed early
    body = fit("<!-- marker -->\n<details><summary>plan</summary>\n\n" + plan + "\n</details>")
    assert len(body) <= MAX_COMMENT and body.startswith("<!-- marker -->")
    head, note = body.rsplit("\n\n... (cut:", 1)
    assert head.endswith("inside\n````\n\n</details>"), head[-80:]  # both closed
    assert note.endswith("the whole report is in the job's summary and in the file "
                         "--report names)\n")
    short = "<!-- marker -->\nsmall"
    assert fit(short) == short


def test_ci_reports_show_the_monitors_verdicts(repo: Path, cli: Cli, tmp_path: Path) -> None:
    (repo / "monitor.yaml").write_text("kind: Monitor\nname: watch\nmodel: scorer@champion\n"
                                       "data: holdout\nmin_rows: 1\n"
                                       "on_breach: [{retrain: train}]\n")
    commit(repo, "a monitor")
    assert cli("apply", "--auto-approve").code == 0
    assert cli("monitor", "run", "watch").code == 0
    git(repo, "checkout", "-qb", "better")
    set_variant(repo, "good")
    commit(repo, "a better model")
    planned = cli("ci", "plan", "--report", str(tmp_path / "plan.md"))
    assert planned.code == 0, planned.err
    text = (tmp_path / "plan.md").read_text()
    assert "### Monitors\n\n- `monitor.watch`: 10 rows in the last window, no drift" in text
    ran = cli("ci", "run", "--allow-dirty", "--report", str(tmp_path / "run.md"))
    assert ran.code == 0, ran.err
    assert "- `monitor.watch`: 10 rows in the last window, no drift" in (
        tmp_path / "run.md").read_text()

"""GitHub's REST API for the pull-request comment, with urllib, and the job summary.

One comment per pull request and stack: it is found by the hidden marker it holds and
updated on later pushes, never posted again. When two jobs raced and both posted, the
oldest comment is kept (and updated) and the others deleted. Answers 5xx and 429 (and a
403 that says the rate limit is spent) are retried with exponential backoff, honouring
Retry-After; other failures are GitHubError, whose message says what GitHub answered.
The base URL is `GITHUB_API_URL`, so GitHub Enterprise works.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlinfra.errors import MlinfraError

RETRIES = 4
BACKOFF_S = 1.0
LONGEST_WAIT_S = 60.0
MAX_COMMENT = 65_000  # GitHub refuses bodies over 65,536 characters
PER_PAGE = 100


class GitHubError(MlinfraError):
    """The GitHub API refused or failed a call, after its retries."""


@dataclass(frozen=True)
class PullRequest:
    api_url: str
    token: str
    repository: str  # owner/name
    number: int


def pull_request(env: Mapping[str, str]) -> tuple[PullRequest | None, str]:
    """The pull request of this GitHub Actions job, or (None, why there is none)."""
    token, event_path = env.get("GITHUB_TOKEN"), env.get("GITHUB_EVENT_PATH")
    if not token or not event_path:
        return None, "not in GitHub Actions with a GITHUB_TOKEN: no comment posted"
    try:
        event = json.loads(Path(event_path).read_text())
    except (OSError, ValueError) as err:
        raise GitHubError(f"cannot read the event GITHUB_EVENT_PATH names ({event_path}): "
                          f"{err}") from err
    number = (event.get("pull_request") or {}).get("number")
    issue = event.get("issue") or {}
    if number is None and issue.get("pull_request"):
        number = issue.get("number")  # a comment on a pull request
    if number is None:
        return None, f"the {env.get('GITHUB_EVENT_NAME', 'event')} is not a pull request: " \
                     "no comment posted"
    repository = env.get("GITHUB_REPOSITORY") or (event.get("repository") or {}).get(
        "full_name")
    if not repository:
        raise GitHubError("GITHUB_REPOSITORY is not set and the event names no repository")
    api = (env.get("GITHUB_API_URL") or "https://api.github.com").rstrip("/")
    return PullRequest(api, token, str(repository), int(number)), ""


class GitHubClient:
    def __init__(self, api_url: str, token: str, retries: int = RETRIES,
                 backoff_s: float = BACKOFF_S, timeout_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.api_url, self.token = api_url.rstrip("/"), token
        self.retries, self.backoff_s, self.timeout_s = retries, backoff_s, timeout_s
        self.sleep = sleep

    def call(self, method: str, path: str, body: Any = None) -> Any:
        """The JSON GitHub answers (None for 204)."""
        import urllib.error
        import urllib.request

        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.api_url + path, data=data, method=method, headers={
                "Accept": "application/vnd.github+json", "User-Agent": "mlinfra",
                "Authorization": f"Bearer {self.token}", "X-GitHub-Api-Version": "2022-11-28",
                **({"Content-Type": "application/json"} if data is not None else {})})
        for attempt in range(self.retries + 1):
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                    payload = response.read()
                    return json.loads(payload) if payload else None
            except urllib.error.HTTPError as err:
                text = err.read().decode(errors="replace")
                wait = self._retry_after(err.code, err.headers, text, attempt)
                if wait is None or attempt == self.retries:
                    raise GitHubError(f"GitHub API {method} {path}: HTTP {err.code}"
                                      f"{_message(text)}"
                                      + (f" (after {attempt + 1} attempts)" if attempt else "")
                                      ) from err
            except (urllib.error.URLError, OSError) as err:
                reason = getattr(err, "reason", err)
                if attempt == self.retries:
                    raise GitHubError(f"GitHub API {method} {path}: cannot reach "
                                      f"{self.api_url}: {reason}") from err
                wait = self.backoff_s * 2 ** attempt
            self.sleep(wait)
        raise AssertionError("unreachable")  # the loop returns or raises

    def _retry_after(self, status: int, headers: Any, text: str, attempt: int
                     ) -> float | None:
        """How long to wait before trying again, or None when it is not worth it."""
        limited = status == 429 or (status == 403 and (
            headers.get("x-ratelimit-remaining") == "0" or "rate limit" in text.lower()))
        if status < 500 and not limited:
            return None
        wait = self.backoff_s * 2 ** attempt
        retry_after = headers.get("retry-after")
        if retry_after is not None and retry_after.strip().isdigit():
            wait = float(retry_after)
        elif limited and headers.get("x-ratelimit-reset", "").isdigit():
            wait = max(0.0, float(headers["x-ratelimit-reset"]) - time.time())
        return None if wait > LONGEST_WAIT_S else wait

    def comments(self, repository: str, number: int) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            found = self.call("GET", f"/repos/{repository}/issues/{number}/comments"
                                     f"?per_page={PER_PAGE}&page={page}")
            batch = list(found or [])
            out += batch
            if len(batch) < PER_PAGE:
                return out
            page += 1

    def upsert_comment(self, pr: PullRequest, mark: str, body: str) -> tuple[str, str]:
        """Create or update the comment holding `mark`: ("created" | "updated", its URL)."""
        body = fit(body)
        mine = [c for c in self.comments(pr.repository, pr.number)
                if mark in str(c.get("body") or "")]
        if mine:
            kept = min(mine, key=lambda c: int(c["id"]))
            answer = self.call("PATCH", f"/repos/{pr.repository}/issues/comments/{kept['id']}",
                               {"body": body})
            self._drop(pr, [c for c in mine if c is not kept])
            return "updated", str((answer or {}).get("html_url", ""))
        answer = self.call("POST", f"/repos/{pr.repository}/issues/{pr.number}/comments",
                           {"body": body})
        # Another job may have posted at the same moment: the oldest one stays.
        mine = [c for c in self.comments(pr.repository, pr.number)
                if mark in str(c.get("body") or "")]
        if len(mine) > 1:
            kept = min(mine, key=lambda c: int(c["id"]))
            if int(kept["id"]) != int((answer or {}).get("id", -1)):
                answer = self.call("PATCH",
                                   f"/repos/{pr.repository}/issues/comments/{kept['id']}",
                                   {"body": body})
            self._drop(pr, [c for c in mine if int(c["id"]) != int(kept["id"])])
            return "updated", str((answer or {}).get("html_url", ""))
        return "created", str((answer or {}).get("html_url", ""))

    def _drop(self, pr: PullRequest, extra: list[dict[str, Any]]) -> None:
        for comment in extra:
            self.call("DELETE", f"/repos/{pr.repository}/issues/comments/{comment['id']}")


def fit(body: str) -> str:
    """A body GitHub accepts: a report too long is cut, saying where the rest is."""
    if len(body) <= MAX_COMMENT:
        return body
    note = ("\n\n... (cut: the whole report is in the job's summary and in the file "
            "--report names)\n")
    cut = body[:MAX_COMMENT - len(note) - 200].rsplit("\n", 1)[0]
    # A fence or a <details> left open would swallow the note: close them.
    fence = None
    for line in cut.split("\n"):
        found = re.fullmatch(r"(`{3,})(.*)", line)
        if found is None:
            continue
        if fence is None:
            fence = found.group(1)
        elif len(found.group(1)) >= len(fence) and not found.group(2).strip():
            fence = None
    if fence is not None:
        cut += "\n" + fence
    cut += "\n\n</details>" * (cut.count("<details>") - cut.count("</details>"))
    return cut + note


def _message(text: str) -> str:
    try:
        found = json.loads(text).get("message")
    except (ValueError, AttributeError):
        found = text.strip()[:200]
    return f": {found}" if found else ""


def write_step_summary(report: str, env: Mapping[str, str] = os.environ) -> bool:
    """Append the report to the job's summary page, when in GitHub Actions."""
    path = env.get("GITHUB_STEP_SUMMARY")
    if not path:
        return False
    with open(path, "a", encoding="utf-8") as f:
        f.write(report + "\n")
    return True

"""mlinfra ci plan, ci run, and history."""

from __future__ import annotations

import argparse
import json

from mlinfra.cli.console import directory, echo, echo_err, emit, session_for, stack_name


def cmd_history(args: argparse.Namespace) -> int:
    from mlinfra.ci.history import decisions, render

    session = session_for(args, "history", write=False)
    try:
        entries = decisions(session.store, args.model)
    finally:
        session.close()
    if args.json:
        echo(json.dumps(entries, indent=2, default=str))
    else:
        for line in render(entries):
            echo(line)
    return 0


def _write(report: str, path: str | None) -> None:
    from pathlib import Path

    from mlinfra.ci.github import write_step_summary

    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(report, encoding="utf-8")
    write_step_summary(report)


def cmd_ci(args: argparse.Namespace) -> int:
    if args.ci_command == "plan":
        return _plan(args)
    return _run(args)


def _plan(args: argparse.Namespace) -> int:
    import os

    from mlinfra.ci import report
    from mlinfra.ci.github import GitHubClient, GitHubError, pull_request
    from mlinfra.ci.plan import ci_plan

    outcome = ci_plan(directory(args), stack_name(args), args.base,
                      log=lambda line: emit(line, "dim"))
    _write(outcome.report, args.report)
    echo(outcome.report)
    code = 0 if outcome.ok else 1
    try:
        pr, why = pull_request(os.environ)
        if pr is None:
            echo_err(f"Note: {why}.")
            return code
        client = GitHubClient(pr.api_url, pr.token)
        done, url = client.upsert_comment(pr, report.marker(outcome.project, outcome.stack),
                                          outcome.report)
        echo_err(f"{done.capitalize()} the comment on pull request #{pr.number}"
                 + (f": {url}" if url else "."))
    except GitHubError as err:
        where = f" (the report is in {args.report})" if args.report else ""
        echo_err(f"Error: the report was written{where} but not posted: {err.message}")
        return 1
    return code


def _run(args: argparse.Namespace) -> int:
    from mlinfra.ci.run import ci_run
    from mlinfra.cli.stack import progress

    outcome = ci_run(directory(args), stack_name(args), args.allow_dirty, args.lock_timeout,
                     args.parallelism, progress, log=lambda line: emit(line, "dim"))
    if not outcome.report:  # processed already
        echo(outcome.message)
        return 0
    _write(outcome.report, args.report)
    echo()
    echo(outcome.report)
    (echo if outcome.ok else echo_err)(outcome.message)
    return 0 if outcome.ok else 1

"""The CI reports, in GitHub-flavoured Markdown: what `ci plan` says a pull request
would do, and what `ci run` did. Pure rendering: the flows gather the facts.

The plan is shown verbatim (what `mlinfra plan` prints), in a fence no line of it can
close, and collapsed with <details> when long. A hidden marker names the project and
stack, so that a pull request keeps one comment per stack, updated on every push.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlinfra.ci.bootstrap import Compared
from mlinfra.ci.changes import ChangeSet

COLLAPSE_LINES = 40  # a longer plan is collapsed
LOG_TAIL_LINES = 30
PASS, FAIL = "✅", "❌"


def marker(project: str, stack: str) -> str:
    return f"<!-- mlinfra:ci-plan project={project} stack={stack} -->"


def short(commit: str | None) -> str:
    return commit[:12] if commit else "(none)"


def fenced(lines: Iterable[str], info: str = "") -> str:
    """`lines` verbatim in a code fence longer than any run of backticks in them."""
    text = "\n".join(lines)
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}{info}\n{text}\n{fence}"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{summary}</summary>\n\n{body}\n\n</details>"


def table(headers: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def _number(value: float | None, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    return f"{value:.{digits}g}"


def _signed(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:+.4f}"


@dataclass
class DataVerdict:
    """A Data asset's expectations on its current content."""

    name: str
    content: str  # "sha256 6c0611fdb7fd (new)" or the version it is
    expectations: int
    passed: bool | None  # None: not checked (no verdict recorded, not new)
    failures: list[str] = field(default_factory=list)
    checked_now: bool = False


def _changes_section(changes: ChangeSet, direct: dict[str, list[str]],
                     downstream: list[str]) -> list[str]:
    out = [f"### Changed files ({len(changes.files)})", ""]
    if not changes.files:
        out += ["No file changed.", ""]
        return out
    touched: dict[str, list[str]] = {}
    for address, files in direct.items():
        for name in files:
            touched.setdefault(name, []).append(address)
    rows = [[f"`{name}`", ", ".join(f"`{a}`" for a in sorted(touched.get(name, []))) or "-"]
            for name in changes.files]
    body = table(["file", "resources it touches"], rows)
    out.append(details(f"{len(rows)} files", body) if len(rows) > 20 else body)
    out.append("")
    if downstream:
        out += ["Downstream of those: " + ", ".join(f"`{a}`" for a in downstream), ""]
    if changes.dirty:
        out += [f"Not committed yet: {', '.join(f'`{p}`' for p in changes.dirty[:20])}"
                + (" ..." if len(changes.dirty) > 20 else ""), ""]
    return out


def _plan_section(plan_lines: list[str], title: str = "Plan") -> list[str]:
    body = fenced(plan_lines)
    if len(plan_lines) > COLLAPSE_LINES:
        body = details(f"Show the plan ({len(plan_lines)} lines)", body)
    return [f"### {title}", "", body, ""]


def _data_section(data: list[DataVerdict]) -> list[str]:
    if not data:
        return []
    rows = []
    for verdict in data:
        if verdict.passed is None:
            result = "not checked yet"
        elif verdict.passed:
            result = f"{PASS} passed" + (" (checked now)" if verdict.checked_now else "")
        else:
            result = f"{FAIL} failed: " + "; ".join(verdict.failures)
        rows.append([f"`{verdict.name}`", verdict.content, str(verdict.expectations), result])
    return ["### Data expectations", "",
            table(["data", "content", "expectations", "result"], rows), ""]


def plan_report(project: str, stack: str, changes: ChangeSet, direct: dict[str, list[str]],
                downstream: list[str], summary: str, plan_lines: list[str],
                runs: list[tuple[str, str]], promotions: list[str], data: list[DataVerdict],
                errors: list[str], monitors: list[str] | None = None) -> str:
    """What a pull request would do, for reviewers."""
    out = [marker(project, stack), f"## mlinfra ci plan: `{project}`, stack `{stack}`", "",
           f"Commit `{short(changes.head)}` compared with `{short(changes.base)}`, its merge "
           f"base with `{changes.base_name}`.", ""]
    if errors:
        out += [f"**{FAIL} The project cannot be planned:**", "", fenced(errors), ""]
        out += _changes_section(changes, direct, downstream)
        return "\n".join(out).rstrip() + "\n"
    out += [f"**{summary}**", ""]
    out += _changes_section(changes, direct, downstream)
    out += ["### Runs it would start", ""]
    out += ([f"- `{address}`: {reason}" for address, reason in runs] if runs
            else ["None: no job or pipeline has new inputs."])
    out.append("")
    out += ["### Promotions", ""]
    out += ([f"- {line}" for line in promotions] if promotions else ["No Promotion."])
    out.append("")
    out += _data_section(data)
    out += _monitors_section(monitors)
    out += _plan_section(plan_lines)
    return "\n".join(out).rstrip() + "\n"


def _monitors_section(monitors: list[str] | None) -> list[str]:
    """Each monitor's last verdict and the retrain a breach would cause."""
    if not monitors:
        return []
    return ["### Monitors", "", *[f"- `{line.strip().split(':', 1)[0]}`:"
                                  f"{line.strip().split(':', 1)[1]}" for line in monitors],
            ""]


@dataclass
class RunSummary:
    """One run started by the apply."""

    id: str
    name: str  # job, or pipeline/step
    status: str
    duration_s: float | None
    metrics: dict[str, float]
    error: str = ""
    log_tail: list[str] = field(default_factory=list)


@dataclass
class PromotionSummary:
    """One promotion decision made by the apply, with the comparison behind it."""

    address: str
    detail: dict[str, Any]
    data: str = ""  # the data both versions were scored on
    compared: list[Compared] = field(default_factory=list)
    note: str = ""  # why there is no comparison table


def _run_rows(runs: list[RunSummary]) -> str:
    rows = []
    for run in runs:
        metrics = ", ".join(f"{k} {_number(v)}" for k, v in sorted(run.metrics.items()))
        status = f"{PASS} {run.status}" if run.status == "completed" else f"{FAIL} {run.status}"
        duration = f"{run.duration_s:.1f}s" if run.duration_s is not None else "-"
        rows.append([f"`{run.id}`", run.name, status, duration, metrics or "-"])
    return table(["run", "job", "status", "duration", "metrics (last value)"], rows)


def _promotion(summary: PromotionSummary) -> list[str]:
    d = summary.detail
    model, alias = d.get("model", "?"), d.get("alias", "?")
    outcome = str(d.get("outcome", "?"))
    mark = PASS if outcome in ("promoted", "kept", "rejected", "gates failed") else FAIL
    moved = (f"{model}@{alias}: {d.get('from') or 'empty'} → {d.get('to')}"
             if d.get("from") != d.get("to") else f"{model}@{alias} stays {d.get('to')}")
    out = [f"#### {mark} `{summary.address}`: {model}:{d.get('candidate')} {outcome} "
           f"({moved})", "", f"{d.get('reason', '')}", ""]
    compare = d.get("compare") or {}
    if summary.compared:
        champion, candidate = d.get("champion"), d.get("candidate")
        rows = []
        for c in summary.compared:
            name = c.metric + (" (compared)" if c.metric == compare.get("metric") else "")
            interval = (f"[{_signed(c.low)}, {_signed(c.high)}]" if c.low is not None
                        else "-")
            rows.append([name, _number(c.champion), _number(c.candidate),
                         _signed(c.difference), interval])
        out += [table(["metric", f"champion {model}:{champion}",
                       f"candidate {model}:{candidate}", "difference",
                       "95% interval (bootstrap)"], rows), ""]
        resamples = max((c.resamples for c in summary.compared), default=0)
        rule = ""
        if compare.get("metric"):
            better = "higher" if compare.get("direction", "max") == "max" else "lower"
            rule = (f" Promoted when {compare['metric']} is {better} by at least "
                    f"{compare.get('min_delta', 0)}.")
        out += [f"Both scored on `{summary.data}`; intervals from {resamples} paired "
                f"bootstrap resamples of its rows: an interval that holds 0 cannot tell them "
                f"apart.{rule}", ""]
    elif summary.note:
        out += [summary.note, ""]
    gates = d.get("gates") or []
    if gates:
        out += ["Gates: " + ", ".join(f"{PASS if g.get('passed') else FAIL} {g.get('gate')}"
                                      for g in gates), ""]
    rollout = d.get("rollout") or {}
    if rollout:
        out += [f"Rollout on `{rollout.get('endpoint')}`: **{rollout.get('status')}**: "
                f"{rollout.get('why', '')}"
                + (f" ({rollout['replayed']} captured requests replayed)"
                   if rollout.get("replayed") else ""), ""]
        steps = rollout.get("steps") or []
        if steps:
            rows = [[f"{s.get('share')}%", str(s.get("hold")), str(s.get("requests")),
                     f"{float(s.get('error_rate') or 0):.3f}",
                     _number(s.get("p99_ms")), str(s.get("verdict"))] for s in steps]
            out += [table(["traffic", "hold", "requests", "error rate", "p99 ms (<=)",
                           "verdict"], rows), ""]
    return out


def run_report(project: str, stack: str, changes: ChangeSet, direct: dict[str, list[str]],
               downstream: list[str], ok: bool, summary: str, plan_lines: list[str],
               failed: dict[str, str], skipped: dict[str, str], runs: list[RunSummary],
               promotions: list[PromotionSummary], errors: list[str],
               monitors: list[str] | None = None) -> str:
    """What a push did: runs, promotion decisions with their comparison, rollouts."""
    verdict = f"{PASS} applied" if ok else f"{FAIL} failed"
    since = (f"compared with `{short(changes.base)}` ({changes.base_name})" if changes.base
             else "the first commit processed: every file is new")
    out = [f"## mlinfra ci run: `{project}`, stack `{stack}`: {verdict}", "",
           f"Commit `{short(changes.head)}`, {since}.", ""]
    if errors:
        out += [f"**{FAIL} The project cannot be applied:**", "", fenced(errors), ""]
    else:
        out += [f"**{summary}**", ""]
    if failed or skipped:
        out += ["### Failures", ""]
        out += [f"- {FAIL} `{address}`: {message.splitlines()[0] if message else ''}"
                for address, message in failed.items()]
        out += [f"- not applied: `{address}` ({message})" for address, message in
                skipped.items()]
        for address, message in failed.items():
            if "\n" in message:
                out += ["", details(f"{address}", fenced(message.splitlines()))]
        out.append("")
    out += _changes_section(changes, direct, downstream)
    out += ["### Runs", ""]
    out += [_run_rows(runs)] if runs else ["No run started."]
    out.append("")
    for run in runs:
        if run.status != "completed":
            out += [f"Run `{run.id}` ({run.name}) {run.status}"
                    + (f": {run.error}" if run.error else "") + ". The end of its log:", "",
                    fenced(run.log_tail or ["(empty)"]), ""]
    out += ["### Promotions", ""]
    if promotions:
        for promotion in promotions:
            out += _promotion(promotion)
    else:
        out += ["No promotion decision was made.", ""]
    out += _monitors_section(monitors)
    if plan_lines:
        out += _plan_section(plan_lines, "The plan it applied")
    return "\n".join(out).rstrip() + "\n"

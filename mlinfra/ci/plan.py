"""`mlinfra ci plan`: what a pull request would do, before anything happens.

Git gives the files changed since the merge base with the base branch (uncommitted ones
included: a plan may run on a dirty tree); the engine validates and plans exactly as
`mlinfra plan` does, reading the state and changing nothing; the report adds the runs
the plan would start, each promotion's verdict in advance and the data expectations'
results on the current content.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlinfra.ci import report
from mlinfra.ci.changes import ChangeSet, Repository, affected
from mlinfra.engine import Session, open_session, plan, workspace_address
from mlinfra.errors import ConfigurationError, MlinfraError
from mlinfra.plan.model import Action, Plan
from mlinfra.spec.model import Resource


@dataclass
class Outcome:
    report: str
    ok: bool  # validated and planned, and the data passes its expectations
    stack: str
    project: str


def project_names(root: Path, stack: str | None) -> tuple[str, str]:
    """(project, stack) from mlinfra.yaml even when the project does not validate, so a
    report of its errors still finds its comment."""
    import yaml

    try:
        settings = yaml.safe_load((root / "mlinfra.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        settings = {}
    if not isinstance(settings, dict):
        settings = {}
    chosen = stack or settings.get("default_stack") or "default"
    return str(settings.get("name") or root.name), Path(str(chosen)).stem


def plan_text(session: Session, the_plan: Plan) -> list[str]:
    """Exactly what `mlinfra plan` prints."""
    from mlinfra.monitoring.planning import notes
    from mlinfra.plan.render import render

    lines = [text for text, _ in render(the_plan)]
    return (lines + session.provider.plan_notes(session.ctx)
            + notes(session.config, session.store, the_plan))


def monitor_lines(session: Session, the_plan: Plan) -> list[str]:
    """`monitor.NAME: verdict; what a breach would retrain`, one per monitor."""
    from mlinfra.monitoring.planning import notes

    return [line for line in notes(session.config, session.store, the_plan)
            if line.startswith("  monitor.")]


def runs_started(the_plan: Plan) -> list[tuple[str, str]]:
    """The jobs and pipelines the plan runs, and why."""
    return [(c.address, c.reason) for c in the_plan.actionable
            if c.kind in ("Job", "Pipeline") and c.action in (Action.CREATE, Action.UPDATE,
                                                               Action.REPLACE)
            and {"run_hash", "steps_resolved"} & set(c.after or {})]


def verdict_in_advance(session: Session, res: Resource, the_plan: Plan) -> str:
    """What the promotion will do with the candidate this plan brings, in one line."""
    from mlinfra.registry.models import ModelRegistry

    spec = res.spec
    model, alias = str(spec["model"]), str(spec.get("alias", "champion"))
    changes = {c.address: c for c in the_plan.changes}
    mine, trained = changes.get(res.address), changes.get(f"model.{model}")
    if mine is None or mine.action in (Action.NOOP, Action.DELETE):
        return f"**{res.name}**: no new candidate of {model} in this plan: nothing to decide"
    registry = ModelRegistry(session.store)
    if trained is not None and trained.action is not Action.NOOP:
        candidate = f"the new version of {model} this apply registers"
    else:
        latest = registry.latest(model)
        candidate = latest.ref if latest else f"the version of {model} apply registers"
    current = registry.aliases(model).get(alias)
    compare = spec.get("compare") or {}
    gates = spec.get("gates") or {}
    bounds = [f"{m} {'>=' if side == 'min' else '<='} {v}"
              for m, b in (gates.get("metrics") or {}).items() for side, v in b.items()]
    bounds += [f"data {d} expectations" for d in gates.get("data") or []]
    gated = f"; gates: {', '.join(bounds)}" if bounds else ""
    if current is None:
        text = (f"**{res.name}**: {candidate} takes {model}@{alias} (empty now) if it passes "
                f"its gates{gated}")
    elif compare.get("metric"):
        better = "higher" if compare.get("direction", "max") == "max" else "lower"
        text = (f"**{res.name}**: {candidate} will be compared with {model}@{alias} = "
                f"{current} on {compare['metric']}, promoted if {better} by "
                f"{compare.get('min_delta', 0)} or more (a tie never wins){gated}")
    else:
        text = (f"**{res.name}**: {candidate} replaces {model}@{alias} = {current} if it "
                f"passes its gates{gated}")
    rollout = spec.get("rollout")
    if rollout:
        from mlinfra.providers.local.endpoint.canary import DEFAULT_ERROR_RATE, DEFAULT_STEPS
        from mlinfra.spec.model import duration_in

        limits = rollout.get("rollback_on") or {}
        thresholds = [f"error rate {limits.get('error_rate', DEFAULT_ERROR_RATE)}"]
        if limits.get("p99_ms") is not None:
            thresholds.append(f"p99 {duration_in(limits['p99_ms'], 0.001, 0):g} ms")
        steps = "/".join(str(s) for s in rollout.get("steps") or DEFAULT_STEPS)
        hold = duration_in(rollout.get("hold_s"), 1.0, 5)
        text += (f"; rollout {steps} on {rollout['endpoint']} (hold {hold:g}s"
                 f" each, rolled back above {' or '.join(thresholds)}"
                 + (", replaying captured requests when quiet" if rollout.get("replay")
                    else "") + ")")
    return text


def data_verdicts(session: Session, the_plan: Plan) -> list[report.DataVerdict]:
    """Each Data asset with expectations, on its current content: the verdict recorded
    for it, or (new content) its expectations run now; nothing is recorded."""
    from mlinfra.data.checks import DataChecks
    from mlinfra.data.handler import DataHandler

    changes = {c.address: c for c in the_plan.changes}
    checks = DataChecks(session.store)
    out = []
    for res in sorted(session.config.of("Data").values(), key=lambda r: r.name):
        expectations = res.spec.get("expectations") or []
        if not expectations:
            continue
        change = changes.get(res.address)
        after: dict[str, Any] = (change.after or {}) if change is not None else {}
        sha = str(after.get("sha256", ""))
        if not sha:
            continue
        new = change is not None and change.action is not Action.NOOP
        content = f"sha256 {sha[:12]}" + (f" (new: version {after.get('version')})" if new
                                          else f" (version {after.get('version')})")
        fmt = str(res.spec.get("format", "csv"))
        found = checks.get(res.name, sha, fmt, expectations)
        checked_now = False
        if found is None and new:
            try:
                found = checks.check(res.name, sha, DataHandler().path(res, session.ctx), fmt,
                                     expectations, res.name)
            except MlinfraError as err:
                out.append(report.DataVerdict(res.name, content, len(expectations), False,
                                              [err.message]))
                continue
            checked_now = True
        out.append(report.DataVerdict(
            res.name, content, len(expectations), None if found is None else found.passed,
            [f.describe() for f in found.failures] if found else [], checked_now))
    return out


def ci_plan(directory: Path, stack: str | None, base: str | None,
            log: Callable[[str], None] = lambda _: None) -> Outcome:
    """Plan the pull request at HEAD against `base`'s merge base; never writes."""
    from mlinfra.spec.project import find_root

    root = find_root(directory)
    project, stack_name = project_names(root, stack)
    repo = Repository(root)
    try:
        base_commit, base_name = repo.base(base)
        merge_base = repo.merge_base(base_commit, base_name)
        changes: ChangeSet = repo.changes(merge_base, base_name, worktree=True)
    finally:
        repo.close()
    try:
        session = open_session(root, stack, "ci plan", write=False, log=log)
    except ConfigurationError as err:
        text = report.plan_report(project, stack_name, changes, {}, [], "", [], [], [], [],
                                  err.render().splitlines())
        return Outcome(text, False, stack_name, project)
    try:
        stack_name, project = session.stack, session.config.name
        direct, downstream = affected(session.config, changes.files,
                                      workspace_address(session.config))
        try:
            the_plan = plan(session)
        except MlinfraError as err:
            text = report.plan_report(project, stack_name, changes, direct, downstream, "",
                                      [], [], [], [], err.message.splitlines())
            return Outcome(text, False, stack_name, project)
        from mlinfra.plan.render import summary_line

        promotions = [verdict_in_advance(session, res, the_plan)
                      for res in sorted(session.config.of("Promotion").values(),
                                        key=lambda r: r.name)]
        verdicts = data_verdicts(session, the_plan)
        text = report.plan_report(
            project, stack_name, changes, direct, downstream,
            summary_line(the_plan) if the_plan.has_changes() else
            "No changes. The stack matches the configuration.",
            plan_text(session, the_plan), runs_started(the_plan), promotions, verdicts, [],
            monitor_lines(session, the_plan))
        # Data that fails its expectations fails the check: apply would refuse it after
        # the merge.
        return Outcome(text, not any(v.passed is False for v in verdicts), stack_name,
                       project)
    finally:
        session.close()

"""`mlinfra ci run`: a push applied unattended, and reported.

The working tree must be clean (the state records what a commit did, so a run of
uncommitted files would be recorded against the wrong commit) unless allowed. A commit
processed without failure, from a clean tree, is recorded per stack in the audit log
with the state's serial after it; running again on it does nothing and says so while
the state is still at that serial and a plan shows no change (after a destroy, an apply
by hand or a failed one, the commit is applied again). Otherwise, under the stack's lock: what
changed since the last processed commit, the same plan and apply as `mlinfra apply`,
then the report: runs and their metrics, failed runs with the end of their logs, each
promotion decision with champion and candidate on every evaluated metric (differences
with paired bootstrap intervals), gates and the rollout's steps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlinfra.ci import report
from mlinfra.ci.changes import SHALLOW_HINT, ChangeSet, GitProblem, Repository, affected
from mlinfra.ci.plan import monitor_lines, plan_text
from mlinfra.engine import Event, Session, execute, open_session, plan, workspace_address
from mlinfra.errors import MlinfraError
from mlinfra.plan.model import tally
from mlinfra.registry.decisions import CI_RUN, PROMOTION, Decision, DecisionLog, trigger
from mlinfra.state.model import StateVersion


@dataclass
class Outcome:
    report: str  # "" when the commit had been processed
    ok: bool
    message: str  # one line for the console
    stack: str = ""


def processed(log: DecisionLog, stack: str, commit: str, version: StateVersion
              ) -> Decision | None:
    """The record of `commit` when the last ci run of `stack` processed it without
    failure from a clean tree and nothing changed the state since, else None."""
    last = log.last(CI_RUN, f"stack.{stack}")
    if last is None:
        return None
    detail = last.detail
    if (detail.get("commit") == commit and detail.get("ok") and not detail.get("dirty")
            and detail.get("lineage") == version.lineage
            and detail.get("serial") == version.serial):
        return last
    return None


def _skipped(stack: str, commit: str, record: Decision) -> Outcome:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.at))
    return Outcome("", True, f"commit {commit[:12]} of stack '{stack}' was processed by "
                   f"ci run at {when}: nothing to do", stack)


def _runs(session: Session, since: float) -> list[report.RunSummary]:
    from mlinfra.runs.store import RunStore

    store = RunStore(session.store)
    out = []
    for run in reversed(store.recent(limit=500)):
        if run.created_at < since or run.reused_from:
            continue
        metrics = {k: float(points[-1][1]) for k, points in store.metrics(run.id).items()}
        tail: list[str] = []
        if run.status != "completed" and run.run_dir:
            log_path = Path(run.run_dir) / "output.log"
            if log_path.exists():
                lines = log_path.read_text(errors="replace").splitlines()
                tail = lines[-report.LOG_TAIL_LINES:]
        name = f"{run.pipeline}/{run.step}" if run.step else run.job
        out.append(report.RunSummary(run.id, name, run.status, run.duration, metrics,
                                     run.error.splitlines()[0] if run.error else "", tail))
    return out


def _promotions(session: Session, decisions: list[Decision]) -> list[report.PromotionSummary]:
    from mlinfra.ci.bootstrap import compare
    from mlinfra.registry.evaluate import ModelInvalid
    from mlinfra.registry.models import ModelRegistry

    registry = ModelRegistry(session.store)
    out = []
    for decision in decisions:
        detail = decision.detail
        summary = report.PromotionSummary(decision.address, detail)
        model = session.config.get("Model", str(detail.get("model")))
        candidate = registry.get(str(detail.get("model")), int(detail.get("candidate") or 0))
        champion_version = detail.get("champion")
        champion = registry.get(str(detail.get("model")), int(champion_version or 0))
        if champion is None:
            summary.note = "No champion to compare with: the alias was empty."
        elif model is None or candidate is None or not model.spec.get("evaluation"):
            summary.note = "No evaluation to compare the two on."
        elif champion.version == candidate.version:
            summary.note = f"{candidate.ref} is the champion already."
        else:
            try:
                summary.data, summary.compared = compare(session.ctx, model, candidate,
                                                         champion)
            except ModelInvalid as err:
                summary.note = f"The two versions cannot be compared here: {err.message}"
        out.append(summary)
    return out


def ci_run(directory: Path, stack: str | None, allow_dirty: bool = False,
           lock_timeout: float = 0.0, parallelism: int = 4,
           on_event: Event = lambda *_: None,
           log: Callable[[str], None] = lambda _: None) -> Outcome:
    from mlinfra.engine import writing
    from mlinfra.spec.project import find_root

    repo = Repository(find_root(directory))
    try:
        head = repo.head
        dirty = repo.dirty()
        if dirty and not allow_dirty:
            listed = ", ".join(dirty[:10]) + (" ..." if len(dirty) > 10 else "")
            raise GitProblem(f"the working tree has uncommitted changes ({listed}): ci run "
                             "applies commits; commit them, or pass --allow-dirty")
        session = open_session(directory, stack, "ci run", write=True, log=log)
        try:
            decisions = DecisionLog(session.store)
            store = session.store
            record = None if dirty else processed(decisions, session.stack, head,
                                                  store.version())
            if record is not None and not plan(session).has_changes():
                return _skipped(session.stack, head, record)
            with writing(session, "ci run", lock_timeout):
                # Another ci run may have processed it while this one waited for the lock.
                record = None if dirty else processed(decisions, session.stack, head,
                                                      store.version())
                if record is not None and not plan(session).has_changes():
                    return _skipped(session.stack, head, record)
                done = [r for r in decisions.read(CI_RUN, address=f"stack.{session.stack}")
                        if r.detail.get("ok")]
                since = str(done[-1].detail.get("commit") or "") if done else ""
                if since and repo.is_ancestor(since):
                    changes = repo.changes(since, "the last commit ci run applied without "
                                           "failure", allow_dirty)
                else:
                    parent = repo.commit("HEAD^")
                    if parent is None and repo.shallow:
                        raise GitProblem("the commit before HEAD is not here, so what "
                                         f"changed cannot be told: {SHALLOW_HINT}")
                    changes = repo.changes(parent, "HEAD^" if parent else "", allow_dirty)
                # Runs made from here on are this apply's (not those of a ci run that
                # held the lock before).
                outcome = _apply(session, changes, decisions, time.time(), parallelism,
                                 on_event)
                # The record is the state's next change: the serial it leaves is known.
                version = store.version()
                decisions.record(f"stack.{session.stack}", CI_RUN, {
                    "commit": head, "ok": outcome.ok, "dirty": bool(dirty),
                    "trigger": trigger("ci run"), "lineage": version.lineage,
                    "serial": version.serial + 1})
                return outcome
        finally:
            session.close()
    finally:
        repo.close()


def _apply(session: Session, changes: ChangeSet, decisions: DecisionLog, started: float,
           parallelism: int, on_event: Event) -> Outcome:
    project, stack = session.config.name, session.stack
    direct, downstream = affected(session.config, changes.files,
                                  workspace_address(session.config))
    first_decision = decisions.newest_id()
    try:
        the_plan = plan(session)
    except MlinfraError as err:
        text = report.run_report(project, stack, changes, direct, downstream, False, "", [],
                                 {}, {}, [], [], err.message.splitlines())
        return Outcome(text, False, "the project cannot be planned", stack)
    lines = plan_text(session, the_plan) if the_plan.has_changes() else []
    monitors = monitor_lines(session, the_plan)
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    applied = []
    if the_plan.has_changes():
        result = execute(session, the_plan, parallelism, on_event)
        failed, skipped, applied = result.failed, result.skipped, result.applied
    counts = tally(applied)
    summary = (f"Resources: {counts['add']} added, {counts['change']} changed, "
               f"{counts['replace']} replaced, {counts['destroy']} destroyed."
               if the_plan.has_changes() else
               "No changes. The stack matches the configuration.")
    ok = not failed and not skipped
    promotions = _promotions(session, decisions.read(PROMOTION, first_decision))
    text = report.run_report(project, stack, changes, direct, downstream, ok, summary, lines,
                             failed, skipped, _runs(session, started), promotions, [],
                             monitors)
    message = (f"ci run of {changes.head[:12]} on stack '{stack}': "
               + ("applied" if ok else f"{len(failed)} failed, {len(skipped)} not applied"))
    return Outcome(text, ok, message, stack)

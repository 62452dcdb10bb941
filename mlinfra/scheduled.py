"""What a fired schedule runs, through the engine: an apply of the stack, a pipeline on
the latest data (the pipeline and everything built on it), or a monitor.

The stack's lock is taken for the write alone and given back at once; the changes are
made and journaled as any apply makes them, with the schedule's run as their actor
(`nightly-20261207T010000Z`), which the audit log and the events name.
"""

from __future__ import annotations

from mlinfra.engine import Session, execute, plan, workspace_address
from mlinfra.errors import MlinfraError
from mlinfra.events.schedules import ScheduleSpec
from mlinfra.graph import address, references
from mlinfra.plan.model import tally
from mlinfra.state.lock import locked


def downstream(session: Session, start: str) -> list[str]:
    """`start` and every resource that depends on it, directly or not."""
    config = session.config
    workspace = workspace_address(config)
    deps = {r.address: set(references(r, config, workspace)) for r in config.all()}
    found = {start}
    grew = True
    while grew:
        grew = False
        for addr, needs in deps.items():
            if addr not in found and needs & found:
                found.add(addr)
                grew = True
    return sorted(found)


class ScheduledWork:
    """The agent's `Work`: runs one fired schedule in `session`."""

    def __init__(self, session: Session, lock_timeout: float = 300.0) -> None:
        self.session, self.lock_timeout = session, lock_timeout

    def __call__(self, spec: ScheduleSpec, name: str, instant: float) -> str:
        store = self.session.store
        before = store.origin.get("actor"), store.command
        store.origin["actor"] = {"kind": "schedule", "name": name}
        store.command = f"agent: {name}"
        try:
            return self._run(spec, name)
        finally:
            store.origin["actor"], store.command = before
            if store.origin["actor"] is None:
                del store.origin["actor"]

    def _run(self, spec: ScheduleSpec, name: str) -> str:
        run = spec.run
        if "monitor" in run:
            return self._monitor(str(run["monitor"]), name)
        targets: list[str] = []
        if "pipeline" in run:
            pipeline = address("Pipeline", str(run["pipeline"]))
            if self.session.config.get("Pipeline", str(run["pipeline"])) is None:
                raise MlinfraError(f"schedule.{spec.name}: there is no {pipeline}")
            targets = downstream(self.session, pipeline)
        with locked(self.session.store, self.session.stack, f"agent: {name}",
                    self.lock_timeout):
            the_plan = plan(self.session, targets=targets)
            if not the_plan.has_changes():
                return "no changes"
            result = execute(self.session, the_plan)
        counts = tally(result.applied)
        summary = (f"{counts['add']} added, {counts['change']} changed, "
                   f"{counts['replace']} replaced, {counts['destroy']} destroyed")
        if not result.ok:
            raise MlinfraError(f"{summary}; failed: " + "; ".join(
                f"{a}: {m}" for a, m in {**result.failed, **result.skipped}.items()))
        return summary

    def _monitor(self, monitor: str, name: str) -> str:
        """`mlinfra monitor run NAME`: its windows and verdict recorded (a breach is
        announced with them), the stack's lock held while it writes."""
        from mlinfra.monitoring import run

        if self.session.config.get("Monitor", monitor) is None:
            raise MlinfraError(f"there is no monitor.{monitor}")
        with locked(self.session.store, self.session.stack, f"agent: {name}",
                    self.lock_timeout):
            verdicts = run(self.session, monitor)
        return "; ".join(v.line() for v in verdicts)

"""Page 2, the plan: what `mlinfra plan` would do now, as the resource graph (its
dependencies drawn, each change marked with Terraform's symbol) and as the text plan,
the same lines the command prints; or a plan saved by `mlinfra plan --out`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from mlinfra.errors import ConfigurationError, MlinfraError
from mlinfra.plan.model import Action, Plan
from mlinfra.plan.render import render, summary_line

if TYPE_CHECKING:
    from mlinfra.engine import Session
    from mlinfra.studio.app import Pages


def graph(plan: Plan) -> dict[str, Any]:
    """The plan's resources and their dependencies, for the page's layout: each node
    with its action's symbol and name, and the reason for people. A dependency that
    another one already implies (everything needs the workspace; a job that needs
    the pipeline's data needs it through the data) is not drawn twice: the edges are
    the graph's transitive reduction, which orders the resources the same way."""
    nodes = [{"id": c.address, "kind": c.kind, "name": c.name, "action": c.action.name.lower(),
              "symbol": c.action.value.strip() or "=", "reason": c.reason}
             for c in plan.changes]
    deps = {c.address: [d for d in c.dependencies if d != c.address] for c in plan.changes}
    edges = [{"from": dep, "to": address} for address, direct in deps.items()
             for dep in reduce(direct, deps)]
    return {"nodes": nodes, "edges": edges}


def reduce(direct: list[str], deps: dict[str, list[str]]) -> list[str]:
    """The dependencies in `direct` that no other one of them leads to."""
    present = [d for d in dict.fromkeys(direct) if d in deps]
    implied: set[str] = set()
    for start in present:
        todo = list(deps.get(start, []))
        while todo:
            node = todo.pop()
            if node in implied or node not in deps:
                continue
            implied.add(node)
            todo.extend(deps[node])
    return [d for d in present if d not in implied]


def text(plan: Plan) -> list[tuple[str, str]]:
    """The text plan as `mlinfra plan` prints it: (line, style) pairs."""
    return render(plan)


def plan_notes(session: Session, plan: Plan) -> list[str]:
    """The lines `mlinfra plan` prints under the plan: the provider's (what Pulumi would
    change), each schedule's next firings, and each monitor's standing with what a
    breach would retrain."""
    from mlinfra.monitoring.planning import notes

    found = list(session.provider.plan_notes(session.ctx))
    if session.config.of("Schedule"):
        from mlinfra.events.schedules import plan_notes as schedule_notes

        found += schedule_notes(session.config)
    return [*found, *notes(session.config, session.store, plan)]


def saved_plan(root: Path, name: str) -> Plan:
    """A plan file saved by `mlinfra plan --out`, which must lie inside the project."""
    from mlinfra.plan import planfile

    path = (root / name).resolve()
    if not path.is_relative_to(root.resolve()):
        raise MlinfraError(f"{name}: the studio opens plan files inside the project "
                           f"folder {root} only")
    if not path.is_file():
        raise MlinfraError(f"{name}: no such file in the project folder")
    return planfile.load(path)


def routes(pages: Pages) -> list[BaseRoute]:
    studio = pages.studio

    def page(request: Request) -> HTMLResponse:
        from mlinfra.engine import plan as make_plan

        name = request.query_params.get("file", "").strip()
        error = ""
        the_plan: Plan | None = None
        notes: list[str] = []
        stale = ""
        try:
            if name:
                the_plan = saved_plan(studio.root, name)
                version = studio.store.version()
                if (the_plan.lineage, the_plan.serial) != (version.lineage, version.serial) \
                        and the_plan.lineage != "":
                    stale = (f"saved at state serial {the_plan.serial}; the state is now at "
                             f"{version.serial}: apply would refuse it")
            else:
                session = studio.fresh_session()
                try:
                    the_plan = make_plan(session)
                    notes = plan_notes(session, the_plan)
                finally:
                    session.close()
        except ConfigurationError as err:
            error = err.render()
        except MlinfraError as err:
            error = err.message
        counts = the_plan.counts() if the_plan is not None else {}
        return pages.render(
            request, "plan.html", "plan", plan=the_plan, file=name, error=error,
            stale=stale, counts=counts,
            graph=graph(the_plan) if the_plan is not None else {"nodes": [], "edges": []},
            lines=[*text(the_plan), *((n, "") for n in notes)] if the_plan is not None
            else [],
            summary=summary_line(the_plan) if the_plan is not None else "",
            actions=[a for a in Action if a is not Action.NOOP])

    return [Route("/plan", page)]

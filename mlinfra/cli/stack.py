"""mlinfra plan, apply, destroy, state, output: the engine's commands."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlinfra.cli.console import confirm, echo, echo_err, emit, print_lines, session_for
from mlinfra.errors import MlinfraError

if TYPE_CHECKING:
    from mlinfra.engine import Session
    from mlinfra.plan.model import Change, Plan
    from mlinfra.state.work import UnitOfWork


def _print_plan(plan: Plan) -> None:
    from mlinfra.plan.render import render

    print_lines(render(plan))


_VERBS = {"CREATE": ("Creating", "Creation"), "UPDATE": ("Modifying", "Modifications"),
          "REPLACE": ("Replacing", "Replacement"), "DELETE": ("Destroying", "Destruction")}


def progress(event: str, change: Change, elapsed: float, message: str) -> None:
    doing, done = _VERBS.get(change.action.name, ("Applying", "Apply"))
    if event == "start":
        emit(f"{change.address}: {doing}...", "bold")
    elif event == "done":
        emit(f"{change.address}: {done} complete after {elapsed:.1f}s", "bold green")
    elif event == "fail":
        emit(f"{change.address}: failed after {elapsed:.1f}s: {message}", "bold red")
    elif event == "skip":
        emit(f"{change.address}: not applied ({message})", "yellow")
    else:
        emit(f"{change.address}: {message}", "yellow")


def _run_apply(session: Session, plan: Plan, args: argparse.Namespace, ask: str,
               verb: str) -> int:
    from mlinfra.engine import execute
    from mlinfra.plan.model import tally

    if not args.auto_approve and not confirm(ask):
        echo_err(f"{verb.capitalize()} cancelled.")
        return 1
    result = execute(session, plan, args.parallelism, progress)
    for entry in result.interrupted:
        echo_err(f"Note: an earlier run (pid {entry.pid}) was interrupted during "
             f"{entry.action} of {entry.address}; this run reconciled it.")
    counts = tally(result.applied)
    summary = (f"{counts['add']} added, {counts['change']} changed, {counts['replace']} "
               f"replaced, {counts['destroy']} destroyed")
    if result.ok:
        echo()
        emit(f"{verb.capitalize()} complete! Resources: {summary}.", "bold green")
        return 0
    echo_err(f"\n{verb.capitalize()} failed. Resources: {summary}.")
    for address, message in result.failed.items():
        echo_err(f"  failed: {address}: {message}")
    for address, message in result.skipped.items():
        echo_err(f"  not applied: {address} ({message})")
    return 1


def cmd_plan(args: argparse.Namespace) -> int:
    from mlinfra.engine import plan
    from mlinfra.plan import planfile

    session = session_for(args, "plan", write=False)
    try:
        the_plan = plan(session, targets=args.target, destroy=args.destroy,
                        do_refresh=args.refresh, replace=args.replace)
        interrupted = session.store.interrupted_operations()
        notes = [] if args.json else session.provider.plan_notes(session.ctx)
        if not args.json and session.config.of("Schedule") and not args.destroy:
            from mlinfra.events.schedules import plan_notes

            notes = [*notes, *plan_notes(session.config)]
        if not args.json and not args.destroy:
            from mlinfra.monitoring.planning import notes as monitor_notes

            notes += monitor_notes(session.config, session.store, the_plan)
    finally:
        session.close()
    if args.json:
        from mlinfra.plan.diff import masked

        echo(json.dumps(masked(the_plan.to_json()), indent=2))
    else:
        for entry in interrupted:
            echo_err(f"Note: an apply (pid {entry.pid}) was interrupted during {entry.action} of "
                 f"{entry.address}; the plan below reconciles it.")
        _print_plan(the_plan)
        print_lines([(line, "") for line in notes])
    if args.out:
        planfile.save(the_plan, Path(args.out))
        if not args.json:
            echo(f"\nSaved the plan to {args.out}. To apply exactly this plan, run:\n"
                 f"  mlinfra apply {args.out}")
    if args.detailed_exitcode and the_plan.has_changes():
        return 2
    return 0


def _apply_or_destroy(args: argparse.Namespace, destroy: bool) -> int:
    """Lock, plan (or load the saved plan), show, confirm, apply."""
    from mlinfra.engine import check_fresh, plan, writing
    from mlinfra.plan import planfile

    verb = "destroy" if destroy else "apply"
    session = session_for(args, verb, write=True)
    try:
        with writing(session, verb, args.lock_timeout):
            if getattr(args, "planfile", None):
                the_plan = planfile.load(Path(args.planfile))
                check_fresh(session, the_plan)
                args.auto_approve = True  # a saved plan was reviewed already
            else:
                the_plan = plan(session, targets=args.target, destroy=destroy,
                                do_refresh=args.refresh, replace=args.replace)
            _print_plan(the_plan)
            if not the_plan.has_changes():
                return 0
            question = ("Do you really want to destroy these resources?" if destroy else
                        "Do you want to perform these actions?")
            return _run_apply(session, the_plan, args, question, verb)
    finally:
        session.close()


def cmd_apply(args: argparse.Namespace) -> int:
    return _apply_or_destroy(args, destroy=False)


def cmd_destroy(args: argparse.Namespace) -> int:
    return _apply_or_destroy(args, destroy=True)


def cmd_state(args: argparse.Namespace) -> int:
    from mlinfra.engine import operation, writing
    from mlinfra.state.lock import force_unlock

    session = session_for(args, f"state {args.state_command}",
                          write=args.state_command in ("rm", "unlock", "migrate"))
    store = session.store
    try:
        if args.state_command == "list":
            for address in sorted(store.resources()):
                echo(address)
        elif args.state_command == "show":
            found = store.get(args.address)
            if found is None:
                raise MlinfraError(f"{args.address} is not in the state; "
                                   "mlinfra state list shows what is")
            from mlinfra.plan.diff import masked

            echo(json.dumps({"address": found.address, "kind": found.kind,
                             "attributes": masked(found.attributes), "outputs": found.outputs,
                             "provider_id": found.provider_id,
                             "dependencies": found.dependencies}, indent=2, default=str))
        elif args.state_command == "rm":
            with writing(session, "state rm", args.lock_timeout):
                for address in args.address:
                    if store.get(address) is None:
                        raise MlinfraError(f"{address} is not in the state")
                    store.commit_change(None, address, "state-rm", None,
                                        "removed from state; the object itself is kept")
                    echo(f"Removed {address} from the state (the object itself is kept).")
        elif args.state_command == "unlock":
            info = force_unlock(store, session.stack, args.lock_id)
            echo(f"Unlocked stack '{session.stack}' (was {info.describe()}).")
        elif args.state_command == "migrate":
            with writing(session, "state migrate", args.lock_timeout), \
                    operation(session, f"stack.{session.stack}", "migrate", args.to) as work:
                return _migrate(session, args.to, args.lock_timeout, work)
        return 0
    finally:
        session.close()


def _migrate(session: Session, to: str, lock_timeout: float, work: UnitOfWork) -> int:
    """Copy the stack's state to `to` and verify it, as a journaled operation (`work`):
    a migration interrupted after its copy began is finished by running it again (the
    copy of this state at `to` is made again). The caller holds the lock."""
    from mlinfra.engine import open_store_at, state_location
    from mlinfra.state.lock import locked
    from mlinfra.state.transfer import copy_state

    config, source = session.config, session.store
    location = state_location(config, to)
    if location == state_location(config):
        raise MlinfraError(f"--to {to} is where the stack's state is already")
    moved = source.moved()
    target = open_store_at(config, location, "state migrate", write=True)
    shown = target.location
    if moved is not None:
        target.close()
        if moved["to"] != shown:
            raise MlinfraError(f"the state at {source.location} was moved to {moved['to']} "
                               "already (mlinfra state migrate): migrate from there")
        echo(f"The state of stack '{session.stack}' was moved to {shown} already, and "
             "verified. Point the stack at it (state: in the stack file).")
        return 0
    earlier = [e for e in source.interrupted_operations()
               if (e.address, e.action) == (work.address, "migrate")]
    earlier += source.operations(work.address, "migrate", "failed")
    earlier += source.operations(work.address, "migrate", "interrupted")
    resumed = any(step.name == "copy" and step.data.get("to") == shown
                  for entry in earlier for step in source.steps(entry.id))
    try:
        with locked(target, session.stack, "state migrate", lock_timeout):
            work.step("copy", {"to": shown})
            report = copy_state(source, target, resume=resumed)
    finally:
        target.close()
    echo(f"Copied the state of stack '{session.stack}' from {source.location} to "
         f"{target.location}:")
    print_lines([(f"  {t.table:<14} {t.rows:>7} rows  sha256 {t.digest[:16]}  "
                  f"{'verified' if t.verified else 'DIFFERS'}", "" if t.verified else "bold red")
                 for t in report])
    differs = [t.table for t in report if not t.verified]
    if differs:
        raise MlinfraError(f"the copy differs from the state in {', '.join(differs)}: the "
                           f"stack still uses {source.location}; do not point it at the copy")
    work.step("verified", {"to": shown})
    source.mark_moved(target.location)
    stack_file = config.stack.file or f"stacks/{session.stack}.yaml"
    echo(f"\nVerified: every table's rows and digest match. Now point the stack at it: in "
         f"{stack_file} set\n  state: {_without_password(to)}\nThe state at "
         f"{source.location} is kept as it was and marked as moved: every command but "
         "mlinfra state list and show stops on it and names the new one. Remove it once "
         "the stack works from the new one.")
    return 0


def _without_password(url: str) -> str:
    """A URL to write in a stack file: a password typed in it becomes a `${secret.X}`
    reference (the value is read from the environment, never kept in the file)."""
    from urllib.parse import urlsplit

    password = urlsplit(url).password if "://" in url else None
    if not password or password.startswith("${"):
        return url
    return (url.replace(f":{password}@", ":${secret.MLINFRA_DB_PASSWORD}@", 1)
            + "\n  (and export MLINFRA_DB_PASSWORD=... where mlinfra runs, rather than "
            "keep the password in the file)")


def _one_output(args: argparse.Namespace, address: str, field: str,
                outputs: dict[str, Any]) -> int:
    """`output ADDRESS.FIELD`: the value alone (JSON), or with -raw as plain text, as
    `terraform output -raw` prints a string, number or boolean."""
    if field not in outputs:
        raise MlinfraError(f"{address} has no output {field}; its outputs: "
                           f"{', '.join(sorted(outputs)) or 'none'}")
    value = outputs[field]
    if not args.raw:
        echo(json.dumps(value, indent=2 if args.json else None, default=str))
        return 0
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, str | int | float):
        text = str(value)
    else:
        raise MlinfraError(f"{address}.{field} is {type(value).__name__}, not a string, "
                           "number or boolean: -raw prints only those; use --json")
    sys.stdout.write(text)  # no newline, as Terraform's -raw, for $(...)
    sys.stdout.flush()
    return 0


def cmd_output(args: argparse.Namespace) -> int:
    session = session_for(args, "output", write=False)
    try:
        resources = session.store.resources()
    finally:
        session.close()
    if args.address and args.address not in resources and "." in args.address:
        address, _, field = args.address.rpartition(".")
        if address in resources:
            return _one_output(args, address, field, resources[address].outputs)
    if args.raw:
        raise MlinfraError("-raw prints one output: give it as ADDRESS.FIELD "
                           "(mlinfra output -raw endpoint.api.url)")
    if args.address:
        if args.address not in resources:
            raise MlinfraError(f"{args.address} is not in the state")
        resources = {args.address: resources[args.address]}
    outputs = {a: r.outputs for a, r in sorted(resources.items())}
    if args.json:
        echo(json.dumps(outputs, indent=2, default=str))
        return 0
    for address, values in outputs.items():
        for key, value in sorted(values.items()):
            echo(f"{address}.{key} = {json.dumps(value, default=str)}")
    return 0

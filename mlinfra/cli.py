"""The command line: parse, call one library function, print. Errors become messages
and exit codes here and nowhere else."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlinfra import __version__
from mlinfra.errors import ConfigurationError, MlinfraError

if TYPE_CHECKING:
    from mlinfra.engine import Session
    from mlinfra.plan.model import Change, Plan

Handler = Callable[[argparse.Namespace], int]
EXIT_INTERNAL = 70


def _out(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def _err(text: str) -> None:
    sys.stderr.write(text + "\n")


def _directory(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "directory", None) or ".")


def _stack(args: argparse.Namespace) -> str | None:
    return getattr(args, "stack", None)


# --- commands ---------------------------------------------------------------------------

def cmd_validate(args: argparse.Namespace) -> int:
    from mlinfra.spec import load

    try:
        config = load(_directory(args), _stack(args))
    except ConfigurationError as err:
        if args.json:
            _out(json.dumps({"valid": False, "summary": err.summary(),
                             "errors": [d.to_json() for d in err.diagnostics]}, indent=2))
            return err.exit_code
        raise
    counts = config.counts()
    total = sum(counts.values())
    if args.json:
        _out(json.dumps({"valid": True, "project": config.name, "stack": config.stack.name,
                         "resources": counts, "files": len(config.files)}, indent=2))
        return 0
    by_kind = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    _out(f"Valid: project {config.name}, stack {config.stack.name}: {total} resource"
         f"{'s' if total != 1 else ''} ({by_kind or 'none'}) in {len(config.files)} files.")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from mlinfra.spec.schemas import SCHEMAS, export

    if args.out:
        for path in export(Path(args.out)):
            _out(str(path))
        return 0
    if args.kind:
        kind = next((k for k in SCHEMAS if k.lower() == args.kind.lower()), None)
        if kind is None:
            raise MlinfraError(f"unknown kind '{args.kind}'; kinds: {', '.join(SCHEMAS)}")
        _out(json.dumps(SCHEMAS[kind], indent=2))
        return 0
    _out(json.dumps(SCHEMAS, indent=2))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from mlinfra.scaffold import init_project

    folder = Path(args.dir)
    written = init_project(folder, args.name)
    for path in written:
        _out(f"created {path}")
    _out(f"\nNext: mlinfra validate -C {folder}")
    return 0


def _emit(text: str, style: str = "") -> None:
    """One line to stdout: coloured by rich on a terminal, plain text otherwise (rich
    costs more to import than a small plan takes to make)."""
    if not sys.stdout.isatty():
        _out(text)
        return
    from rich.text import Text

    _rich_console().print(Text(text, style=style))


@cache
def _rich_console() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _print_lines(lines: list[tuple[str, str]]) -> None:
    for text, style in lines:
        _emit(text, style)


def _session(args: argparse.Namespace, command: str) -> Session:
    from mlinfra.engine import open_session

    return open_session(_directory(args), _stack(args), command,
                        log=lambda line: _emit(line, "dim"))


def _print_plan(plan: Plan) -> None:
    from mlinfra.plan.render import render

    _print_lines(render(plan))


def _confirm(question: str) -> bool:
    _out(f"\n{question}\n  Only 'yes' will be accepted to approve.\n")
    sys.stdout.write("  Enter a value: ")
    sys.stdout.flush()
    answer = sys.stdin.readline().strip()
    _out()
    return answer == "yes"


_VERBS = {"CREATE": ("Creating", "Creation"), "UPDATE": ("Modifying", "Modifications"),
          "REPLACE": ("Replacing", "Replacement"), "DELETE": ("Destroying", "Destruction")}


def _progress(event: str, change: Change, elapsed: float, message: str) -> None:
    doing, done = _VERBS.get(change.action.name, ("Applying", "Apply"))
    if event == "start":
        _emit(f"{change.address}: {doing}...", "bold")
    elif event == "done":
        _emit(f"{change.address}: {done} complete after {elapsed:.1f}s", "bold green")
    elif event == "fail":
        _emit(f"{change.address}: failed after {elapsed:.1f}s: {message}", "bold red")
    elif event == "skip":
        _emit(f"{change.address}: not applied ({message})", "yellow")
    else:
        _emit(f"{change.address}: {message}", "yellow")


def _run_apply(session: Session, plan: Plan, args: argparse.Namespace, ask: str,
               verb: str) -> int:
    from mlinfra.engine import execute

    if not args.auto_approve and not _confirm(ask):
        _err(f"{verb.capitalize()} cancelled.")
        return 1
    result = execute(session, plan, args.parallelism, _progress)
    for entry in result.interrupted:
        _err(f"Note: an earlier run (pid {entry.pid}) was interrupted during "
             f"{entry.action} of {entry.address}; this run reconciled it.")
    counts = {"add": 0, "change": 0, "replace": 0, "destroy": 0}
    keys = {"CREATE": "add", "UPDATE": "change", "REPLACE": "replace", "DELETE": "destroy"}
    for change in result.applied:
        counts[keys[change.action.name]] += 1
    tally = (f"{counts['add']} added, {counts['change']} changed, {counts['replace']} "
             f"replaced, {counts['destroy']} destroyed")
    if result.ok:
        _out()
        _emit(f"{verb.capitalize()} complete! Resources: {tally}.", "bold green")
        return 0
    _err(f"\n{verb.capitalize()} failed. Resources: {tally}.")
    for address, message in result.failed.items():
        _err(f"  failed: {address}: {message}")
    for address, message in result.skipped.items():
        _err(f"  not applied: {address} ({message})")
    return 1


def cmd_plan(args: argparse.Namespace) -> int:
    from mlinfra.engine import plan
    from mlinfra.plan import planfile

    session = _session(args, "plan")
    try:
        the_plan = plan(session, targets=args.target, destroy=args.destroy,
                        do_refresh=args.refresh)
        interrupted = session.store.interrupted_operations()
    finally:
        session.close()
    if args.json:
        _out(json.dumps(the_plan.to_json(), indent=2))
    else:
        for entry in interrupted:
            _err(f"Note: an apply (pid {entry.pid}) was interrupted during {entry.action} of "
                 f"{entry.address}; the plan below reconciles it.")
        _print_plan(the_plan)
    if args.out:
        planfile.save(the_plan, Path(args.out))
        if not args.json:
            _out(f"\nSaved the plan to {args.out}. To apply exactly this plan, run:\n"
                 f"  mlinfra apply {args.out}")
    if args.detailed_exitcode and the_plan.has_changes():
        return 2
    return 0


def _apply_or_destroy(args: argparse.Namespace, destroy: bool) -> int:
    """Lock, plan (or load the saved plan), show, confirm, apply."""
    from mlinfra.engine import check_fresh, plan
    from mlinfra.plan import planfile
    from mlinfra.state.lock import locked

    verb = "destroy" if destroy else "apply"
    session = _session(args, verb)
    try:
        with locked(session.store, session.stack, verb, args.lock_timeout):
            if getattr(args, "planfile", None):
                the_plan = planfile.load(Path(args.planfile))
                check_fresh(session, the_plan)
                args.auto_approve = True  # a saved plan was reviewed already
            else:
                the_plan = plan(session, targets=args.target, destroy=destroy,
                                do_refresh=args.refresh)
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
    from mlinfra.state.lock import force_unlock, locked

    session = _session(args, f"state {args.state_command}")
    store = session.store
    try:
        if args.state_command == "list":
            for address in sorted(store.resources()):
                _out(address)
        elif args.state_command == "show":
            found = store.get(args.address)
            if found is None:
                raise MlinfraError(f"{args.address} is not in the state; "
                                   "mlinfra state list shows what is")
            _out(json.dumps({"address": found.address, "kind": found.kind,
                             "attributes": found.attributes, "outputs": found.outputs,
                             "provider_id": found.provider_id,
                             "dependencies": found.dependencies}, indent=2, default=str))
        elif args.state_command == "rm":
            with locked(store, session.stack, "state rm", args.lock_timeout):
                store.backup()
                for address in args.address:
                    if store.get(address) is None:
                        raise MlinfraError(f"{address} is not in the state")
                    store.commit_change(None, address, "state-rm", None,
                                        "removed from state; the object itself is kept")
                    _out(f"Removed {address} from the state (the object itself is kept).")
        elif args.state_command == "unlock":
            info = force_unlock(store, session.stack, args.lock_id)
            _out(f"Unlocked stack '{session.stack}' (was {info.describe()}).")
        return 0
    finally:
        session.close()


def cmd_output(args: argparse.Namespace) -> int:
    session = _session(args, "output")
    try:
        resources = session.store.resources()
    finally:
        session.close()
    if args.address:
        if args.address not in resources:
            raise MlinfraError(f"{args.address} is not in the state")
        resources = {args.address: resources[args.address]}
    outputs = {a: r.outputs for a, r in sorted(resources.items())}
    if args.json:
        _out(json.dumps(outputs, indent=2, default=str))
        return 0
    for address, values in outputs.items():
        for key, value in sorted(values.items()):
            _out(f"{address}.{key} = {json.dumps(value, default=str)}")
    return 0


def _when(ts: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _seconds(value: float | None) -> str:
    return f"{value:.1f}s" if value is not None else "-"


def _table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    _out("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in rows:
        _out("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_runs(args: argparse.Namespace) -> int:
    from mlinfra.runs.store import RunStore

    session = _session(args, f"runs {args.runs_command}")
    try:
        runs = RunStore(session.store)
        if args.runs_command == "list":
            rows = [[r.id, r.experiment, r.step or "", r.status, _when(r.started_at),
                     _seconds(r.duration)] for r in runs.recent(args.experiment, args.limit)]
            _table(["RUN", "EXPERIMENT", "STEP", "STATUS", "STARTED", "DURATION"], rows)
            return 0
        found = [_find_run(runs, run_id) for run_id in args.run_id]
        if args.runs_command == "show":
            for run in found:
                _out(json.dumps({
                    "id": run.id, "experiment": run.experiment, "job": run.job,
                    "pipeline": run.pipeline, "step": run.step, "parent": run.parent,
                    "status": run.status, "error": run.error, "started": _when(run.started_at),
                    "duration_s": run.duration, "exit_code": run.exit_code,
                    "command": run.command, "params": {**run.params,
                                                       **runs.logged_params(run.id)},
                    "inputs": run.inputs, "outputs": run.outputs,
                    "metrics": {k: v[-1][1] for k, v in runs.metrics(run.id).items()},
                    "git": run.git, "environment": run.environment, "run_dir": run.run_dir},
                    indent=2, default=str))
        elif args.runs_command == "logs":
            return _logs(runs, found[0], args.follow)
        elif args.runs_command == "compare":
            _compare(runs, found)
        elif args.runs_command == "cancel":
            _cancel(runs, found)
        return 0
    finally:
        session.close()


def _find_run(runs: Any, run_id: str) -> Any:
    run = runs.find(run_id)
    if run is None:
        raise MlinfraError(f"no run '{run_id}': mlinfra runs list shows them")
    return run


def _logs(runs: Any, run: Any, follow: bool) -> int:
    import time

    path = Path(run.run_dir) / "output.log"
    offset = 0
    while True:
        if path.exists():
            with open(path, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            offset += len(chunk)
            sys.stdout.write(chunk.decode("utf-8", "replace"))
            sys.stdout.flush()
        current = runs.get(run.id)
        if not follow or current is None or current.status not in ("queued", "running"):
            return 0
        time.sleep(0.5)


def _compare(runs: Any, found: list[Any]) -> None:
    params = [{**r.params, **runs.logged_params(r.id)} for r in found]
    metrics = [{k: v[-1][1] for k, v in runs.metrics(r.id).items()} for r in found]
    rows = [["status", *[r.status for r in found]],
            ["duration", *[_seconds(r.duration) for r in found]]]
    for key in sorted({k for p in params for k in p}):
        rows.append([f"param {key}", *[str(p.get(key, "-")) for p in params]])
    for key in sorted({k for m in metrics for k in m}):
        rows.append([f"metric {key}", *[f"{m[key]:.6g}" if key in m else "-"
                                        for m in metrics]])
    _table(["", *[r.id for r in found]], rows)


def _cancel(runs: Any, found: list[Any]) -> None:
    import contextlib
    import os
    import signal

    from mlinfra.state.sqlite import HOST

    for run in found:
        if run.status not in ("queued", "running"):
            raise MlinfraError(f"run {run.id} is {run.status}; only a running run can be "
                               "canceled")
        runs.request_cancel(run.id)
        if run.pid and run.host == HOST:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.pid, signal.SIGTERM)
        _out(f"Canceling run {run.id}.")


def cmd_models(args: argparse.Namespace) -> int:
    from mlinfra.registry.models import ModelRegistry
    from mlinfra.spec.model import Ref

    session = _session(args, f"models {args.models_command}")
    try:
        registry = ModelRegistry(session.store)
        if args.models_command == "list":
            rows = []
            for version in registry.versions(args.name):
                aliases = [a for a, v in registry.aliases(version.name).items()
                           if v == version.version]
                metrics = ", ".join(f"{k}={v:.4g}" for k, v in version.metrics.items()
                                    if isinstance(v, int | float))
                rows.append([version.ref, ",".join(aliases), _when(version.created_at),
                             version.run_id or "-", metrics,
                             "archived" if version.archived else ""])
            _table(["MODEL", "ALIASES", "CREATED", "RUN", "METRICS", ""], rows)
            return 0
        ref = Ref.parse(args.ref)
        if ref is None:
            raise MlinfraError(f"'{args.ref}' is not NAME, NAME:VERSION or NAME@ALIAS")
        if args.models_command == "show":
            found = registry.resolve(ref.name, ref.version, ref.alias)
            _out(json.dumps({**vars(found), "aliases": registry.aliases(found.name)},
                            indent=2, default=str))
        elif args.models_command == "alias":
            if ref.alias is None:
                raise MlinfraError("give NAME@ALIAS, e.g. fraud@champion")
            registry.set_alias(ref.name, ref.alias, args.version, "set by mlinfra models alias")
            _out(f"{ref.name}@{ref.alias} -> {ref.name}:{args.version}")
        elif args.models_command == "tag":
            found = registry.resolve(ref.name, ref.version, ref.alias)
            tags = dict(item.split("=", 1) for item in args.tags if "=" in item)
            registry.set_tags(found.name, found.version, tags)
            _out(f"tagged {found.ref}: {tags}")
        elif args.models_command == "archive":
            found = registry.resolve(ref.name, ref.version, ref.alias)
            registry.archive(found.name, found.version, _serving(session, found))
            _out(f"archived {found.ref}")
        return 0
    finally:
        session.close()


def _serving(session: Session, version: Any) -> list[str]:
    """Endpoints whose deployments use this model version (by alias, pin or latest)."""
    from mlinfra.registry.models import ModelRegistry, RegistryError
    from mlinfra.spec.model import Ref

    registry = ModelRegistry(session.store)
    users = []
    for endpoint in session.config.of("Endpoint").values():
        for deployment in endpoint.spec.get("deployments") or []:
            ref = Ref.parse(str(deployment.get("model", "")))
            if ref is None or ref.name != version.name:
                continue
            try:
                served = registry.resolve(ref.name, ref.version, ref.alias)
            except RegistryError:
                continue
            if served.version == version.version:
                users.append(f"endpoint {endpoint.name} (deployment {deployment.get('name')})")
    return users


def cmd_data(args: argparse.Namespace) -> int:
    from mlinfra.data import checks
    from mlinfra.providers.local.jobs import Resolver

    session = _session(args, "data validate")
    try:
        res = session.config.get("Data", args.name)
        if res is None:
            from mlinfra.spec.validate import did_you_mean

            raise MlinfraError(f"no Data named '{args.name}'"
                               + did_you_mean(args.name, session.config.of("Data")))
        data = Resolver(session.ctx).data(res, args.name)
        expectations = res.spec.get("expectations") or []
        if not expectations:
            _out(f"data {args.name} declares no expectations")
            return 0
        results = checks.check(data.label, data.path, str(res.spec.get("format", "csv")),
                               expectations)
    finally:
        session.close()
    for result in results:
        _emit(f"{'ok  ' if result.success else 'FAIL'} {result.describe()}",
              "green" if result.success else "bold red")
    failed = sum(not r.success for r in results)
    _out(f"\n{data.label}: {len(results) - failed} passed, {failed} failed")
    return 1 if failed else 0


def cmd_endpoints(args: argparse.Namespace) -> int:
    from mlinfra.providers.local import endpoints

    session = _session(args, f"endpoints {args.endpoints_command}")
    try:
        states = {s.name: s for s in session.store.resources().values()
                  if s.kind == "Endpoint"}
        if args.endpoints_command == "list":
            rows = [[s.name, s.outputs.get("url", "-"), str(s.outputs.get("pid", "-")),
                     ", ".join(f"{d}={v}" for d, v in (s.outputs.get("served") or {}).items()),
                     json.dumps(s.attributes.get("traffic", {}))]
                    for s in sorted(states.values(), key=lambda s: s.name)]
            _table(["ENDPOINT", "URL", "PID", "SERVES", "TRAFFIC"], rows)
            return 0
        state = states.get(args.name)
        if state is None:
            raise MlinfraError(f"endpoint {args.name} is not in the state: apply it first")
        if args.endpoints_command == "show":
            _out(json.dumps({"name": state.name, **{k: v for k, v in state.outputs.items()
                                                    if k != "key_hashes"},
                             "traffic": state.attributes.get("traffic"),
                             "auth": state.attributes.get("auth", "key")}, indent=2))
        elif args.endpoints_command == "keys":
            keys = endpoints.take_new_keys(session.ctx, args.name)
            if args.regenerate:
                keys = {args.regenerate: endpoints.regenerate(session, state, args.regenerate)}
            if not keys:
                raise MlinfraError("the keys were shown once already; make new ones with "
                                   "--regenerate primary (or secondary)")
            for name, key in keys.items():
                _out(f"{name}: {key}")
            _err("Keep them now: mlinfra stores only their hashes.")
        elif args.endpoints_command == "invoke":
            return _invoke(session, state, args)
        elif args.endpoints_command == "rollout":
            steps = [int(s) for s in args.steps.split(",") if s.strip()]
            if not steps or steps[-1] != 100 or steps != sorted(set(steps)) or steps[0] < 1:
                raise MlinfraError("--steps must rise and end at 100, e.g. 10,50,100")
            done, why, traffic = endpoints.rollout(
                session.ctx, state, args.to, steps, args.hold, args.max_error_rate,
                args.max_p99_ms, log=lambda line: _emit(line, "dim"))
            if not done:
                _err(f"Rolled back to {json.dumps(traffic)}: {why}.")
                return 1
            _out(f"Rollout complete: {why}. The YAML's traffic is unchanged: set it to "
                 f"{json.dumps(traffic)} to keep this split, or the next apply restores it.")
        return 0
    finally:
        session.close()


def _invoke(session: Session, state: Any, args: argparse.Namespace) -> int:
    import time

    from mlinfra.providers.local import endpoints

    body = sys.stdin.buffer.read() if args.data == "-" else Path(args.data).read_bytes()
    try:
        request = json.loads(body)
    except ValueError:
        raise MlinfraError(f"{args.data} is not JSON") from None
    v2 = isinstance(request, dict) and isinstance(request.get("inputs"), list) and all(
        isinstance(i, dict) and "datatype" in i for i in request["inputs"])
    url = state.outputs["url"] + (f"/v2/models/{state.name}/infer" if v2 else "/invocations")
    key = args.key or endpoints.operator_key(session.ctx, state.name)
    headers = {"mlinfra-deployment": args.deployment} if args.deployment else {}
    started = time.perf_counter()
    status, answer, response_headers = endpoints.http_json(url, key, body, headers, timeout=30)
    elapsed = (time.perf_counter() - started) * 1000
    _out(json.dumps(answer, indent=2))
    served = response_headers.get("mlinfra-model", "")
    _err(f"HTTP {status} in {elapsed:.1f} ms" + (f" from {served}" if served else ""))
    return 0 if status == 200 else 1


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _duration(text: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].replace(".", "", 1).isdigit():
            return float(text[: -len(unit)]) * units[unit]
    if text.replace(".", "", 1).isdigit():
        return float(text)
    raise argparse.ArgumentTypeError(f"expected a duration such as 30s or 5m, got '{text}'")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got '{text}'")
    return int(text)


def _apply_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--auto-approve", action="store_true", help="do not ask for confirmation")
    p.add_argument("--parallelism", type=_positive, default=4, metavar="N",
                   help="changes applied at once (default 4)")
    _lock_option(p)


def _lock_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lock-timeout", type=_duration, default=0.0, metavar="DURATION",
                   help="wait this long for the stack's lock (default 0s)")


def _plan_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", action="append", default=[], metavar="ADDR",
                   help="only this resource and what it depends on (repeatable)")
    p.add_argument("--refresh", type=_bool, default=True, metavar="BOOL",
                   help="read the actual state first (default true)")


# --- parser -----------------------------------------------------------------------------

def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-C", "--directory", metavar="DIR", default=argparse.SUPPRESS,
                        help="project folder (default: the current one or a parent)")
    common.add_argument("-s", "--stack", metavar="STACK", default=argparse.SUPPRESS,
                        help="stack name (stacks/NAME.yaml) or path to a stack file")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common()
    parser = argparse.ArgumentParser(
        prog="mlinfra", parents=[common],
        description="Terraform-style declarative MLOps: validate, plan and apply an ML "
                    "estate declared in YAML.")
    parser.add_argument("--version", action="version", version=f"mlinfra {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Handler, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    p = command("validate", cmd_validate, "check the project's YAML: schemas and references")
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    p = command("schema", cmd_schema, "print or export the JSON Schemas of every kind")
    p.add_argument("kind", nargs="?", help="one kind only (e.g. Job)")
    p.add_argument("--out", metavar="DIR", help="write one file per kind into DIR")

    p = command("init", cmd_init, "create a new project that validates")
    p.add_argument("dir", nargs="?", default=".", help="folder (default: the current one)")
    p.add_argument("--name", help="project name (default: the folder's name)")

    p = command("plan", cmd_plan, "show what apply would change, and why")
    _plan_options(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--out", metavar="FILE", help="save the plan for mlinfra apply FILE")
    p.add_argument("--detailed-exitcode", action="store_true",
                   help="exit 0: no changes, 2: changes, 1: errors")
    p.add_argument("--destroy", action="store_true", help="plan to destroy everything")

    p = command("apply", cmd_apply, "make the stack match the configuration")
    p.add_argument("planfile", nargs="?", help="a plan saved by mlinfra plan --out")
    _plan_options(p)
    _apply_options(p)

    p = command("destroy", cmd_destroy, "destroy what the stack's state holds")
    _plan_options(p)
    _apply_options(p)

    p = command("state", cmd_state, "read or edit the state")
    state = p.add_subparsers(dest="state_command", metavar="SUBCOMMAND", required=True)
    state.add_parser("list", parents=[common], help="list the resources in the state")
    show = state.add_parser("show", parents=[common], help="show one resource")
    show.add_argument("address")
    rm = state.add_parser("rm", parents=[common],
                          help="forget resources without destroying them")
    rm.add_argument("address", nargs="+")
    _lock_option(rm)
    unlock = state.add_parser("unlock", parents=[common], help="remove a stuck lock")
    unlock.add_argument("lock_id", metavar="ID")

    p = command("runs", cmd_runs, "list, show, follow, compare and cancel runs")
    runs = p.add_subparsers(dest="runs_command", metavar="SUBCOMMAND", required=True)
    listing = runs.add_parser("list", parents=[common], help="recent runs")
    listing.add_argument("--experiment", help="only this experiment's runs")
    listing.add_argument("--limit", type=_positive, default=50)
    for name, help_, many in (("show", "params, metrics, outputs, git, duration", True),
                              ("logs", "the run's output", False),
                              ("compare", "params and metrics side by side", True),
                              ("cancel", "stop running runs", True)):
        sp = runs.add_parser(name, parents=[common], help=help_)
        sp.add_argument("run_id", nargs="+" if many else 1, metavar="RUN_ID")
        if name == "logs":
            sp.add_argument("--follow", "-f", action="store_true",
                            help="keep printing until the run ends")

    p = command("models", cmd_models, "the model registry: versions, aliases, tags")
    models = p.add_subparsers(dest="models_command", metavar="SUBCOMMAND", required=True)
    listing = models.add_parser("list", parents=[common], help="models and versions")
    listing.add_argument("name", nargs="?")
    show = models.add_parser("show", parents=[common], help="one version: NAME[:V|@ALIAS]")
    show.add_argument("ref")
    alias = models.add_parser("alias", parents=[common], help="point NAME@ALIAS at VERSION")
    alias.add_argument("ref", metavar="NAME@ALIAS")
    alias.add_argument("version", type=_positive)
    tag = models.add_parser("tag", parents=[common], help="add tags KEY=VALUE to a version")
    tag.add_argument("ref")
    tag.add_argument("tags", nargs="+", metavar="KEY=VALUE")
    archive = models.add_parser("archive", parents=[common],
                                help="hide a version (refused while an endpoint serves it)")
    archive.add_argument("ref")

    p = command("data", cmd_data, "data assets")
    data = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    check = data.add_parser("validate", parents=[common],
                            help="run a Data asset's expectations now")
    check.add_argument("name")

    p = command("endpoints", cmd_endpoints, "online endpoints: list, show, invoke, keys")
    eps = p.add_subparsers(dest="endpoints_command", metavar="SUBCOMMAND", required=True)
    eps.add_parser("list", parents=[common], help="endpoints, their URLs and what they serve")
    show = eps.add_parser("show", parents=[common], help="one endpoint")
    show.add_argument("name")
    invoke = eps.add_parser("invoke", parents=[common],
                            help="send a request (v2 or MLflow format) and print the answer")
    invoke.add_argument("name")
    invoke.add_argument("--data", required=True, metavar="FILE", help="request body, - for stdin")
    invoke.add_argument("--deployment", help="pin a deployment")
    invoke.add_argument("--key", help="a key (default: mlinfra's operator key)")
    roll = eps.add_parser("rollout", parents=[common],
                          help="move traffic to a deployment step by step, with rollback")
    roll.add_argument("name")
    roll.add_argument("--to", required=True, metavar="DEPLOYMENT")
    roll.add_argument("--steps", default="10,50,100", help="percentages (default 10,50,100)")
    roll.add_argument("--hold", type=_duration, default=5.0, metavar="DURATION",
                      help="how long each step is watched (default 5s)")
    roll.add_argument("--max-error-rate", type=float, default=0.02, metavar="RATE",
                      help="roll back above this error share (default 0.02)")
    roll.add_argument("--max-p99-ms", type=float, default=None, metavar="MS",
                      help="roll back above this p99 latency")
    keys = eps.add_parser("keys", parents=[common],
                          help="show the keys once, or make a new one")
    keys.add_argument("name")
    keys.add_argument("--regenerate", choices=["primary", "secondary"])

    p = command("output", cmd_output, "show what the resources produced (paths, versions)")
    p.add_argument("address", nargs="?", help="one resource only")
    p.add_argument("--json", action="store_true", help="print as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return handler(args)
    except ConfigurationError as err:
        _err(err.render())
        return err.exit_code
    except MlinfraError as err:
        _err(f"Error: {err.message}")
        return err.exit_code
    except KeyboardInterrupt:
        _err("Interrupted.")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as err:  # a bug in mlinfra: say so, without a wall of traceback
        if os.environ.get("MLINFRA_DEBUG"):
            raise
        _err(f"mlinfra: internal error: {type(err).__name__}: {err}\n"
             "This is a bug in mlinfra; run again with MLINFRA_DEBUG=1 for the traceback.")
        return EXIT_INTERNAL

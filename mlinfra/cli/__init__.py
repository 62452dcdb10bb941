"""The command line: parse, call one library function, print. Errors become messages
and exit codes here and nowhere else; each group of commands has its own module."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mlinfra import __version__
from mlinfra.cli.console import echo_err
from mlinfra.errors import ConfigurationError, MlinfraError

Handler = Callable[[argparse.Namespace], int]

EXIT_INTERNAL = 70


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _duration(text: str) -> float:
    from mlinfra.spec.model import duration_s

    seconds = duration_s(text)
    if seconds is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30s or 5m, got '{text}'")
    return seconds


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
    p.add_argument("-replace", "--replace", action="append", default=[], metavar="ADDR",
                   help="replace this resource even if unchanged (an environment resolves "
                        "its requirements again); repeatable")
    p.add_argument("--new-state", action="store_true",
                   help="start over with a new state when the state file is gone but "
                        "its backup is still there")


def _terminal_columns() -> int:
    """What shutil.get_terminal_size() gives, without importing shutil (and the
    compression modules it imports) on every run."""
    try:
        if int(os.environ["COLUMNS"]) > 0:
            return int(os.environ["COLUMNS"])
    except (KeyError, ValueError):
        pass
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return 80


class _Formatter(argparse.HelpFormatter):
    def __init__(self, prog: str, indent_increment: int = 2, max_help_position: int = 24,
                 width: int | None = None) -> None:
        super().__init__(prog, indent_increment, max_help_position,
                         _terminal_columns() - 2 if width is None else width)


class _Parser(argparse.ArgumentParser):
    """argparse checks each option by formatting it, and its formatter imports shutil to
    read the terminal's width: a tenth of a plan's imports. Subparsers take this class."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)


def _common() -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument("-C", "--directory", metavar="DIR", default=argparse.SUPPRESS,
                        help="project folder (default: the current one or a parent)")
    common.add_argument("-s", "--stack", metavar="STACK", default=argparse.SUPPRESS,
                        help="stack name (stacks/NAME.yaml) or path to a stack file")
    return common


def _validate(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _schema(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("kind", nargs="?", help="one kind only (e.g. Job)")
    p.add_argument("--out", metavar="DIR", help="write one file per kind into DIR")


def _init(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("dir", nargs="?", default=".", help="folder (default: the current one)")
    p.add_argument("--name", help="project name (default: the folder's name)")


def _plan(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    _plan_options(p)
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--out", metavar="FILE", help="save the plan for mlinfra apply FILE")
    p.add_argument("--detailed-exitcode", action="store_true",
                   help="exit 0: no changes, 2: changes, 1: errors")
    p.add_argument("--destroy", action="store_true", help="plan to destroy everything")


def _apply(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("planfile", nargs="?", help="a plan saved by mlinfra plan --out")
    _plan_options(p)
    _apply_options(p)


def _destroy(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    _plan_options(p)
    _apply_options(p)


def _state(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
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
    migrate = state.add_parser("migrate", parents=[common],
                               help="copy the whole state to another backend and verify it")
    migrate.add_argument("--to", required=True, metavar="STATE",
                         help="a SQLite file's path or a postgresql:// URL, as in `state:`")
    _lock_option(migrate)


def _runs(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
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


def _models(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
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
    for changes in (alias, tag, archive):
        _lock_option(changes)


def _data(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    data = p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    check = data.add_parser("validate", parents=[common],
                            help="run a Data asset's expectations now")
    check.add_argument("name")


def _endpoints(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    eps = p.add_subparsers(dest="endpoints_command", metavar="SUBCOMMAND", required=True)
    eps.add_parser("list", parents=[common], help="endpoints, their URLs and what they serve")
    show = eps.add_parser("show", parents=[common], help="one endpoint")
    show.add_argument("name")
    invoke = eps.add_parser("invoke", parents=[common],
                            help="send a request (v2 or MLflow format) and print the answer")
    invoke.add_argument("name")
    invoke.add_argument("--data", required=True, metavar="FILE",
                        help="request body: JSON (v2 or MLflow), a .csv table, - for stdin")
    invoke.add_argument("--deployment", help="pin a deployment")
    invoke.add_argument("--key", help="a key (default: mlinfra's operator key)")
    invoke.add_argument("--url", help="the endpoint's address (default: from the state; on "
                        "kubernetes, a port-forward's or the Gateway's)")
    invoke.add_argument("--timeout", type=_duration, default=30.0, metavar="DURATION",
                        help="longest wait for the answer (default 30s)")
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
    roll.add_argument("--min-requests", type=_positive, default=100, metavar="N",
                      help="fewest requests to the deployment that a hold is judged on; "
                           "fewer is inconclusive and the step holds again (default 100)")
    _lock_option(roll)
    keys = eps.add_parser("keys", parents=[common],
                          help="make the keys and show them once, or make a new one")
    keys.add_argument("name")
    keys.add_argument("--regenerate", choices=["primary", "secondary", "operator"],
                      help="a new key in place of this one (operator: mlinfra's own)")
    _lock_option(keys)


def _monitor(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="monitor_command", metavar="SUBCOMMAND", required=True)
    run = sub.add_parser("run", parents=[common],
                         help="compute the windows not yet computed and record their "
                              "verdicts; exit 3 when a monitor is breached")
    run.add_argument("name", nargs="?", help="one monitor (default: all)")
    run.add_argument("--captures", metavar="DIR",
                     help="the datastore folder holding captures/ (a CronJob's mount)")
    run.add_argument("--json", action="store_true", help="print as JSON")


def _monitors(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="monitors_command", metavar="SUBCOMMAND", required=True)
    listing = sub.add_parser("list", parents=[common], help="each monitor's last verdict")
    listing.add_argument("--json", action="store_true", help="print as JSON")
    show = sub.add_parser("show", parents=[common],
                          help="a monitor's windows and each feature's trend")
    show.add_argument("name")
    show.add_argument("--windows", type=_positive, default=24, metavar="N",
                      help="the latest N windows (default 24)")
    show.add_argument("--json", action="store_true", help="print as JSON")
def _batch(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    batch = p.add_subparsers(dest="batch_command", metavar="SUBCOMMAND", required=True)
    invoke = batch.add_parser("invoke", parents=[common],
                              help="score a file or a data version with a batch endpoint")
    invoke.add_argument("name")
    invoke.add_argument("--input", required=True, metavar="FILE|DATA[:V]",
                        help="a .csv, .parquet or .jsonl file, or a Data of the project")
    invoke.add_argument("--deployment", help="the deployment (default: the endpoint's)")
    invoke.add_argument("--output", metavar="PATH",
                        help="put a copy of the output here (in a folder: predictions.EXT)")
    invoke.add_argument("--json", action="store_true", help="print the summary as JSON")
    jobs = batch.add_parser("jobs", parents=[common], help="the batch jobs that ran")
    jobs.add_argument("--json", action="store_true", help="print as JSON")


def _render(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the manifests, build contexts and scripts")


def _ci(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    ci = p.add_subparsers(dest="ci_command", metavar="SUBCOMMAND", required=True)
    plan = ci.add_parser("plan", parents=[common],
                         help="for a pull request: what changed since the base, the plan, "
                              "the runs and promotions it means, as a Markdown report")
    plan.add_argument("--base", metavar="REV",
                      help="compare with this revision's merge base (default: the pull "
                           "request's base branch, else origin/main or main)")
    run = ci.add_parser("run", parents=[common],
                        help="for a push: apply, promote, roll out, and report; a commit "
                             "already processed is not processed again")
    run.add_argument("--allow-dirty", action="store_true",
                     help="run on a working tree with uncommitted changes")
    run.add_argument("--parallelism", type=_positive, default=4, metavar="N",
                     help="changes applied at once (default 4)")
    _lock_option(run)
    for sp in (plan, run):
        sp.add_argument("--report", metavar="FILE", help="write the Markdown report here too")


def _history(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("model", nargs="?", help="one model only")
    p.add_argument("--json", action="store_true", help="print as JSON")


def _port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port from 1 to 65535, got '{text}'")
    return int(text)


def _studio(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=_port, default=8765, help="port (default 8765)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; any other requires "
                        "MLINFRA_STUDIO_TOKEN)")


def _output(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("address", nargs="?", help="one resource (ADDR), or one of its outputs "
                   "(ADDR.FIELD)")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.add_argument("-raw", "--raw", action="store_true",
                   help="one output's value as plain text, for scripts (as Terraform's)")


def _events(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    events = p.add_subparsers(dest="events_command", metavar="SUBCOMMAND", required=True)
    listing = events.add_parser("list", parents=[common],
                                help="the newest events and their deliveries")
    listing.add_argument("--failed", action="store_true",
                         help="only events with a dead-lettered delivery")
    listing.add_argument("--json", action="store_true", help="print as JSON")
    listing.add_argument("--limit", type=_positive, default=50)
    show = events.add_parser("show", parents=[common], help="one event and its deliveries")
    show.add_argument("event_id", metavar="ID")
    again = events.add_parser("redeliver", parents=[common],
                              help="send an event again to the webhooks that take it")
    again.add_argument("event_id", metavar="ID")


def _agent(p: argparse.ArgumentParser, common: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true",
                   help="do what is due (schedules, deliveries) and exit")
    _lock_option(p)
    p.set_defaults(lock_timeout=300.0)


Options = Callable[[argparse.ArgumentParser, argparse.ArgumentParser], None]

# name: (handler as "module:function" in mlinfra.cli, imported only when run, so a plan
# does not pay for what serving or training import; help; its options)
COMMANDS: dict[str, tuple[str, str, Options]] = {
    "validate": ("project:cmd_validate", "check the project's YAML: schemas and references",
                 _validate),
    "schema": ("project:cmd_schema", "print or export the JSON Schemas of every kind", _schema),
    "init": ("project:cmd_init", "create a new project that validates", _init),
    "plan": ("stack:cmd_plan", "show what apply would change, and why", _plan),
    "apply": ("stack:cmd_apply", "make the stack match the configuration", _apply),
    "destroy": ("stack:cmd_destroy", "destroy what the stack's state holds", _destroy),
    "state": ("stack:cmd_state", "read or edit the state", _state),
    "runs": ("training:cmd_runs", "list, show, follow, compare and cancel runs", _runs),
    "models": ("training:cmd_models", "the model registry: versions, aliases, tags", _models),
    "data": ("training:cmd_data", "data assets", _data),
    "endpoints": ("endpoints:cmd_endpoints",
                  "online endpoints: list, show, invoke, keys, rollout", _endpoints),
    "monitor": ("monitoring:cmd_monitor", "compute monitors' windows: drift, quality, "
                "performance; exit 3 when one is breached", _monitor),
    "monitors": ("monitoring:cmd_monitors", "list monitors and show their windows and "
                 "trends; exit 3 when one is breached", _monitors),
    "batch": ("batch:cmd_batch", "batch endpoints: score a file or a data version "
              "(invoke), list what ran (jobs)", _batch),
    "render": ("render:cmd_render", "write a docker or kubernetes stack's objects as files "
               "(manifests, build contexts, container specs), without Pulumi", _render),
    "output": ("stack:cmd_output", "show what the resources produced (paths, versions)",
               _output),
    "ci": ("ci:cmd_ci", "the Git-triggered loop: ci plan for pull requests, ci run for "
           "pushes", _ci),
    "events": ("events:cmd_events", "events announced: list, show, redeliver", _events),
    "agent": ("events:cmd_agent", "fire due schedules and deliver events (--once: what is "
              "due now, then exit)", _agent),
    "studio": ("studio:cmd_studio", "a read-only web UI over the stack: plan, runs, "
               "metrics, models and lineage, data, endpoints", _studio),
    "history": ("ci:cmd_history", "every promotion decision: when, commit, trigger, versions, "
                "metrics, outcome, rollout", _history),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command line, or with `only` just that command's part: each parser
    costs argparse a gettext lookup, and a command needs only its own."""
    common = _common()
    parser = _Parser(
        prog="mlinfra", parents=[common],
        description="Terraform-style declarative MLOps: validate, plan and apply an ML "
                    "estate declared in YAML.")
    parser.add_argument("--version", action="version", version=f"mlinfra {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (handler, help_, options) in COMMANDS.items():
        if only is None or name == only:
            p = sub.add_parser(name, parents=[common], help=help_, description=help_)
            p.set_defaults(handler=handler)
            options(p, common)
    return parser


def command_word(argv: Sequence[str]) -> str | None:
    """The command named in `argv`: its first word that is not an option or the value of
    -C/--directory or -s/--stack (or a prefix argparse accepts for them)."""
    words = iter(argv)
    for word in words:
        if word in ("-C", "-s") or (len(word) > 2 and ("--directory".startswith(word)
                                                       or "--stack".startswith(word))):
            next(words, None)
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def _debug(err: MlinfraError) -> None:
    """With MLINFRA_DEBUG=1: the error's fields and the chain of errors that caused it,
    each with its traceback."""
    if not os.environ.get("MLINFRA_DEBUG"):
        return
    import traceback

    if err.fields:
        echo_err("fields: " + ", ".join(f"{k}={v}" for k, v in sorted(err.fields.items())))
    echo_err("".join(traceback.format_exception(err)).rstrip())


def main(argv: Sequence[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    parser = build_parser(command_word(argv))
    args = parser.parse_args(argv)
    target: str | None = getattr(args, "handler", None)
    if target is None:
        parser.print_help()
        return 2
    try:
        module, function = target.split(":")
        handler: Handler = getattr(importlib.import_module(f"mlinfra.cli.{module}"), function)
        return handler(args)
    except ConfigurationError as err:
        echo_err(err.render())
        _debug(err)
        return err.exit_code
    except MlinfraError as err:
        echo_err(f"Error: {err.message}")
        _debug(err)
        return err.exit_code
    except KeyboardInterrupt:
        echo_err("Interrupted.")
        return 130
    except BrokenPipeError:
        return 0
    except Exception as err:  # a bug in mlinfra: say so, without a wall of traceback
        if os.environ.get("MLINFRA_DEBUG"):
            raise
        if type(err).__module__ == "sqlite3":  # the state file failed under us
            echo_err(f"Error: the state database failed: {err}. If its file is damaged, "
                     "restore the copy next to it (state.db.backup).")
            return 1
        echo_err(f"mlinfra: internal error: {type(err).__name__}: {err}\n"
             "This is a bug in mlinfra; run again with MLINFRA_DEBUG=1 for the traceback.")
        return EXIT_INTERNAL

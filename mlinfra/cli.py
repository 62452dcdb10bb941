"""The command line: parse, call one library function, print. Errors become messages
and exit codes here and nowhere else."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mlinfra import __version__
from mlinfra.errors import ConfigurationError, MlinfraError

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

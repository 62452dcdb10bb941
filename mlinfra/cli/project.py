"""mlinfra validate, schema, init: the project's YAML."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mlinfra.cli.console import directory, echo, echo_err, stack_name
from mlinfra.errors import ConfigurationError, MlinfraError


def cmd_validate(args: argparse.Namespace) -> int:
    from mlinfra.spec import load

    try:
        config = load(directory(args), stack_name(args))
    except ConfigurationError as err:
        if args.json:
            echo(json.dumps({"valid": False, "summary": err.summary(),
                             "errors": [d.to_json() for d in err.diagnostics]}, indent=2))
            return err.exit_code
        raise
    counts = config.counts()
    total = sum(counts.values())
    warnings = config.stack.warnings
    if args.json:
        echo(json.dumps({"valid": True, "project": config.name, "stack": config.stack.name,
                         "resources": counts, "files": len(config.files),
                         "warnings": [w.to_json() for w in warnings]}, indent=2))
        return 0
    for warning in warnings:
        echo_err(f"warning: {warning.render()}")
    by_kind = ", ".join(f"{n} {kind}" for kind, n in counts.items())
    echo(f"Valid: project {config.name}, stack {config.stack.name}: {total} resource"
         f"{'s' if total != 1 else ''} ({by_kind or 'none'}) in {len(config.files)} files.")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from mlinfra.spec.schemas import SCHEMAS, export

    if args.out:
        from mlinfra.events.catalog import export as export_events

        for path in [*export(Path(args.out)), *export_events(Path(args.out) / "events")]:
            echo(str(path))
        return 0
    if args.kind:
        kind = next((k for k in SCHEMAS if k.lower() == args.kind.lower()), None)
        if kind is None:
            raise MlinfraError(f"unknown kind '{args.kind}'; kinds: {', '.join(SCHEMAS)}")
        echo(json.dumps(SCHEMAS[kind], indent=2))
        return 0
    echo(json.dumps(SCHEMAS, indent=2))
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from mlinfra.scaffold import init_project

    folder = Path(args.dir)
    written = init_project(folder, args.name)
    for path in written:
        echo(f"created {path}")
    echo(f"\nNext: mlinfra validate -C {folder}")
    return 0

"""mlinfra ci plan, ci run, and history."""

from __future__ import annotations

import argparse
import json

from mlinfra.cli.console import echo, session_for


def cmd_history(args: argparse.Namespace) -> int:
    from mlinfra.ci.history import decisions, render

    session = session_for(args, "history", write=False)
    try:
        entries = decisions(session.store, args.model)
    finally:
        session.close()
    if args.json:
        echo(json.dumps(entries, indent=2, default=str))
    else:
        for line in render(entries):
            echo(line)
    return 0

"""mlinfra studio: serve the read-only web UI over the stack's state."""

from __future__ import annotations

import argparse
import os

from mlinfra.cli.console import directory, echo, stack_name


def cmd_studio(args: argparse.Namespace) -> int:
    import uvicorn

    from mlinfra.studio.app import create_app
    from mlinfra.studio.context import Studio, StudioOptions
    from mlinfra.studio.security import TOKEN_VARIABLE, required_token

    token = required_token(args.host, os.environ.get(TOKEN_VARIABLE))
    studio = Studio(StudioOptions(directory=directory(args), stack=stack_name(args),
                                  host=args.host, port=args.port, token=token))
    host = f"[{args.host}]" if ":" in args.host else args.host
    guarded = f" (token from {TOKEN_VARIABLE} required)" if token else ""
    echo(f"mlinfra studio for stack '{studio.session.config.stack.name}' at "
         f"http://{host}:{args.port}/{guarded}; read-only. Ctrl-C stops it.")
    uvicorn.run(create_app(studio), host=args.host, port=args.port, log_level="warning",
                access_log=False)
    return 0

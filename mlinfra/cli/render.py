"""mlinfra render: a docker or kubernetes stack's objects as files, without Pulumi."""

from __future__ import annotations

import argparse
from pathlib import Path

from mlinfra.cli.console import echo, echo_err, session_for


def cmd_render(args: argparse.Namespace) -> int:
    from mlinfra.providers.manifests.render import (
        platform,
        render_stack,
        stack_inputs,
        write_stack,
    )

    session = session_for(args, "render", write=False)
    try:
        platform(session.config)
        inputs = stack_inputs(session.ctx)
        objects = render_stack(session.config, inputs)
    finally:
        session.close()
    out = Path(args.out)
    written = write_stack(session.config, objects, out, inputs)
    for address, why in sorted(inputs.unresolved.items()):
        echo_err(f"Note: {address} is left out: {why}.")
    for note in inputs.notes:
        echo_err(f"Note: {note}.")
    for name, files in sorted(inputs.models.items()):
        for deployment, model in sorted(files.items()):
            if not model.known:
                echo_err(f"Note: endpoint.{name}: deployment {deployment} serves a version "
                         f"of model {model.name} that is (known after apply): apply trains "
                         "and registers it; render again after apply to fill it in.")
    kinds: dict[str, int] = {}
    for obj in objects:
        kinds[obj.kind] = kinds.get(obj.kind, 0) + 1
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
    echo(f"Rendered stack {session.stack} ({session.config.stack.provider}): {summary}; "
         f"{len(written)} files in {out}.")
    if session.config.stack.provider == "kubernetes":
        from mlinfra.providers.manifests.kubernetes import notes

        for note in notes(session.config, inputs):
            echo_err(f"Note: {note}.")
        echo(f"Apply without Pulumi: build and push the images in {out}/images.json, run "
             f"{out}/secrets.sh, kubectl apply -f {out}/manifests/, sh {out}/data.sh (the "
             f"datastores' files), then sh {out}/jobs.sh (the jobs, in order); "
             f"{out}/README.md names the variables to set first")
    else:
        echo(f"Run without Pulumi: sh {out}/run.sh ({out}/README.md names the variables "
             "to set first)")
    return 0

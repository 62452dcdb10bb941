"""mlinfra endpoints: list, show, invoke, keys, rollout."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlinfra.cli.console import echo, echo_err, emit, print_table, session_for
from mlinfra.errors import MlinfraError

if TYPE_CHECKING:
    from mlinfra.engine import Session


def cmd_endpoints(args: argparse.Namespace) -> int:
    from mlinfra.providers.local import endpoints

    session = session_for(args, f"endpoints {args.endpoints_command}",
                          write=args.endpoints_command in ("keys", "rollout"))
    try:
        states = {s.name: s for s in session.store.resources().values()
                  if s.kind == "Endpoint"}
        if args.endpoints_command == "list":
            rows = [[s.name, s.outputs.get("url", "-"), str(s.outputs.get("pid", "-")),
                     ", ".join(f"{d}={v}" for d, v in (s.outputs.get("served") or {}).items()),
                     json.dumps(s.attributes.get("traffic", {}))]
                    for s in sorted(states.values(), key=lambda s: s.name)]
            print_table(["ENDPOINT", "URL", "PID", "SERVES", "TRAFFIC"], rows)
            return 0
        state = states.get(args.name)
        if state is None:
            raise MlinfraError(f"endpoint {args.name} is not in the state: apply it first")
        if args.endpoints_command == "show":
            echo(json.dumps({"name": state.name, **{k: v for k, v in state.outputs.items()
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
                echo(f"{name}: {key}")
            echo_err("Keep them now: mlinfra stores only their hashes.")
        elif args.endpoints_command == "invoke":
            return _invoke(session, state, args)
        elif args.endpoints_command == "rollout":
            steps = [int(s) for s in args.steps.split(",") if s.strip()]
            if not steps or steps[-1] != 100 or steps != sorted(set(steps)) or steps[0] < 1:
                raise MlinfraError("--steps must rise and end at 100, e.g. 10,50,100")
            done, why, traffic = endpoints.rollout(
                session.ctx, state, args.to, steps, args.hold, args.max_error_rate,
                args.max_p99_ms, log=lambda line: emit(line, "dim"))
            if not done:
                echo_err(f"Rolled back to {json.dumps(traffic)}: {why}.")
                return 1
            echo(f"Rollout complete: {why}. The YAML's traffic is unchanged: set it to "
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
    echo(json.dumps(answer, indent=2))
    served = response_headers.get("mlinfra-model", "")
    echo_err(f"HTTP {status} in {elapsed:.1f} ms" + (f" from {served}" if served else ""))
    return 0 if status == 200 else 1

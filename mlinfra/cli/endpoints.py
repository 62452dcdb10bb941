"""mlinfra endpoints: list, show, invoke, keys, rollout."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlinfra.cli.console import echo, echo_err, emit, print_table, session_for
from mlinfra.errors import MlinfraError

if TYPE_CHECKING:
    from mlinfra.engine import Session
    from mlinfra.state.model import ResourceState


def cmd_endpoints(args: argparse.Namespace) -> int:
    session = session_for(args, f"endpoints {args.endpoints_command}",
                          write=args.endpoints_command in ("keys", "rollout"))
    try:
        states = {s.name: s for s in session.store.resources().values()
                  if s.kind == "Endpoint"}
        remote = session.config.stack.provider != "local"
        if args.endpoints_command == "list":
            return _list_remote(session, states) if remote else _list(session, states)
        state = states.get(args.name)
        if state is None:
            raise MlinfraError(f"endpoint {args.name} is not in the state: apply it first")
        if args.endpoints_command == "show":
            return _show_remote(session, state) if remote else _show(session, state)
        if args.endpoints_command == "invoke":
            return _invoke(session, state, args)
        if remote:
            raise MlinfraError(f"endpoints {args.endpoints_command} works on the local "
                               f"provider; on {session.config.stack.provider}, "
                               + ("the keys are made and kept by Pulumi's config" if
                                  args.endpoints_command == "keys" else
                                  "change `traffic` in the YAML and apply it"))
        if args.endpoints_command == "keys":
            return _keys(session, state, args)
        return _rollout(session, state, args)
    finally:
        session.close()


def _list(session: Session, states: dict[str, ResourceState]) -> int:
    from mlinfra.providers.local.endpoint.folders import EndpointFolder
    from mlinfra.providers.local.endpoint.observe import describe

    rows = []
    for state in sorted(states.values(), key=lambda s: s.name):
        live = describe(EndpointFolder.of(session.ctx, state.name), state.outputs)
        rows.append([state.name, state.outputs.get("url", "-"), str(state.outputs.get("pid", "-")),
                     live["health"], ", ".join(f"{d}={v}" for d, v in live["serves"].items()),
                     json.dumps(live["traffic"])])
    print_table(["ENDPOINT", "URL", "PID", "HEALTH", "SERVES", "TRAFFIC"], rows)
    return 0


def _remote_health(url: str) -> str:
    from mlinfra.providers.local.endpoint.client import Unreachable, request

    try:
        answer = request(url + "/v2/health/ready", timeout=2.0)
    except Unreachable as err:
        return f"unreachable ({err.message})"
    return "ready" if answer.status == 200 else f"not ready (HTTP {answer.status})"


def _remote(session: Session, state: ResourceState) -> dict[str, Any]:
    """An endpoint of a docker or kubernetes stack as its state knows it."""
    from mlinfra.providers.pulumi_stack import endpoint_url

    try:
        url, health = endpoint_url(session.config, state), ""
        health = _remote_health(url)
    except MlinfraError as err:
        url, health = "-", f"unknown: {err.message}"
    deployments = state.attributes.get("deployments") or []
    return {"name": state.name, "url": url, "health": health,
            "serves": {str(d.get("name")): str(d.get("model")) for d in deployments},
            "configured_traffic": state.attributes.get("traffic"),
            "auth": state.attributes.get("auth", "key"),
            "objects": sorted(state.outputs.get("objects") or {})}


def _list_remote(session: Session, states: dict[str, ResourceState]) -> int:
    rows = []
    for state in sorted(states.values(), key=lambda s: s.name):
        seen = _remote(session, state)
        rows.append([seen["name"], seen["url"], "-", seen["health"],
                     ", ".join(f"{d}={m}" for d, m in seen["serves"].items()),
                     json.dumps(seen["configured_traffic"])])
    print_table(["ENDPOINT", "URL", "PID", "HEALTH", "SERVES", "TRAFFIC"], rows)
    return 0


def _show_remote(session: Session, state: ResourceState) -> int:
    echo(json.dumps(_remote(session, state), indent=2))
    return 0


def _show(session: Session, state: ResourceState) -> int:
    from mlinfra.providers.local.endpoint.folders import EndpointFolder
    from mlinfra.providers.local.endpoint.observe import describe

    live = describe(EndpointFolder.of(session.ctx, state.name), state.outputs)
    echo(json.dumps({"name": state.name,
                     **{k: v for k, v in state.outputs.items() if k != "key_hashes"},
                     **live, "configured_traffic": state.attributes.get("traffic"),
                     "auth": state.attributes.get("auth", "key")}, indent=2))
    return 0


def _keys(session: Session, state: ResourceState, args: argparse.Namespace) -> int:
    from mlinfra.engine import operation, writing
    from mlinfra.providers.local.endpoint.keys import KEY_NAMES, issue, rotate_operator

    # A key rotation is a journaled operation whose key set is recorded before the
    # server gets it: after a crash at any instant, a revoked key stays revoked.
    with writing(session, "endpoints keys", args.lock_timeout), \
            operation(session, state.address, "keys") as work:
        current = session.store.get(state.address) or state  # as it is under the lock
        if args.regenerate == "operator":
            rotate_operator(session.ctx.for_change(work), current)
            echo("operator: replaced (mlinfra's commands use the new key; the server no "
                 "longer accepts the old one)")
            return 0
        if args.regenerate:
            names = [args.regenerate]
        else:
            names = [n for n in KEY_NAMES if n not in (current.outputs.get("key_hashes") or {})]
            if not names:
                raise MlinfraError("the keys were shown when they were made, and mlinfra keeps "
                                   "only their hashes; make a new one with --regenerate "
                                   "primary (or secondary)")
        made = issue(session.ctx.for_change(work), current, names)
    for name, key in made.items():
        echo(f"{name}: {key}")
    echo_err("Keep them now: mlinfra stores only their hashes.")
    return 0


def _rollout(session: Session, state: ResourceState, args: argparse.Namespace) -> int:
    from mlinfra.engine import operation, writing
    from mlinfra.providers.local.endpoint.rollout import rollout

    steps = [int(s) for s in args.steps.split(",") if s.strip().isdigit()]
    if not steps or steps[-1] != 100 or steps != sorted(set(steps)) or steps[0] < 1:
        raise MlinfraError("--steps must rise and end at 100, e.g. 10,50,100")
    with writing(session, "endpoints rollout", args.lock_timeout), \
            operation(session, state.address, "rollout") as work:
        current = session.store.get(state.address) or state
        outcome = rollout(session.ctx.for_change(work), current, args.to, steps, args.hold,
                          args.max_error_rate, args.max_p99_ms, args.min_requests,
                          log=lambda line: emit(f"{state.address}: {line}", "dim"))
    if outcome.status == "rolled back":
        echo_err(f"Rolled back to {json.dumps(outcome.traffic)}: {outcome.why}.")
        return 1
    if outcome.status == "inconclusive":
        echo_err(f"Stopped, traffic back to {json.dumps(outcome.traffic)}: {outcome.why}.")
        return 1
    echo(f"Rollout complete: {outcome.why}. The YAML's traffic is unchanged: set it to "
         f"{json.dumps(outcome.traffic)} to keep this split, or the next apply restores it.")
    return 0


def _invoke(session: Session, state: ResourceState, args: argparse.Namespace) -> int:
    from mlinfra.providers.local.endpoint.client import Unreachable, request
    from mlinfra.providers.local.endpoint.folders import EndpointFolder
    from mlinfra.providers.local.endpoint.keys import operator_key

    try:
        body = sys.stdin.buffer.read() if args.data == "-" else Path(args.data).read_bytes()
    except OSError as err:
        raise MlinfraError(f"cannot read the request body {args.data}: "
                           f"{err.strerror or err}") from err
    content_type = "application/json"
    if args.data.lower().endswith(".csv"):  # a table with a header, as MLflow takes it
        content_type, v2 = "text/csv", False
    else:
        try:
            sent = json.loads(body)
        except ValueError:
            raise MlinfraError(f"{args.data} is neither JSON nor a .csv file") from None
        v2 = isinstance(sent, dict) and isinstance(sent.get("inputs"), list) and all(
            isinstance(i, dict) and "datatype" in i for i in sent["inputs"])
    path = f"/v2/models/{state.name}/infer" if v2 else "/invocations"
    if session.config.stack.provider == "local":
        own = str(state.outputs["url"])
        url = (args.url or own).rstrip("/") + path
        key = args.key
        if not key and state.outputs.get("auth", "key") != "none":
            if not _same_origin(url, own):
                raise MlinfraError(
                    f"--url {args.url} is not endpoint {state.name}'s own address ({own}): "
                    "mlinfra never sends its operator key to another address; give the key "
                    "that one takes with --key")
            key = operator_key(EndpointFolder.of(session.ctx, state.name))
    else:
        from mlinfra.providers.pulumi_stack import endpoint_url, keys_hint

        url = (args.url or endpoint_url(session.config, state)).rstrip("/") + path
        key = args.key
        if not key and state.attributes.get("auth", "key") != "none":
            raise MlinfraError(keys_hint(session.config, session.ctx.state_dir, state.name))
    headers = {"content-type": content_type}
    if args.deployment:
        headers["mlinfra-deployment"] = args.deployment
    started = time.perf_counter()
    try:
        answer = request(url, key, body, headers, timeout=args.timeout)
    except Unreachable as err:
        raise MlinfraError(f"endpoint {state.name}: {err.message}; mlinfra plan shows "
                           "whether its server needs repair") from err
    elapsed = (time.perf_counter() - started) * 1000
    echo(json.dumps(answer.body, indent=2))
    served = answer.headers.get("mlinfra-model", "")
    echo_err(f"HTTP {answer.status} in {elapsed:.1f} ms" + (f" from {served}" if served else ""))
    return 0 if answer.status == 200 else 1


def _same_origin(url: str, own: str) -> bool:
    """Scheme, host and port alike: where the operator key may be sent."""
    from urllib.parse import urlsplit

    def origin(text: str) -> tuple[str, str, int | None]:
        parts = urlsplit(text)
        try:
            port = parts.port
        except ValueError:
            return ("", "", None)
        return parts.scheme.lower(), (parts.hostname or "").lower(), port

    return origin(url) == origin(own) and origin(own)[1] != ""

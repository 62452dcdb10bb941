"""Endpoints on the local machine: one detached server process group per endpoint.

The handler writes the endpoint's config file (deployments -> model files, traffic,
key hashes) and the server's workers swap in a new routing table when it changes;
apply waits until every worker reports the new generation. Model references are
resolved at apply time, after the promotions that move their aliases.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from mlinfra.graph import default_datastore
from mlinfra.plan.model import Change, Observed
from mlinfra.providers.base import Applied, BaseHandler, Context, ProviderError
from mlinfra.providers.local.infra import datastore_path
from mlinfra.providers.local.jobs import artifact_store
from mlinfra.registry.models import ModelRegistry, RegistryError
from mlinfra.spec.model import Ref, Resource
from mlinfra.state.model import ResourceState
from mlinfra.state.store import pid_alive

READY_TIMEOUT_S = 60.0
KEY_NAMES = ("primary", "secondary")


def endpoint_dir(ctx: Context, name: str) -> Path:
    return ctx.state_dir / "endpoints" / name


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return "mlk_" + secrets.token_urlsafe(32)


def operator_key(ctx: Context, name: str) -> str:
    """The key mlinfra's own commands use (endpoints invoke, rollouts): a 0600 file."""
    path = endpoint_dir(ctx, name) / "operator.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_key())
    return path.read_text().strip()


def governed(ctx: Context, model: str, alias: str) -> bool:
    return any(p.spec.get("model") == model and p.spec.get("alias", "champion") == alias
               for p in ctx.config.of("Promotion").values())


def resolve(ctx: Context, res: Resource, deployment: dict[str, Any]) -> tuple[Ref, Any]:
    ref = Ref.parse(str(deployment["model"]))
    assert ref is not None  # validated
    try:
        return ref, ModelRegistry(ctx.store).resolve(ref.name, ref.version, ref.alias)
    except RegistryError as err:
        raise ProviderError(res.address, f"deployment {deployment['name']}: {err.message}"
                            ) from None


def http_json(url: str, key: str | None = None, body: bytes | None = None,
              headers: dict[str, str] | None = None, timeout: float = 5.0
              ) -> tuple[int, Any, dict[str, str]]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=body, headers={
        "content-type": "application/json", **(headers or {}),
        **({"authorization": f"Bearer {key}"} if key else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null"), dict(
                response.headers)
    except urllib.error.HTTPError as err:
        payload = err.read()
        try:
            data = json.loads(payload)
        except ValueError:
            data = payload.decode(errors="replace")
        return err.code, data, dict(err.headers)


class EndpointHandler(BaseHandler):
    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        """What the deployments will serve: each model's source (so a retrained model
        updates the endpoint), and aliases that point nowhere refused."""
        sources: dict[str, Any] = {}
        registry = ModelRegistry(ctx.store)
        for deployment in res.spec["deployments"]:
            ref = Ref.parse(str(deployment["model"]))
            assert ref is not None
            model = ctx.config.get("Model", ref.name)
            if model is not None:
                sources[deployment["name"]] = ctx.facts(model)
            if ref.alias and registry.aliases(ref.name).get(ref.alias) is None and not (
                    governed(ctx, ref.name, ref.alias)):
                raise ProviderError(res.address, f"alias {ref.name}@{ref.alias} points "
                                    f"nowhere: set it with mlinfra models alias "
                                    f"{ref.name}@{ref.alias} VERSION, or add a Promotion")
            if model is None and registry.latest(ref.name) is None:
                raise ProviderError(res.address, f"model {ref.name} is neither declared "
                                    "nor registered")
        return {"model_sources": sources}

    def _config(self, ctx: Context, res: Resource, generation: int, port: int,
                key_hashes: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
        store = artifact_store(ctx)
        deployments, served = {}, {}
        for deployment in res.spec["deployments"]:
            _, version = resolve(ctx, res, deployment)
            request = deployment.get("request") or {}
            deployments[deployment["name"]] = {
                "model": version.name, "version": version.version, "sha256": version.sha256,
                "path": str(store.path(version.sha256)),
                "timeout_ms": request.get("timeout_ms", 5000),
                "max_batch_size": request.get("max_batch_size", 32),
                "max_batch_delay_ms": request.get("max_batch_delay_ms", 2)}
            served[deployment["name"]] = version.ref
        folder = endpoint_dir(ctx, res.name)
        collect = dict(res.spec.get("collect") or {})
        if collect.get("sample"):
            store_name = collect.get("datastore") or default_datastore(ctx.config)
            datastore = ctx.config.get("Datastore", str(store_name)) if store_name else None
            base = datastore_path(ctx, datastore.spec) if datastore else folder
            collect["path"] = str(base / "captures" / res.name / "requests.jsonl")
        config = {"endpoint": res.name, "generation": generation, "port": port,
                  "deployments": deployments, "traffic": res.spec.get("traffic") or {},
                  "mirror": res.spec.get("mirror") or {}, "collect": collect,
                  "key_hashes": key_hashes,
                  "max_request_bytes": res.spec.get("max_request_bytes", 1 << 20),
                  "status_dir": str(folder / "status")}
        return config, served

    def _key_hashes(self, ctx: Context, res: Resource, previous: dict[str, Any]
                    ) -> tuple[list[str], dict[str, str]]:
        """(hashes the server accepts, user key hashes by name) for `auth`."""
        if res.spec.get("auth", "key") == "none":
            return [], {}
        user = dict(previous.get("key_hashes") or {})
        fresh = {}
        for name in KEY_NAMES:
            if name not in user:
                fresh[name] = new_key()
                user[name] = key_hash(fresh[name])
        if fresh:
            pending = endpoint_dir(ctx, res.name) / "keys.new"
            fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(fresh, f)
        return [*user.values(), key_hash(operator_key(ctx, res.name))], user

    def create(self, change: Change, ctx: Context) -> Applied:
        res = ctx.config.get("Endpoint", change.name)
        assert res is not None
        folder = endpoint_dir(ctx, res.name)
        shutil.rmtree(folder / "status", ignore_errors=True)
        (folder / "status").mkdir(parents=True, exist_ok=True)
        port = int(res.spec.get("port") or free_port())
        hashes, user = self._key_hashes(ctx, res, {})
        config, served = self._config(ctx, res, 1, port, hashes)
        path = write_config(folder, config)
        workers = int(res.spec.get("workers", 2))
        pid = launch([sys.executable, "-m", "mlinfra.serving", "--config", str(path),
                      "--port", str(port), "--workers", str(workers)],
                     folder / "server.log", folder)
        outputs = {"pid": pid, "port": port, "url": f"http://127.0.0.1:{port}",
                   "workers": workers, "generation": 1, "served": served,
                   "traffic": config["traffic"],
                   "key_hashes": user, "log": str(folder / "server.log")}
        wait_generation(folder, 1, workers, pid, change.address)
        return Applied(outputs, provider_id=f"pid:{pid}")

    def update(self, change: Change, state: ResourceState, ctx: Context) -> Applied:
        if not pid_alive(int(state.outputs.get("pid", 0))):
            return self.create(change, ctx)
        res = ctx.config.get("Endpoint", change.name)
        assert res is not None
        folder = endpoint_dir(ctx, res.name)
        generation = int(state.outputs.get("generation", 1)) + 1
        hashes, user = self._key_hashes(ctx, res, state.outputs)
        config, served = self._config(ctx, res, generation, int(state.outputs["port"]), hashes)
        publish(folder, config, state, change.address)
        return Applied({**state.outputs, "generation": generation, "served": served,
                        "key_hashes": user, "traffic": config["traffic"]},
                       provider_id=state.provider_id)

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        pid = int(state.outputs.get("pid", 0))
        if not pid_alive(pid):
            return Observed(False, f"its server (pid {pid}) is not running")
        status, _, _ = http_json(f"{state.outputs['url']}/v2/health/ready", timeout=2)
        if status != 200:
            return Observed(False, f"its server (pid {pid}) is not ready (HTTP {status})")
        live = state.outputs.get("traffic")
        declared = state.attributes.get("traffic")
        if live is not None and declared is not None and {
                k: v for k, v in live.items() if v} != {k: v for k, v in declared.items() if v}:
            return Observed(True, f"traffic is {json.dumps(live)}; the configuration says "
                            f"{json.dumps(declared)}", update=True)
        res = ctx.config.get("Endpoint", state.name)
        if res is not None:
            for deployment in res.spec["deployments"]:
                ref = Ref.parse(str(deployment["model"]))
                served = (state.outputs.get("served") or {}).get(deployment["name"])
                if ref is None or served is None:
                    continue
                try:
                    now = ModelRegistry(ctx.store).resolve(ref.name, ref.version, ref.alias)
                except RegistryError:
                    continue
                if now.ref != served:
                    return Observed(True, f"deployment {deployment['name']} serves {served}; "
                                    f"{ref} is now {now.ref}", update=True)
        return Observed()

    def delete(self, state: ResourceState, ctx: Context) -> None:
        stop(int(state.outputs.get("pid", 0)))


_LAUNCHER = """\
import subprocess, sys
log = open(sys.argv[1], "ab")
server = subprocess.Popen(sys.argv[2:], stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, start_new_session=True)
print(server.pid)
"""


def launch(argv: list[str], log: Path, cwd: Path) -> int:
    """Start a server in its own session through a launcher that exits at once, so the
    server belongs to init, not to this process (no zombie, nothing to wait for)."""
    # The access log is block-buffered: one write per line would cost each request a
    # system call.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", _LAUNCHER, str(log), *argv], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise ProviderError("endpoint", f"cannot start the server: {done.stderr[-500:]}")
    return int(done.stdout.strip())


def stop(pid: int, grace_s: float = 10.0) -> None:
    if not pid_alive(pid):
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"  | {line}" for line in text[-lines:])


def regenerate(session: Any, state: ResourceState, which: str) -> str:
    """A new key in place of `which`; the server accepts it (and no longer the old one)
    once every worker serves the new config. Recorded as a change of the state."""
    ctx: Context = session.ctx
    folder = endpoint_dir(ctx, state.name)
    config = json.loads((folder / "config.json").read_text())
    key = new_key()
    user = {**state.outputs.get("key_hashes", {}), which: key_hash(key)}
    generation = int(state.outputs.get("generation", 1)) + 1
    config.update(generation=generation, key_hashes=[
        *user.values(), key_hash(operator_key(ctx, state.name))])
    publish(folder, config, state, state.address)
    state.outputs = {**state.outputs, "generation": generation, "key_hashes": user}
    ctx.store.commit_change(None, state.address, "regenerate-key", state, f"{which} key")
    return key


def take_new_keys(ctx: Context, name: str) -> dict[str, str]:
    """Keys generated by the last apply, returned once and then forgotten."""
    path = endpoint_dir(ctx, name) / "keys.new"
    if not path.exists():
        return {}
    keys = dict(json.loads(path.read_text()))
    path.unlink()
    return keys


def write_config(folder: Path, config: dict[str, Any]) -> Path:
    path = folder / "config.json"
    tmp = folder / "config.json.tmp"
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, path)
    return path


def wait_generation(folder: Path, generation: int, workers: int, pid: int, address: str) -> None:
    """Until every worker serves `generation` (a worker that failed to load it
    keeps the previous one and says why)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            raise ProviderError(address, "the server exited:\n" + _tail(folder / "server.log"))
        statuses = live_statuses(folder)
        errors = [s["error"] for s in statuses if s.get("error")]
        if errors:
            raise ProviderError(address, f"the server could not load generation "
                                f"{generation}: {errors[0]}")
        if sum(s.get("generation") == generation for s in statuses) >= workers:
            return
        time.sleep(0.05)
    raise ProviderError(address, f"the server did not serve generation {generation} "
                        f"within {READY_TIMEOUT_S:g}s:\n" + _tail(folder / "server.log"))


def live_statuses(folder: Path) -> list[dict[str, Any]]:
    """The last status report of each worker still running (written every 0.25 s)."""
    statuses = []
    for path in (folder / "status").glob("*.json"):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            status = json.loads(path.read_text())
            if pid_alive(int(status["pid"])):
                statuses.append(status)
    return statuses


def publish(folder: Path, config: dict[str, Any], state: ResourceState, address: str) -> None:
    """Write the endpoint's new config and wait until every worker serves its generation."""
    write_config(folder, config)
    wait_generation(folder, int(config["generation"]), int(state.outputs["workers"]),
                    int(state.outputs["pid"]), address)


def worker_stats(folder: Path) -> dict[str, dict[str, float]]:
    """Per deployment, summed over live workers: requests, errors, worst p99."""
    total: dict[str, dict[str, float]] = {}
    for status in live_statuses(folder):
        for name, stats in (status.get("stats") or {}).items():
            entry = total.setdefault(name, {"requests": 0, "errors": 0, "p99_ms": 0.0})
            entry["requests"] += stats["requests"]
            entry["errors"] += stats["errors"]
            entry["p99_ms"] = max(entry["p99_ms"], stats["p99_ms"])
    return total


def shifted(traffic: dict[str, int], to: str, share: int) -> dict[str, int]:
    """`to` takes `share`; the others keep their proportions of the rest."""
    others = {k: v for k, v in traffic.items() if k != to and v > 0}
    rest, weight = 100 - share, sum(others.values())
    out = {k: 0 for k in traffic}
    if weight == 0 and rest:
        raise ValueError("no other deployment takes traffic to hand over")
    assigned = 0
    for index, (name, value) in enumerate(sorted(others.items())):
        part = rest - assigned if index == len(others) - 1 else round(rest * value / weight)
        out[name] = part
        assigned += part
    out[to] = share
    return out


def rollout(ctx: Context, state: ResourceState, to: str, steps: list[int], hold_s: float,
            max_error_rate: float | None, max_p99_ms: float | None,
            log: Any = lambda _: None) -> tuple[bool, str, dict[str, int]]:
    """Move traffic to deployment `to` step by step, watching its error rate and p99
    over each hold; roll back to the starting split past a threshold.
    Returns (completed, why, the split now served)."""
    folder = endpoint_dir(ctx, state.name)
    config = json.loads((folder / "config.json").read_text())
    if to not in config["deployments"]:
        raise ProviderError(state.address, f"no deployment {to}; deployments: "
                            f"{', '.join(config['deployments'])}")
    start = {k: int(v) for k, v in config["traffic"].items()}
    start.update({k: start.get(k, 0) for k in config["deployments"]})
    generation = int(state.outputs.get("generation", 1))

    def serve(traffic: dict[str, int]) -> None:
        nonlocal generation
        generation += 1
        config.update(generation=generation, traffic=traffic)
        publish(folder, config, state, state.address)

    reason, current = "", start
    for share in steps:
        current = shifted(start, to, share)
        serve(current)
        before = worker_stats(folder).get(to, {"requests": 0, "errors": 0})
        time.sleep(hold_s)
        after = worker_stats(folder).get(to, {"requests": 0, "errors": 0, "p99_ms": 0.0})
        requests = after["requests"] - before["requests"]
        errors = after["errors"] - before["errors"]
        rate = errors / requests if requests else 0.0
        log(f"{state.address}: {to} at {share}%: {int(requests)} requests, error rate "
            f"{rate:.3f}, p99 <= {after.get('p99_ms', 0.0):g} ms")
        if max_error_rate is not None and requests and rate > max_error_rate:
            reason = f"error rate {rate:.3f} > {max_error_rate} at {share}%"
        elif max_p99_ms is not None and requests and after.get("p99_ms", 0.0) > max_p99_ms:
            reason = f"p99 {after['p99_ms']:g} ms > {max_p99_ms} ms at {share}%"
        if reason:
            serve(start)
            state.outputs = {**state.outputs, "generation": generation, "traffic": start}
            ctx.store.commit_change(None, state.address, "rollback", state,
                                    f"rolled back {to}: {reason}")
            return False, reason, start
    state.outputs = {**state.outputs, "generation": generation, "traffic": current}
    ctx.store.commit_change(None, state.address, "rollout", state,
                            f"{to} now takes {current.get(to)}%")
    return True, f"{to} takes {current.get(to)}% of traffic", current

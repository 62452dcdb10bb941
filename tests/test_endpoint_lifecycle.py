"""An endpoint's lifecycle on the local provider: its identity across re-creations,
crash-safe swaps, servers that are killed, hung or forgotten, and what servers inherit.

Every server listens on 127.0.0.1; every load is bounded in count and time.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from mlinfra.state.store import HOST
from tests.conftest import Result, onnx_model
from tests.test_serving import ENDPOINT, Load, call

Cli = Callable[..., Result]
BLUE_ONLY = ENDPOINT.format(workers=1, traffic="{blue: 100}", mirror="{}")


def files(endpoint: str = BLUE_ONLY) -> dict[str, str | bytes]:
    return {"models/fraud.onnx": onnx_model(), "models/other.onnx": onnx_model((0.3, 0.9)),
            "serving.yaml": endpoint}


def outputs(cli: Cli) -> dict[str, Any]:
    return dict(json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"])


def servers(root: Path) -> set[int]:
    """The pids of the endpoint's server leaders (each the start of a process group),
    found by their command line: whatever mlinfra believes."""
    folder = str(root / ".mlinfra" / "dev" / "endpoints" / "api")
    found = set()
    for process in psutil.process_iter():
        try:
            line = " ".join(process.cmdline())
            if "mlinfra.serving" in line and folder in line and (
                    process.status() != psutil.STATUS_ZOMBIE):
                found.add(process.pid)
        except psutil.Error:
            continue
    return found


def make_keys(cli: Cli) -> dict[str, str]:
    shown = cli("endpoints", "keys", "api")
    assert shown.code == 0, shown.err
    return dict(line.split(": ") for line in shown.out.strip().splitlines())


def answers(url: str, key: str | None, headers: dict[str, str] | None = None) -> int:
    return call(url, key, "POST", "/invocations", {"inputs": [[1, 2]]}, headers)[0]


def eventually(check: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def endpoint(project: Callable[..., Path], cli: Cli) -> Iterator[tuple[Path, Cli, Result]]:
    """An endpoint with one worker, applied; destroyed at the end."""
    root = project(files())
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    try:
        yield root, cli, applied
    finally:
        cli("destroy", "--auto-approve")
        assert servers(root) == set()


# Runs mlinfra, and kills itself with SIGKILL right after the named function returns.
KILLED_AFTER = """\
import importlib, os, signal, sys
module_name, function = sys.argv[1].split(":")
module = importlib.import_module(module_name)
original = getattr(module, function)
def then_die(*args, **kwargs):
    result = original(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
    return result
setattr(module, function, then_die)
from mlinfra.cli import main
sys.exit(main(sys.argv[2:]))
"""
PUBLISH = "mlinfra.providers.local.endpoint.publish:write_config"
LAUNCH = "mlinfra.providers.local.endpoint.handler:launch"


def killed_after(root: Path, point: str, *args: str) -> int:
    done = subprocess.run([sys.executable, "-c", KILLED_AFTER, point, *args], cwd=root,
                          capture_output=True, timeout=180, check=False)
    return done.returncode


# --- 1. identity ----------------------------------------------------------------------

def test_a_recreated_server_keeps_its_port_and_keys(endpoint: Any) -> None:
    root, cli, created = endpoint
    assert "mlinfra endpoints keys api makes them and shows them once" in created.out
    keys = make_keys(cli)
    first = outputs(cli)
    url = first["url"]
    earlier = root / ".mlinfra/dev/endpoints/api/keys.new"  # an earlier mlinfra's
    earlier.write_text('{"primary": "mlk_in_clear"}')
    os.killpg(first["pid"], signal.SIGKILL)  # killed, then repaired as drift
    assert eventually(lambda: gone(first["pid"]))
    assert cli("apply", "--auto-approve").code == 0
    assert not earlier.exists()
    repaired = outputs(cli)
    assert (repaired["url"], repaired["key_hashes"]) == (url, first["key_hashes"])
    assert repaired["pid"] != first["pid"] and answers(url, keys["primary"]) == 200
    (root / "more.yaml").write_text("kind: Compute\nname: cpu2\ntype: local\n")
    (root / "serving.yaml").write_text(BLUE_ONLY + "compute: cpu2\n")  # forces replacement
    plan = cli("plan")
    assert "endpoint.api must be replaced" in plan.out or "-/+" in plan.out, plan.out
    assert cli("apply", "--auto-approve").code == 0
    replaced = outputs(cli)
    assert replaced["url"] == url and replaced["pid"] != repaired["pid"]
    assert answers(url, keys["secondary"]) == 200
    (root / "serving.yaml").write_text(
        ENDPOINT.format(workers=2, traffic="{blue: 100}", mirror="{}") + "compute: cpu2\n")
    assert cli("apply", "--auto-approve").code == 0  # restarted with another worker count
    restarted = outputs(cli)
    assert restarted["url"] == url and restarted["pid"] != replaced["pid"]
    assert answers(url, keys["primary"]) == 200 and answers(url, "mlk_wrong") == 401
    assert cli("plan", "--detailed-exitcode").code == 0
    for path in (root / ".mlinfra").rglob("*"):  # keys at rest: hashes only
        if path.is_file():
            data = path.read_bytes()
            assert keys["primary"].encode() not in data and keys["secondary"].encode() not in (
                data), path


# --- 2. crash-safe swaps ----------------------------------------------------------------

def test_a_swap_cut_short_by_kill_9_is_drift_and_later_changes_take_effect(
        endpoint: Any) -> None:
    root, cli, _ = endpoint
    keys = make_keys(cli)
    url = outputs(cli)["url"]
    # A key regeneration killed right after the server's config was written: the state
    # recorded the new key set before the server got it, so they agree, and the revoked
    # key stays revoked through the next apply (the new key was never shown: make
    # another).
    assert killed_after(root, PUBLISH, "endpoints", "keys", "api", "--regenerate",
                        "primary") == -signal.SIGKILL
    assert eventually(lambda: answers(url, keys["primary"]) == 401)
    assert cli("plan", "--detailed-exitcode").code == 0
    assert cli("apply", "--auto-approve").code == 0
    assert answers(url, keys["primary"]) == 401
    new = cli("endpoints", "keys", "api", "--regenerate", "primary").out.split(": ")[1].strip()
    assert answers(url, new) == 200 and answers(url, keys["primary"]) == 401
    assert answers(url, keys["secondary"]) == 200
    assert cli("plan", "--detailed-exitcode").code == 0
    # A traffic change killed the same way, then taken back in the YAML: the server
    # still splits 50/50, which the plan must show.
    (root / "serving.yaml").write_text(
        ENDPOINT.format(workers=1, traffic="{blue: 50, green: 50}", mirror="{}"))
    assert killed_after(root, PUBLISH, "apply", "--auto-approve") == -signal.SIGKILL
    (root / "serving.yaml").write_text(BLUE_ONLY)
    plan = cli("plan", "--detailed-exitcode")
    assert plan.code == 2, plan.out
    assert ('splits traffic {"blue": 50, "green": 50}; the state says {"blue": 100}'
            in plan.out), plan.out
    assert eventually(lambda: "other:1" in {  # the workers loaded it
        call(url, new, "POST", "/invocations", {"inputs": [[1, 2]]})[2]["mlinfra-model"]
        for _ in range(30)})
    assert cli("plan", "--detailed-exitcode").code == 2
    # Later changes take effect (a generation is never reused).
    (root / "serving.yaml").write_text(
        ENDPOINT.format(workers=1, traffic="{blue: 0, green: 100}", mirror="{}"))
    assert cli("apply", "--auto-approve").code == 0
    served = {call(url, new, "POST", "/invocations", {"inputs": [[1, 2]]})[2]["mlinfra-model"]
              for _ in range(30)}
    assert served == {"other:1"}
    assert cli("plan", "--detailed-exitcode").code == 0


# --- 3. no second server ------------------------------------------------------------------

def test_kill_9_during_a_start_leaves_no_second_server(project: Callable[..., Path],
                                                       cli: Cli) -> None:
    """The second apply stops the first server, then starts its own on the same port:
    it is judged ready on its own workers' reports, never on the first one's."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    root = project(files(BLUE_ONLY + f"port: {port}\n"))
    assert killed_after(root, LAUNCH, "apply", "--auto-approve") == -signal.SIGKILL
    orphans = servers(root)
    assert len(orphans) == 1  # started; no state records it
    assert eventually(lambda: _answers_at(port))
    try:
        applied = cli("apply", "--auto-approve")
        assert applied.code == 0, applied.err
        assert "stopped a server that no state recorded" in applied.out
        assert servers(root) == {outputs(cli)["pid"]} and not orphans & servers(root)
        assert answers(outputs(cli)["url"], None) == 401
    finally:
        assert cli("destroy", "--auto-approve").code == 0
    assert servers(root) == set()


def _answers_at(port: int) -> bool:
    try:
        return answers(f"http://127.0.0.1:{port}", None) == 401
    except OSError:
        return False


def test_destroy_after_a_start_cut_short_stops_its_server(project: Callable[..., Path],
                                                          cli: Cli) -> None:
    root = project(files())
    assert killed_after(root, LAUNCH, "apply", "--auto-approve") == -signal.SIGKILL
    assert len(servers(root)) == 1
    destroyed = cli("destroy", "--auto-approve")
    assert destroyed.code == 0, destroyed.err
    assert servers(root) == set()


def test_a_failed_create_or_update_stops_what_it_launched(
        project: Callable[..., Path], cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlinfra.providers.local.endpoint import publish

    root = project(files())
    ready_s = publish.READY_TIMEOUT_S
    monkeypatch.setattr(publish, "READY_TIMEOUT_S", 0.0)  # no server is ready in no time
    failed = cli("apply", "--auto-approve")
    assert failed.code == 1 and "did not serve generation" in failed.err, failed.err
    assert servers(root) == set()
    monkeypatch.setattr(publish, "READY_TIMEOUT_S", ready_s)
    try:
        assert cli("apply", "--auto-approve").code == 0
        before = outputs(cli)
        (root / "serving.yaml").write_text(
            ENDPOINT.format(workers=2, traffic="{blue: 100}", mirror="{}"))
        monkeypatch.setattr(publish, "READY_TIMEOUT_S", 0.0)
        failed = cli("apply", "--auto-approve")
        assert failed.code == 1 and "did not serve generation" in failed.err, failed.err
        assert servers(root) == {before["pid"]}  # the new one stopped, the old one serves
        assert answers(before["url"], None) == 401
        monkeypatch.setattr(publish, "READY_TIMEOUT_S", ready_s)
        assert cli("apply", "--auto-approve").code == 0
        assert outputs(cli)["workers"] == 2
    finally:
        cli("destroy", "--auto-approve")
    assert servers(root) == set()


# --- 4. down, hung, unreachable --------------------------------------------------------------

def test_a_hung_server_is_drift_and_every_command_answers(endpoint: Any,
                                                          tmp_path: Path) -> None:
    _, cli, _ = endpoint
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": [[1.0, 2.0]]}))
    first = outputs(cli)
    os.killpg(first["pid"], signal.SIGSTOP)
    try:
        plan = cli("plan", "--detailed-exitcode")
        assert plan.code == 2, plan.err
        assert f"its server (pid {first['pid']}) did not answer within 2s" in plan.out
        invoked = cli("endpoints", "invoke", "api", "--data", str(request), "--timeout", "1s")
        assert invoked.code == 1 and "did not answer within 1s" in invoked.err, invoked.err
        shown = cli("endpoints", "show", "api")
        assert shown.code == 0 and "did not answer within 2s" in json.loads(shown.out)["health"]
        assert "did not answer" in cli("endpoints", "list").out
        applied = cli("apply", "--auto-approve")  # replaced, on the same port
        assert applied.code == 0, applied.err
    finally:
        if not gone(first["pid"]):
            os.killpg(first["pid"], signal.SIGCONT)
    assert gone(first["pid"]) and outputs(cli)["url"] == first["url"]
    assert cli("endpoints", "invoke", "api", "--data", str(request)).code == 0


def test_a_server_that_is_down_is_a_clear_error(endpoint: Any, tmp_path: Path) -> None:
    _, cli, _ = endpoint
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": [[1.0, 2.0]]}))
    missing = cli("endpoints", "invoke", "api", "--data", str(tmp_path / "missing.json"))
    assert missing.code == 1
    assert "cannot read the request body" in missing.err and "No such file" in missing.err
    pid = outputs(cli)["pid"]
    os.killpg(pid, signal.SIGKILL)
    assert eventually(lambda: gone(pid))
    invoked = cli("endpoints", "invoke", "api", "--data", str(request))
    assert invoked.code == 1 and "mlinfra plan shows whether its server needs repair" in (
        invoked.err), invoked.err
    shown = cli("endpoints", "show", "api")
    assert shown.code == 0 and "is not running" in json.loads(shown.out)["health"]


def test_destroy_never_kills_a_process_that_reused_the_pid(endpoint: Any) -> None:
    from mlinfra.engine import open_session

    root, cli, _ = endpoint
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        session = open_session(root, None, "test", write=True)  # the server's pid, now another's
        state = session.store.get("endpoint.api")
        assert state is not None
        state.outputs = {**state.outputs, "pid": stranger.pid}
        session.store.commit_change(None, state.address, "test", state, "pid reused")
        session.close()
        assert cli("destroy", "--auto-approve").code == 0
        assert stranger.poll() is None  # still running
        assert servers(root) == set()  # and the endpoint's real server stopped
    finally:
        stranger.kill()
        stranger.wait()


# --- 5. workers and load errors -------------------------------------------------------------

def test_workers_take_effect_on_a_running_endpoint(endpoint: Any) -> None:
    root, cli, _ = endpoint
    keys = make_keys(cli)
    before = outputs(cli)
    assert json.loads(cli("endpoints", "show", "api").out)["workers"] == 1
    with Load(before["url"], keys["primary"], threads=2, seconds=60) as load:
        time.sleep(0.3)
        (root / "serving.yaml").write_text(
            ENDPOINT.format(workers=2, traffic="{blue: 100}", mirror="{}"))
        applied = cli("apply", "--auto-approve")
        time.sleep(0.3)
    assert applied.code == 0 and "endpoint.api: Modifications complete" in applied.out
    after = outputs(cli)
    assert after["workers"] == 2 and after["url"] == before["url"]
    assert after["pid"] != before["pid"] and gone(before["pid"])
    assert json.loads(cli("endpoints", "show", "api").out)["workers"] == 2
    assert load.total > 0 and set(load.statuses) == {200}, (load.statuses, load.dropped)
    # The old server drains its connections and new ones go to the new server only.
    assert load.dropped == 0, (load.statuses, load.dropped)


def test_instances_is_not_a_field_of_a_deployment(project: Callable[..., Path],
                                                  cli: Cli) -> None:
    with_instances = BLUE_ONLY.replace("    model: fraud\n", "    model: fraud\n    instances: 2\n")
    project(files(with_instances))
    checked = cli("validate")
    assert checked.code == 1 and "deployments[0].instances: unknown field" in checked.err


def fails_on_warm_up() -> bytes:
    """Loads (registration only loads), then fails on every input, the warm-up's too:
    an out-of-range Gather."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Gather", ["features", "zero"], ["first"], axis=1),
             helper.make_node("Cast", ["first"], ["i0"], to=TensorProto.INT64),
             helper.make_node("Add", ["i0", "two"], ["index"]),
             helper.make_node("Gather", ["table", "index"], ["y0"], axis=0),
             helper.make_node("Reshape", ["y0", "shape"], ["y"])]
    graph = helper.make_graph(
        nodes, "fails",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor("zero", TensorProto.INT64, [1], [0]),
         helper.make_tensor("two", TensorProto.INT64, [], [2]),
         helper.make_tensor("table", TensorProto.FLOAT, [1], [0.5]),
         helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def test_a_failed_update_does_not_fail_the_next(endpoint: Any) -> None:
    root, cli, _ = endpoint
    url = outputs(cli)["url"]
    key = (root / ".mlinfra/dev/endpoints/api/operator.key").read_text().strip()
    green = {"mlinfra-deployment": "green"}
    (root / "models" / "other.onnx").write_bytes(fails_on_warm_up())
    failed = cli("apply", "--auto-approve")
    assert failed.code == 1 and "could not load generation" in failed.err, failed.err
    assert call(url, key, "POST", "/invocations", {"inputs": [[1, 2]]}, green)[2][
        "mlinfra-model"] == "other:1"  # still serving what it served
    (root / "models" / "other.onnx").write_bytes(onnx_model((0.7, 0.7)))
    fixed = cli("apply", "--auto-approve")
    assert fixed.code == 0, fixed.err
    assert call(url, key, "POST", "/invocations", {"inputs": [[1, 2]]}, green)[2][
        "mlinfra-model"] == "other:3"


# --- 6. the stack lock ---------------------------------------------------------------------

def test_rollout_and_key_regeneration_take_the_stack_lock(endpoint: Any) -> None:
    from mlinfra.engine import open_session
    from mlinfra.state.lock import locked

    root, cli, _ = endpoint
    session = open_session(root, None, "apply", write=True)
    try:
        with locked(session.store, "dev", "apply"):
            for args in (("keys", "api", "--regenerate", "primary"), ("keys", "api"),
                         ("rollout", "api", "--to", "green", "--steps", "100",
                          "--hold", "0.1s")):
                held = cli("endpoints", *args)
                assert held.code == 1 and "is locked" in held.err, (args, held.err)
    finally:
        session.close()
    assert cli("endpoints", "keys", "api").code == 0


# --- 8. what a server inherits ---------------------------------------------------------------

def test_servers_do_not_inherit_the_apply_environment(
        project: Callable[..., Path], cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_DB_PASSWORD", "hunter2-never-in-a-server")
    root = project(files(ENDPOINT.format(workers=2, traffic="{blue: 100}", mirror="{}")))
    assert cli("apply", "--auto-approve").code == 0
    try:
        leader = psutil.Process(outputs(cli)["pid"])
        processes = [leader, *leader.children(recursive=True)]
        assert len(processes) >= 3  # the leader and two workers
        for process in processes:
            environ = process.environ()
            assert "FRAUD_DB_PASSWORD" not in environ and "PATH" in environ, process.pid
            assert "hunter2" not in (Path(f"/proc/{process.pid}/environ").read_text())
    finally:
        cli("destroy", "--auto-approve")
    assert servers(root) == set()


def test_a_teammates_clone_sharing_the_state_sees_the_same_endpoint(
        endpoint: Any, tmp_path: Path) -> None:
    """A second clone of the project on this machine, on the same state and artifacts,
    reads the server's own folder: no drift, and invoke works. A server another machine
    started is taken as the state records it, and a change to it is refused there."""
    root, cli, _ = endpoint
    clone = tmp_path / "clone"
    shutil.copytree(root, clone, ignore=shutil.ignore_patterns(".mlinfra"))
    (clone / "stacks").mkdir(exist_ok=True)
    state = root / ".mlinfra" / "dev" / "state.db"
    (clone / "stacks" / "dev.yaml").write_text(
        f"kind: Stack\nname: dev\nstate: {state}\nartifacts: {root / '.mlinfra' / 'dev'}\n")
    planned = cli("plan", "--detailed-exitcode", "-C", str(clone))
    assert planned.code == 0, planned.out + planned.err
    (tmp_path / "request.json").write_text('{"inputs": [[1, 2]]}')
    invoked = cli("endpoints", "invoke", "api", "-C", str(clone), "--data",
                  str(tmp_path / "request.json"))
    assert invoked.code == 0 and "HTTP 200" in invoked.err, invoked.err

    def set_host(host: str) -> None:
        db = sqlite3.connect(state)
        (text,) = db.execute("SELECT outputs FROM resources WHERE address='endpoint.api'"
                             ).fetchone()
        db.execute("UPDATE resources SET outputs=? WHERE address='endpoint.api'",
                   (json.dumps({**json.loads(text), "host": host}),))
        db.commit()
        db.close()

    set_host("another-machine")
    try:
        assert cli("plan", "--detailed-exitcode", "-C", str(clone)).code == 0
        (clone / "serving.yaml").write_text(
            ENDPOINT.format(workers=1, traffic="{blue: 100}", mirror="{}").replace(
                "auth: key", "auth: none"))
        refused = cli("apply", "--auto-approve", "-C", str(clone))
        assert refused.code == 1 and "its server runs on another-machine" in refused.err
    finally:
        set_host(HOST)

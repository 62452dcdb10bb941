"""Events, webhooks and the agent, with a real receiver on 127.0.0.1 that verifies every
signature with `standardwebhooks` and reads every body with the `cloudevents` SDK."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mlinfra.engine import open_session
from mlinfra.events.agent import deliverer
from mlinfra.events.outbox import EventOutbox
from tests.conftest import Result, onnx_model
from tests.webhook_receiver import Receiver

Cli = Callable[..., Result]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MLINFRA = str(Path(sys.executable).parent / "mlinfra")
ROWS = [(1.0, 0.3, 1), (-1.0, 0.8, 0), (0.5, -0.7, 1), (-0.4, -0.2, 0), (2.0, 0.1, 1),
        (-2.0, 0.9, 0), (0.2, -1.0, 1), (-0.1, 0.4, 0)]
DATA = "a,b,y\n" + "".join(f"{a},{b},{y}\n" for a, b, y in ROWS)

MODEL = """\
kind: Data
name: holdout
path: holdout.csv
---
kind: Model
name: fraud
from: {path: models/fraud.onnx}
evaluation: {data: holdout, label: y, metrics: [auc]}
---
kind: Promotion
name: fraud
model: fraud
compare: {metric: auc, direction: max}
"""


def webhook(url: str, events: str = "['*']", extra: str = "") -> str:
    return (f"kind: Webhook\nname: ops\nurl: {url}\nsecret: ${{secret.OPS_SECRET}}\n"
            f"events: {events}\nretry: {{first: 1s, for: 24h}}\n{extra}")


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_SECRET", SECRET)
    # A loaded machine (CI) may take longer than the default 3 s to deliver a command's
    # events before it exits; the tests that count on that flush give it more.
    monkeypatch.setenv("MLINFRA_EVENTS_FLUSH_S", "30")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver(SECRET) as found:
        yield found


def outbox_of(root: Path) -> tuple[EventOutbox, Callable[[], None]]:
    session = open_session(root, None, "test", write=True)
    return EventOutbox(session.store), session.store.close


def test_a_promotion_delivers_one_signed_model_promoted(
        project: Callable[..., Path], cli: Cli, receiver: Receiver) -> None:
    project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
             "model.yaml": MODEL,
             "hooks.yaml": webhook(receiver.url, "[model.promoted, apply.*]")})
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    assert receiver.bad == []
    promoted = receiver.of_type("model.promoted")
    assert len(promoted) == 1
    data = promoted[0].data
    assert data["model"] == "fraud" and data["alias"] == "champion" and data["version"] == 1
    assert data["previous"] is None and data["stack"] == "dev" and data["project"] == "proj"
    assert data["address"] == "model.fraud" == promoted[0].subject
    assert data["actor"]["kind"] in ("user", "ci") and data["see"].startswith("mlinfra ")
    assert [r.type for r in receiver.accepted] == ["model.promoted", "apply.completed"]
    # A manual alias move is announced too, once, with the version it replaced.
    (Path("models") / "fraud.onnx").write_bytes(onnx_model((0.1, 2.0)))
    assert cli("apply", "--auto-approve").code == 0
    moved = cli("models", "alias", "fraud@champion", "2")
    assert moved.code == 0, moved.err
    manual = receiver.of_type("model.promoted")
    assert len(manual) == 2 and manual[1].data["version"] == 2
    assert manual[1].data["previous"] == 1 and "models alias" in manual[1].data["reason"]
    assert len({r.id for r in receiver.accepted}) == len(receiver.accepted)
    assert set(receiver.tries.values()) == {1}
    listed = json.loads(cli("events", "list", "--json").out)
    assert {e["type"] for e in listed} >= {"model.promoted", "model.version_registered",
                                           "apply.completed", "data.version_created"}
    for event in listed:
        if event["type"] == "model.promoted":
            assert [d["status"] for d in event["deliveries"]] == ["delivered"]
        if event["type"] == "model.version_registered":  # ops does not take these
            assert event["deliveries"] == []


def test_a_receiver_answering_503_three_times_gets_the_event_on_the_fourth_try(
        project: Callable[..., Path], cli: Cli, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    receiver.script = [503, 503, 503]
    root = project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
                    "model.yaml": MODEL,
                    "hooks.yaml": webhook(receiver.url, "[model.promoted]")})
    monkeypatch.setenv("MLINFRA_EVENTS_FLUSH_S", "0")  # every try below, on a fake clock
    assert cli("apply", "--auto-approve").code == 0
    session = open_session(root, None, "agent", write=True)
    now = [time.time()]
    sender = deliverer(session.config, session.store, clock=lambda: now[0])
    try:
        for _ in range(6):
            now[0] += 3600  # well past each backoff
            sender.run()
    finally:
        sender.close()
        session.close()
    [event] = receiver.of_type("model.promoted")
    assert receiver.tries[event.id] == 4 and receiver.bad == []
    shown = json.loads(cli("events", "show", event.id[:8]).out)
    [delivery] = shown["deliveries"]
    assert delivery["status"] == "delivered" and delivery["attempts"] == 4
    assert delivery["last_status"] == 200


def test_retry_after_is_honoured_and_other_4xx_are_never_retried(
        project: Callable[..., Path], cli: Cli, receiver: Receiver) -> None:
    receiver.script = [429, 400]
    receiver.retry_after = "120"
    root = project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
                    "model.yaml": MODEL,
                    "hooks.yaml": webhook(receiver.url, "[model.promoted]")})
    assert cli("apply", "--auto-approve").code == 0  # 429, Retry-After: 120
    outbox, close = outbox_of(root)
    try:
        [pending] = [d for d in outbox.deliveries() if d.webhook == "ops"]
        assert pending.status == "pending" and pending.last_status == 429
        assert pending.next_at - pending.first_try_at >= 120  # not the 1 s backoff
    finally:
        close()
    session = open_session(root, None, "agent", write=True)
    sender = deliverer(session.config, session.store, clock=lambda: time.time() + 121)
    try:
        sender.run()  # 400: dead-lettered at once
        sender.run()
    finally:
        sender.close()
        session.close()
    assert sum(receiver.tries.values()) == 2 and receiver.accepted == []
    failed = cli("events", "list", "--failed")
    assert failed.code == 0 and "model.promoted" in failed.out
    assert "failed after 2 tries: HTTP 400" in failed.out
    event_id = json.loads(cli("events", "list", "--failed", "--json").out)[0]["id"]
    again = cli("events", "redeliver", event_id)
    assert again.code == 0 and "delivered again to ops" in again.out
    assert cli("agent", "--once").code == 0
    assert [r.id for r in receiver.accepted] == [event_id]
    assert cli("events", "list", "--failed").out.count("model.promoted") == 0


def test_410_disables_the_webhook_until_its_url_changes(
        project: Callable[..., Path], cli: Cli, receiver: Receiver) -> None:
    receiver.script = [410]
    project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
             "model.yaml": MODEL,
             "hooks.yaml": webhook(receiver.url, "['model.*']")})
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    assert sum(receiver.tries.values()) == 1  # the first 410 stopped the rest
    listed = cli("events", "list").out
    assert "410 Gone: webhook ops disabled" in listed
    assert cli("agent", "--once").code == 0
    assert sum(receiver.tries.values()) == 1


def test_a_missing_secret_makes_the_event_wait_with_the_reason(
        project: Callable[..., Path], cli: Cli, receiver: Receiver,
        monkeypatch: pytest.MonkeyPatch) -> None:
    project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
             "model.yaml": MODEL, "hooks.yaml": webhook(receiver.url, "[model.promoted]")})
    assert cli("plan").code == 0
    monkeypatch.setenv("MLINFRA_EVENTS_FLUSH_S", "0")
    assert cli("apply", "--auto-approve").code == 0
    monkeypatch.delenv("OPS_SECRET")
    once = cli("agent", "--once")
    assert once.code == 0 and "1 waiting" in once.out
    listed = cli("events", "list").out
    assert "secret 'OPS_SECRET' is not set where mlinfra delivers" in listed
    assert receiver.tries == {}


def test_a_kill_right_after_the_commit_still_delivers_exactly_once(
        project: Callable[..., Path], cli: Cli, receiver: Receiver) -> None:
    root = project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
                    "model.yaml": MODEL,
                    "hooks.yaml": webhook(receiver.url, "[model.promoted]")})
    env = {**os.environ, "MLINFRA_EVENTS_FLUSH_S": "0"}
    assert subprocess.run([MLINFRA, "apply", "--auto-approve"], cwd=root, env=env,
                          capture_output=True).returncode == 0
    assert cli("agent", "--once").code == 0
    # The alias moves in a process killed -9 right after its transaction commits.
    script = ("import os, signal\n"
              "from mlinfra.engine import open_session\n"
              "from mlinfra.registry.models import ModelRegistry\n"
              "s = open_session(__import__('pathlib').Path('.'), None, 'x', write=True)\n"
              "ModelRegistry(s.store).set_alias('fraud', 'stable', 1, 'by hand')\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    killed = subprocess.run([sys.executable, "-c", script], cwd=root, env=env)
    assert killed.returncode == -signal.SIGKILL
    assert len(receiver.of_type("model.promoted")) == 1  # nothing sent yet
    for _ in range(2):
        assert cli("agent", "--once").code == 0
    promoted = receiver.of_type("model.promoted")
    assert [p.data["alias"] for p in promoted] == ["champion", "stable"]
    assert set(receiver.tries.values()) == {1}


def test_a_slack_webhook_gets_a_message(project: Callable[..., Path], cli: Cli) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    bodies: list[dict[str, str]] = []

    class Slack(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Slack)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
                 "model.yaml": MODEL,
                 "hooks.yaml": webhook(f"http://127.0.0.1:{server.server_address[1]}/x",
                                       "[model.promoted]", "format: slack\n")})
        assert cli("apply", "--auto-approve").code == 0
    finally:
        server.shutdown()
        server.server_close()
    [message] = bodies
    assert message["text"].startswith("*model.promoted* model.fraud on proj/dev")
    assert "alias: champion" in message["text"]


def test_bad_webhooks_and_schedules_are_validation_errors(
        project: Callable[..., Path], cli: Cli) -> None:
    project({"auto.yaml": """\
        kind: Webhook
        name: ops
        url: ftp://hooks.example.com/x
        events: [model.promotd, rollouts.*]
        ---
        kind: Schedule
        name: never
        cron: "0 0 30 2 *"
        timezone: Europe/Berln
        run: {apply: true}
        ---
        kind: Schedule
        name: both
        cron: "0 2 * * *"
        every: 6h
        run: {pipeline: nope}
        """})
    checked = cli("validate")
    assert checked.code != 0
    err = checked.err
    assert "auto.yaml:3:6: webhook/ops: url: 'ftp://hooks.example.com/x' is not an http://" \
        in err, err
    assert "auto.yaml:4:10: webhook/ops: events[0]: 'model.promotd' is not an event" in err
    assert "did you mean 'model.promoted'" in err
    assert "auto.yaml:4:25: webhook/ops: events[1]: 'rollouts.*' matches no event" in err
    assert "auto.yaml:8:7: schedule/never: cron: cron expression '0 0 30 2 *' is not valid" \
        in err, err
    assert "auto.yaml:9:11: schedule/never: timezone: unknown time zone 'Europe/Berln'" in err
    assert "schedule/both: give either cron: (with timezone:) or every:, not both" in err
    assert "Traceback" not in err


def test_a_rollback_delivers_rollout_rolled_back(
        project: Callable[..., Path], cli: Cli, receiver: Receiver) -> None:
    from tests.test_promotion_rollout import (
        DATA as SERVED_DATA,
    )
    from tests.test_promotion_rollout import (
        PROJECT,
        ROLLOUT,
        WEIGHTS,
        Requests,
        endpoint_url,
        failing_on_single_rows,
        operator_key,
    )

    root = project({"models/fraud.onnx": onnx_model(WEIGHTS["fair"]),
                    "data/holdout.csv": SERVED_DATA,
                    "serving.yaml": PROJECT.format(rollout=ROLLOUT % "false"),
                    "hooks.yaml": webhook(receiver.url,
                                          "['rollout.*', 'endpoint.*', model.promoted]")})
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    try:
        assert [r.type for r in receiver.accepted] == ["model.promoted", "endpoint.created"]
        (root / "models" / "fraud.onnx").write_bytes(failing_on_single_rows(WEIGHTS["good"]))
        with Requests(endpoint_url(cli), operator_key(root)):
            time.sleep(0.3)
            rolled = cli("apply", "--auto-approve")
        assert rolled.code == 1 and "rolled back" in rolled.err + rolled.out
        [back] = receiver.of_type("rollout.rolled_back")
        assert back.data["endpoint"] == "api" and back.data["model"] == "fraud:2"
        assert back.data["restored"] == "fraud:1"
        assert back.data["reason"].startswith("rolled back: error rate")
        assert back.subject == "endpoint.api"
        steps = receiver.of_type("rollout.step")
        assert [s.data["share"] for s in steps] == [20] and steps[0].data["model"] == "fraud:2"
        moves = [(m.data["version"], m.data["previous"])
                 for m in receiver.of_type("model.promoted")]
        assert moves == [(1, None)]  # the alias moves only once a rollout completes
        assert receiver.of_type("rollout.completed") == [] and receiver.bad == []
        # A server killed outside mlinfra: the apply that repairs it announces it.
        import signal as signals

        pid = json.loads(cli("output", "endpoint.api", "--json").out)["endpoint.api"]["pid"]
        os.killpg(pid, signals.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.1)
        assert cli("apply", "--auto-approve").code == 0
        [unhealthy] = receiver.of_type("endpoint.unhealthy")
        assert unhealthy.data["endpoint"] == "api" and unhealthy.data["reason"]
        assert receiver.of_type("endpoint.updated") or receiver.of_type("endpoint.created")
    finally:
        cli("destroy", "--auto-approve")
    assert [r.type for r in receiver.accepted][-1] == "endpoint.deleted"


def test_the_outbox_on_postgresql(postgres: object, project: Callable[..., Path], cli: Cli,
                                  receiver: Receiver, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same outbox, deliveries and agent on a stack whose state is on PostgreSQL."""
    from tests.postgres import PASSWORD, PostgresServer

    assert isinstance(postgres, PostgresServer)
    name = f"ev-{os.urandom(3).hex()}"
    url = postgres.url().replace("mlinfra@", "mlinfra:${secret.PGTEST_PASSWORD}@")
    monkeypatch.setenv("PGTEST_PASSWORD", PASSWORD)
    receiver.script = [503]
    project({"mlinfra.yaml": f"kind: Project\nname: {name}\n",
             "stacks/dev.yaml": f"kind: Stack\nname: dev\nstate: {url}\n",
             "models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
             "model.yaml": MODEL,
             "hooks.yaml": webhook(receiver.url, "[model.promoted, apply.completed]")})
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err
    assert [r.type for r in receiver.accepted] == ["apply.completed"]  # promoted got 503
    listed = json.loads(cli("events", "list", "--json").out)
    [promoted] = [e for e in listed if e["type"] == "model.promoted"]
    assert promoted["deliveries"][0]["last_status"] == 503
    time.sleep(1.2)  # the first backoff: retry.first 1s, times a jitter below 1
    assert cli("agent", "--once").code == 0
    assert [r.type for r in receiver.accepted] == ["apply.completed", "model.promoted"]
    assert receiver.tries[promoted["id"]] == 2 and receiver.bad == []


def test_a_new_webhook_gets_events_from_the_apply_that_creates_it_on(
        project: Callable[..., Path], cli: Cli, receiver: Receiver) -> None:
    root = project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
                    "model.yaml": MODEL})
    assert cli("apply", "--auto-approve").code == 0
    (root / "hooks.yaml").write_text(webhook(receiver.url, "['*']"))
    (root / "models" / "fraud.onnx").write_bytes(onnx_model((0.1, 2.0)))
    assert cli("apply", "--auto-approve").code == 0
    types = [r.type for r in receiver.accepted]
    assert "model.version_registered" in types and "apply.completed" in types
    assert all(r.data["version"] == 2 for r in receiver.accepted
               if r.type == "model.version_registered")
    assert "data.version_created" not in types  # the first apply's, before the webhook


def test_a_webhook_disabled_by_410_delivers_again_at_a_new_url(
        project: Callable[..., Path], cli: Cli, receiver: Receiver) -> None:
    receiver.script = [410]
    root = project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
                    "model.yaml": MODEL, "hooks.yaml": webhook(receiver.url, "['model.*']")})
    assert cli("apply", "--auto-approve").code == 0
    assert receiver.accepted == []
    with Receiver(SECRET) as moved:
        (root / "hooks.yaml").write_text(webhook(moved.url, "['model.*']"))
        assert cli("apply", "--auto-approve").code == 0
        assert cli("agent", "--once").code == 0
        # The event that got the 410 is dead-lettered; the one that waited is delivered.
        assert [r.type for r in moved.accepted] == ["model.promoted"]
    failed = json.loads(cli("events", "list", "--failed", "--json").out)
    assert [e["type"] for e in failed] == ["model.version_registered"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_a_receiver_down_for_ten_minutes_gets_the_event_when_it_returns(
        project: Callable[..., Path], cli: Cli) -> None:
    import socket

    with socket.socket() as probe:  # a port nothing listens on, for now
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
                    "model.yaml": MODEL,
                    "hooks.yaml": webhook(f"http://127.0.0.1:{port}/hook",
                                          "[model.promoted]")})
    applied = cli("apply", "--auto-approve")
    assert applied.code == 0, applied.err  # delivery never fails the apply
    assert "Connect" in cli("events", "list").out  # waiting: connection refused
    session = open_session(root, None, "agent", write=True)
    now = [time.time()]
    sender = deliverer(session.config, session.store, clock=lambda: now[0])
    try:
        for _ in range(5):  # ten minutes of tries, the receiver still down
            now[0] += 120
            sender.run()
        with Receiver(SECRET, port=port) as back:
            now[0] += 3600
            sender.run()
    finally:
        sender.close()
        session.close()
    assert [r.type for r in back.accepted] == ["model.promoted"] and back.bad == []


def test_an_id_whose_first_characters_are_digits_is_found_by_its_short_form(
        project: Callable[..., Path], cli: Cli) -> None:
    """`events list` shows 8 characters of an id; a uuid's may all be digits, and they
    name that event, not a sequence number; a shorter number is a sequence number."""
    root = project({"models/fraud.onnx": onnx_model(), "data/holdout.csv": DATA,
                    "model.yaml": MODEL})
    assert cli("apply", "--auto-approve").code == 0
    outbox, close = outbox_of(root)
    try:
        first = outbox.find("1")
        digits = "31415926-5358-4979-8323-846264338327"
        envelope = json.dumps({**first.envelope, "id": digits})
        outbox.store.write_now(lambda cur: cur.execute(
            "UPDATE outbox SET event_id=?, envelope=? WHERE id=?",
            (digits, envelope, first.seq)))
    finally:
        close()
    shown = cli("events", "show", digits[:8])
    assert shown.code == 0, shown.err
    assert json.loads(shown.out)["id"] == digits
    assert json.loads(cli("events", "show", "1").out)["id"] == digits

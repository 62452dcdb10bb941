"""Schedules and the agent: cron in a time zone across daylight saving changes (a fake
clock), the next fire times and DST warnings in plan, runs named after their instant and
never run twice, one agent per stack, and a clean stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mlinfra.engine import open_session
from mlinfra.events.agent import Agent
from mlinfra.events.schedules import ScheduleSpec, plan_notes, run_name
from mlinfra.scheduled import ScheduledWork
from tests.conftest import Result, onnx_model
from tests.webhook_receiver import Receiver

Cli = Callable[..., Result]
MLINFRA = str(Path(sys.executable).parent / "mlinfra")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


def schedule(name: str, when: str, run: str = "{apply: true}", extra: str = "") -> str:
    return f"kind: Schedule\nname: {name}\n{when}\nrun: {run}\n{extra}---\n"


def fired_over(root: Path, start: float, end: float, step: float = 600.0) -> list[str]:
    """Run the agent on a fake clock from `start` to `end`; the runs it fired."""
    session = open_session(root, None, "agent", write=True)
    now = [start]
    fired: list[str] = []

    def work(spec: ScheduleSpec, name: str, instant: float) -> str:
        fired.append(name)
        return "recorded"

    agent = Agent(session.config, session.store, work, clock=lambda: now[0])
    try:
        while now[0] <= end:
            agent.tick()
            now[0] += step
    finally:
        agent.close()
        session.close()
    return fired


def test_a_cron_schedule_fires_at_the_right_instants_across_dst_changes(
        project: Callable[..., Path], cli: Cli) -> None:
    root = project({"auto.yaml": schedule("nightly", 'cron: "0 2 * * *"',
                                          extra="timezone: Europe/Berlin\n")
                    + schedule("late", 'cron: "30 2 * * *"',
                               extra="timezone: Europe/Berlin\n")}, base=False)
    assert cli("apply", "--auto-approve").code == 0
    # Spring: 2027-03-28 02:00 does not exist in Berlin; it fires at 03:00 CEST (01:00Z).
    spring = fired_over(root, utc(2027, 3, 26, 12), utc(2027, 3, 29, 12))
    assert [f for f in spring if f.startswith("nightly")] == [
        "nightly-20270326T010000Z",  # the newest instant missed before the clock began
        "nightly-20270327T010000Z", "nightly-20270328T010000Z",
        "nightly-20270329T000000Z"]
    assert [f for f in spring if f.startswith("late")] == [
        "late-20270326T013000Z", "late-20270327T013000Z", "late-20270328T010000Z",
        "late-20270329T003000Z"]
    # Autumn: 02:30 happens twice on 2027-10-31; it fires once, the first time (CEST).
    autumn = fired_over(root, utc(2027, 10, 29, 12), utc(2027, 11, 1, 12))
    assert [f for f in autumn if f.startswith("late")] == [
        "late-20271029T003000Z", "late-20271030T003000Z", "late-20271031T003000Z",
        "late-20271101T013000Z"]
    # A second pass over the same instants fires nothing again.
    assert fired_over(root, utc(2027, 10, 31, 0), utc(2027, 11, 1, 2)) == []


def test_plan_shows_the_next_three_fire_times_and_dst_warnings(
        project: Callable[..., Path], cli: Cli) -> None:
    from mlinfra.spec import load

    root = project({"auto.yaml": schedule("nightly", 'cron: "30 2 * * *"',
                                          extra="timezone: Europe/Berlin\n")
                    + schedule("often", "every: 6h")}, base=False)
    config = load(root, None)
    spring = plan_notes(config, now=utc(2027, 3, 26, 12))
    assert spring[0] == ("schedule.nightly (30 2 * * *, Europe/Berlin; runs apply): next "
                         "2027-03-27 02:30 CET, 2027-03-28 03:00 CEST, 2027-03-29 02:30 CEST")
    assert spring[1] == ("  Warning: 2027-03-28 02:30 does not exist in Europe/Berlin (a "
                         "daylight saving gap): it fires at 03:00 CEST instead")
    autumn = plan_notes(config, now=utc(2027, 10, 29, 12))
    assert "2027-10-31 02:30 happens twice in Europe/Berlin" in autumn[1]
    quiet = plan_notes(config, now=utc(2027, 6, 1, 12))
    assert not any("Warning" in line for line in quiet)
    assert quiet[-1] == ("schedule.often (every 21600s, UTC; runs apply): next "
                         "2027-06-01 18:00 UTC, 2027-06-02 00:00 UTC, 2027-06-02 06:00 UTC")
    planned = cli("plan")
    assert planned.code == 0 and "schedule.nightly (30 2 * * *, Europe/Berlin" in planned.out


def test_a_fired_apply_is_named_after_its_instant_and_announced(
        project: Callable[..., Path], cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPS_SECRET", SECRET)
    with Receiver(SECRET) as receiver:
        root = project({
            "models/m.onnx": onnx_model(),
            "auto.yaml": schedule("hourly", 'cron: "0 * * * *"')
            + f"kind: Webhook\nname: ops\nurl: {receiver.url}\n"
              "secret: ${secret.OPS_SECRET}\nevents: [schedule.fired, model.*, apply.*]\n"})
        assert cli("apply", "--auto-approve").code == 0
        (root / "model.yaml").write_text("kind: Model\nname: m\nfrom: {path: models/m.onnx}\n")
        session = open_session(root, None, "agent", write=True)
        start = time.time() + 3600
        agent = Agent(session.config, session.store, ScheduledWork(session),
                      clock=lambda: start)
        try:
            first = agent.tick()
            again = agent.tick()
        finally:
            agent.close()
            session.close()
        instant = (int(start) // 3600) * 3600
        name = run_name("hourly", instant)
        assert first.fired == [name] and first.failed == []
        assert again.fired == []  # the same instant never runs twice
        assert json.loads(cli("models", "show", "m").out)["version"] == 1
        fired = receiver.of_type("schedule.fired")
        assert [f.data["run"] for f in fired] == [name]
        assert fired[0].data["instant"] == datetime.fromtimestamp(instant, UTC).strftime(
            "%Y-%m-%dT%H:%M:%S.000Z")
        [registered] = receiver.of_type("model.version_registered")
        assert registered.data["actor"] == {"kind": "schedule", "name": name}
        audit = open_session(root, None, "t", write=False)
        try:
            commands = {row[3] for row in audit.store.audit_log()}
        finally:
            audit.close()
        assert f"agent: {name}" in commands


def test_one_agent_per_stack_and_a_clean_stop_on_sigterm(
        project: Callable[..., Path], cli: Cli) -> None:
    root = project({"auto.yaml": schedule("daily", 'cron: "0 3 * * *"')}, base=False)
    assert cli("apply", "--auto-approve").code == 0
    agent = subprocess.Popen([MLINFRA, "agent"], cwd=root, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        second = cli("agent", "--once")
        while second.code == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
            second = cli("agent", "--once")
        assert second.code == 1
        assert "another agent runs for stack 'dev'" in second.err
        assert f"pid {agent.pid}" in second.err and "running 'agent'" in second.err
        # The stack's own lock is free: an apply runs beside the agent.
        assert cli("apply", "--auto-approve").code == 0
        agent.send_signal(signal.SIGTERM)
        out, err = agent.communicate(timeout=30)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, err
    assert "mlinfra agent: stopped" in out and "Traceback" not in err
    assert cli("agent", "--once").code == 0  # its lock went with it


def test_a_pipeline_schedule_retrains_on_the_latest_data(
        project: Callable[..., Path], cli: Cli) -> None:
    from mlinfra.events.schedules import FireLog

    root = project({
        "data/rows.csv": "x\n1\n",
        "train/train.py": ("import sys, shutil\nshutil.copy(sys.argv[1], sys.argv[2])\n"),
        "auto.yaml": """\
            kind: Data
            name: rows
            path: rows.csv
            ---
            kind: Environment
            name: py
            python: "3.11"
            requirements: []
            ---
            kind: Job
            name: copy
            code: ./train
            command: python train.py ${inputs.data} ${outputs.out}
            environment: py
            compute: cpu
            inputs: {data: rows}
            outputs: {out: out.csv}
            ---
            kind: Pipeline
            name: nightly
            steps:
              copy: {job: copy}
            ---
            kind: Schedule
            name: retrain
            cron: "0 4 * * *"
            run: {pipeline: nightly}
            """})
    assert cli("apply", "--auto-approve").code == 0
    runs_before = cli("runs", "list").out.count("completed")
    (root / "data" / "rows.csv").write_text("x\n1\n2\n")
    session = open_session(root, None, "agent", write=True)
    later = time.time() + 86400
    agent = Agent(session.config, session.store, ScheduledWork(session), clock=lambda: later)
    try:
        tick = agent.tick()
        fires = FireLog(session.store).fires("retrain")
    finally:
        agent.close()
        session.close()
    assert tick.failed == [] and len(tick.fired) == 1
    assert fires[0].status == "completed" and "added" in fires[0].detail
    assert cli("runs", "list").out.count("completed") > runs_before
    assert cli("plan", "--detailed-exitcode").code == 0  # the data version is applied


@pytest.mark.parametrize("catchup", [False, True])
def test_catchup_fires_every_missed_instant_or_only_the_newest(
        project: Callable[..., Path], cli: Cli, catchup: bool) -> None:
    root = project({"auto.yaml": schedule("h", 'cron: "0 * * * *"',
                                          extra=f"catchup: {str(catchup).lower()}\n")},
                   base=False)
    assert cli("apply", "--auto-approve").code == 0
    start = time.time()
    fired = fired_over(root, start + 5 * 3600, start + 5 * 3600)
    assert len(fired) == (5 if catchup else 1)


def test_the_agent_runs_a_monitor_on_its_schedule_and_its_breach_is_delivered(
        project: Callable[..., Path], cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    from tests.test_monitoring import DATA_MONITOR, named_model, reference_csv

    monkeypatch.setenv("OPS_SECRET", SECRET)
    with Receiver(SECRET) as receiver:
        rng = np.random.default_rng(9)
        root = project({
            "models/fraud.onnx": named_model(), "data/reference.csv": reference_csv(rng),
            "data/production.csv": reference_csv(rng, 1000), "monitor.yaml": DATA_MONITOR,
            "auto.yaml": schedule("watch", 'cron: "0 * * * *"', "{monitor: batch-watch}")
            + f"kind: Webhook\nname: ops\nurl: {receiver.url}\n"
              "secret: ${secret.OPS_SECRET}\nevents: ['monitor.*', schedule.fired]\n"})
        applied = cli("apply", "--auto-approve")
        assert applied.code == 0, applied.err

        def tick(hours: int) -> list[str]:
            session = open_session(root, None, "agent", write=True)
            at = time.time() + hours * 3600
            agent = Agent(session.config, session.store, ScheduledWork(session),
                          clock=lambda: at)
            try:
                done = agent.tick()
            finally:
                agent.close()
                session.close()
            assert done.failed == [], done.failed
            return done.fired

        assert len(tick(1)) == 1  # calm production data: a window, no breach
        assert receiver.of_type("monitor.breached") == []
        shifted = reference_csv(np.random.default_rng(10), 1000).splitlines()
        moved = [shifted[0]] + [f"{float(a) + 15:.3f},{b},{y}" for a, b, y in
                                (line.split(",") for line in shifted[1:])]
        (root / "data" / "production.csv").write_text("\n".join(moved) + "\n")
        assert len(tick(2)) == 1
        [breach] = receiver.of_type("monitor.breached")
        assert breach.data["monitor"] == "batch-watch" and breach.subject == "monitor.batch-watch"
        assert any(key.endswith(":amount") for key in breach.data["signals"])
        assert breach.data["actor"]["kind"] == "schedule"
        assert breach.data["actor"]["name"].startswith("watch-")
        assert len(receiver.of_type("schedule.fired")) == 2 and receiver.bad == []

"""The agent: one process per stack that fires due schedules and delivers the outbox.

It holds the stack's agent lock (a lock of its own, beside the stack's: a second agent
names the holder and stops) for as long as it runs, and takes the stack's lock only
while a fired schedule writes (an apply, a pipeline, a monitor). Delivering touches
only the outbox's rows, under leases, so it never waits for an apply. SIGTERM stops it
between two steps: what was sent is recorded, nothing is cut in half.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.events.outbox import EventOutbox
from mlinfra.events.schedules import FireLog, ScheduleSpec, schedules_of
from mlinfra.events.webhooks import Deliverer, Sent
from mlinfra.spec.model import Config
from mlinfra.state.lock import LockHeld
from mlinfra.state.store import StateStore

# What runs a fired schedule: (schedule, run name, instant) -> what it did, for a person.
Work = Callable[[ScheduleSpec, str, float], str]
# How often a waiting agent looks for new events in the outbox (one indexed read), and
# the longest it waits before it reads its schedules and webhooks' state again.
POLL_S = 0.1
IDLE_S = 30.0


def agent_lock_name(stack: str) -> str:
    return f"{stack}#agent"


def applied_since(store: StateStore, kind: str) -> dict[str, float]:
    """The applied resources of `kind` (name -> the `since` their handler recorded)."""
    prefix = kind.lower() + "."
    return {state.name: float(state.outputs.get("since", 0))
            for address, state in store.resources().items()
            if address.startswith(prefix) and state.kind == kind}


def deliverer(config: Config, store: StateStore,
              clock: Callable[[], float] = time.time) -> Deliverer:
    outbox = EventOutbox(store)
    # A webhook that took events once keeps taking them, also once a destroy removed
    # it from the state (the destroy's own events reach it).
    since = dict.fromkeys(outbox.webhook_names(), 0)
    since.update({name: int(at) for name, at in applied_since(store, "Webhook").items()})
    return Deliverer(config, outbox, since, clock=clock)


def flush(config: Config, store: StateStore, budget_s: float = 3.0) -> Sent | None:
    """Deliver what is due now, for at most `budget_s` (what a command that wrote does
    before it exits); None when the stack has no webhook. Never raises for a receiver's
    fault: a delivery that fails is retried later."""
    if not config.of("Webhook") or store.readonly:
        return None
    sender = deliverer(config, store)
    try:
        return sender.run(deadline=time.time() + budget_s)
    finally:
        sender.close()


@dataclass
class Tick:
    """What one pass of the agent did."""

    fired: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    sent: Sent = field(default_factory=Sent)


class Agent:
    def __init__(self, config: Config, store: StateStore, work: Work,
                 clock: Callable[[], float] = time.time,
                 log: Callable[[str], None] = lambda _: None) -> None:
        self.config, self.store, self.work = config, store, work
        self.clock, self.log = clock, log
        self.schedules = schedules_of(config)
        self.fires = FireLog(store)
        self.deliver = deliverer(config, store, clock)
        self.stop = threading.Event()

    # --- one pass -----------------------------------------------------------------

    def tick(self) -> Tick:
        """Fire what is due, then deliver what is due."""
        done = Tick()
        applied = applied_since(self.store, "Schedule")
        for name, spec in self.schedules.items():
            if self.stop.is_set():
                break
            if name not in applied:
                continue  # declared, not applied yet
            self._fire(spec, applied[name], done)
        if not self.stop.is_set():
            done.sent = self.deliver.run(deadline=None)
            for line in done.sent.lines:
                self.log(line)
        return done

    def _fire(self, spec: ScheduleSpec, created: float, done: Tick) -> None:
        now = self.clock()
        last = self.fires.last(spec.name)
        since = max(created, last if last is not None else created)
        for instant in spec.due(since, now):
            if self.stop.is_set():
                return
            if spec.overlap == "forbid":
                busy = self.fires.running(spec.name)
                if busy is not None:
                    done.skipped.append(f"{spec.name}: {busy.run_name} is still running "
                                        "(overlap: forbid)")
                    return
            name = self.fires.start(spec, instant)
            if name is None:
                continue  # another agent (or an earlier try) fired this instant
            self.log(f"schedule.{spec.name}: fired {name} ({spec.what()})")
            try:
                what = self.work(spec, name, instant)
            except Exception as err:  # one schedule failing never stops the agent
                message = err.message if isinstance(err, MlinfraError) else (
                    f"{type(err).__name__}: {err}")
                self.fires.finish(spec.name, instant, "failed", message)
                done.failed.append(f"{name}: {message}")
                self.log(f"schedule.{spec.name}: {name} failed: {message}")
                continue
            self.fires.finish(spec.name, instant, "completed", what)
            done.fired.append(name)
            self.log(f"schedule.{spec.name}: {name} done: {what}")

    def next_wake(self) -> float:
        """When something is due: the next fire or retry, at most IDLE_S away."""
        now = self.clock()
        wake = now + IDLE_S
        applied = applied_since(self.store, "Schedule")
        for name, spec in self.schedules.items():
            if name in applied:
                wake = min(wake, spec.after(now).timestamp())
        due = self.deliver.next_due()
        if due is not None:
            wake = min(wake, due)
        return max(now, wake)

    # --- running --------------------------------------------------------------------

    def locked(self) -> Any:
        """The agent lock for the block; LockHeld naming the holder when another agent
        has it."""
        from contextlib import contextmanager

        stack = str(self.store.origin.get("stack", ""))

        @contextmanager
        def hold() -> Any:
            lock_id, holder = self.store.try_lock(agent_lock_name(stack), "agent")
            if lock_id is None:
                assert holder is not None
                raise LockHeld(f"another agent runs for stack '{stack}': "
                               f"{holder.describe()}. One agent per stack works at a time.")
            try:
                yield lock_id
            finally:
                self.store.release_lock(agent_lock_name(stack), lock_id)

        return hold()

    def run_forever(self) -> None:
        """Tick until `stop` is set (SIGTERM, Ctrl-C): again when a fire or a retry is
        due, or as soon as a new event is in the outbox."""
        outbox = self.deliver.outbox
        while not self.stop.is_set():
            head = outbox.head()  # before the tick: what arrives during it wakes the next
            self.tick()
            wake = self.next_wake()
            while not self.stop.is_set() and self.clock() < wake and outbox.head() == head:
                self.stop.wait(POLL_S)

    def close(self) -> None:
        self.deliver.close()

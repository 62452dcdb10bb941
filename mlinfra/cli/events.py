"""mlinfra events and mlinfra agent: the outbox, webhook deliveries and schedules."""

from __future__ import annotations

import argparse
import json
import signal
from typing import Any

from mlinfra.cli.console import echo, echo_err, emit, print_table, session_for, when


def cmd_events(args: argparse.Namespace) -> int:
    from mlinfra.events.outbox import EventOutbox, as_json, describe
    from mlinfra.events.webhooks import webhooks_of

    command = args.events_command
    session = session_for(args, f"events {command}", write=command == "redeliver")
    try:
        outbox = EventOutbox(session.store)
        if command == "list":
            events = outbox.events(args.limit, failed=args.failed)
            deliveries = outbox.summary([e.event_id for e in events])
            if args.json:
                echo(json.dumps([{**e.envelope, "seq": e.seq,
                                  "deliveries": [as_json(d) for d in deliveries[e.event_id]]}
                                 for e in events], indent=2, default=str))
                return 0
            rows = [[str(e.seq), e.event_id[:8], when(e.at), e.type, e.subject,
                     "; ".join(f"{d.webhook}: {describe(d)}" for d in deliveries[e.event_id])
                     or "-"] for e in events]
            print_table(["SEQ", "ID", "TIME", "TYPE", "SUBJECT", "DELIVERIES"], rows)
            return 0
        event = outbox.find(args.event_id)
        if command == "show":
            echo(json.dumps({**event.envelope, "deliveries": [
                as_json(d) for d in outbox.deliveries(event.event_id)]}, indent=2,
                default=str))
            return 0
        hooks = {name: hook.events for name, hook in webhooks_of(session.config).items()}
        names = outbox.redeliver(event, hooks)
        if not names:
            echo_err(f"no webhook of stack '{session.stack}' subscribes to {event.type}")
            return 1
        echo(f"{event.event_id} ({event.type}) will be delivered again to "
             f"{', '.join(names)}")
        return 0
    finally:
        session.close()


def cmd_agent(args: argparse.Namespace) -> int:
    import threading

    from mlinfra.events.agent import Agent
    from mlinfra.scheduled import ScheduledWork

    session = session_for(args, "agent", write=True)
    agent = Agent(session.config, session.store, ScheduledWork(session, args.lock_timeout),
                  log=lambda line: emit(line, "dim"))
    try:
        with agent.locked():
            if args.once:
                return _report(agent.tick())
            stopped = threading.Event()

            def stop(signum: int, _: Any) -> None:
                agent.stop.set()
                stopped.set()

            signal.signal(signal.SIGTERM, stop)
            signal.signal(signal.SIGINT, stop)
            agent.deliver.prepare()
            emit(f"mlinfra agent: stack '{session.stack}', {len(agent.schedules)} "
                 f"schedule(s), {len(agent.deliver.webhooks)} webhook(s); SIGTERM stops it",
                 "bold")
            agent.run_forever()
            emit("mlinfra agent: stopped", "bold")
            return 0
    finally:
        agent.close()
        session.close()


def _report(tick: Any) -> int:
    for name in tick.fired:
        echo(f"fired {name}")
    for line in tick.skipped:
        echo(f"skipped {line}")
    for line in tick.failed:
        echo_err(f"failed {line}")
    sent = tick.sent
    echo(f"events: {sent.delivered} delivered, {sent.retried} to retry, {sent.failed} "
         f"dead-lettered, {sent.waiting} waiting")
    return 1 if tick.failed else 0

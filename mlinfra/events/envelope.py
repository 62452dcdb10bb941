"""Making events outside a unit of work: `emit` inside a write transaction of the store
(the change's own), `announce` in one of its own, for an event that is itself the
change (an apply's end, a rollout's step). Inside apply, handlers stage events on the
engine's unit of work (`writer.emit(type, subject, data)`); both end in
`StateStore.record_events`, which gives each its CloudEvents envelope (`mlinfra.state.
cloudevents`) and writes it into the outbox."""

from __future__ import annotations

import time
from typing import Any

from mlinfra.state.cloudevents import outbox_row, rfc3339, with_see
from mlinfra.state.model import OutboxEvent
from mlinfra.state.store import Cursor, StateStore
from mlinfra.state.work import Event

__all__ = ["announce", "build", "emit", "rfc3339", "with_see"]


def build(store: StateStore, event_type: str, subject: str, data: dict[str, Any],
          see: str = "", at: float | None = None) -> OutboxEvent:
    """One event of the catalog, as the outbox keeps it."""
    event = Event(event_type, subject, with_see(data, see), time.time() if at is None else at)
    return outbox_row(store.origin, event)


def emit(store: StateStore, cur: Cursor, event_type: str, subject: str,
         data: dict[str, Any], see: str = "") -> None:
    """Within a write transaction of `store`: the event joins the outbox with it."""
    store.record_events(cur, [Event(event_type, subject, with_see(data, see), time.time())])


def announce(store: StateStore, event_type: str, subject: str, data: dict[str, Any],
             see: str = "") -> None:
    """An event in a transaction of its own (the event is the change), by the engine's
    hand."""
    store.write_now(lambda cur: emit(store, cur, event_type, subject, data, see))

"""The unit of work: what one handler call changes in the state, staged until the engine
commits it with the resource's change and its journal entry, in one transaction.

A handler never writes the state itself (Terraform's providers never do; the engine
records what they return). The domain's writers (data versions, model versions,
aliases, tags, decisions, audit rows, events) take a `Writer`: a `UnitOfWork` stages
their writes, a `StateStore` (outside apply: `mlinfra models alias`, a test) writes at
once. What must be visible while the handler runs (a run's process and owner, so that
an orphan is always found; an operation's steps) is written through `now()` and
`step()`, which the engine owns too.

Events: `emit(type, subject, data)` stages one; they are written in the same
transaction through `StateStore.record_events`, the one place that knows where events
go (the outbox).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, TypeVar

if TYPE_CHECKING:
    from mlinfra.state.store import Cursor, StateStore

T = TypeVar("T")
Write = Callable[["Cursor"], Any]


class Event(NamedTuple):
    """Something that happened, for whoever listens (webhooks, the agent): `type` from
    the event catalog (`model.promoted`), `subject` the address it is about."""

    type: str
    subject: str
    data: dict[str, Any]
    at: float


class Step(NamedTuple):
    """One step of a journaled operation, in order: `name` says what was done (or is
    about to be), `data` what recovery needs to resume or undo it."""

    seq: int
    name: str
    data: dict[str, Any]
    at: float


class Writer(Protocol):
    """Where a domain writer's changes go."""

    @property
    def store(self) -> StateStore: ...

    def write(self, fn: Write) -> None:
        """Run `fn(cursor)` in the transaction that records the change (staged), or in
        one of its own (a store outside apply)."""
        ...

    def number(self, table: str, name: str, content: str) -> tuple[int, bool]:
        """The version number of `content` for `name` in a numbered table (models,
        data_versions): (the existing or staged one, False) or (the next one, True)."""
        ...

    def emit(self, type: str, subject: str, data: dict[str, Any]) -> None: ...


class UnitOfWork:
    """The writes of one handler call, staged; `commit` runs them within the engine's
    transaction. Invariant: nothing staged is visible in the state before that
    transaction commits, and all of it is after: a kill at any instant leaves all or
    none. Numbers handed out by `number` stay reserved in this process until the unit
    commits or is discarded, so two units never stage the same version."""

    def __init__(self, store: StateStore, journal_id: int | None, address: str) -> None:
        self._store, self.journal_id, self.address = store, journal_id, address
        self.writes: list[Write] = []
        self.events: list[Event] = []
        # Written whether the change succeeds or fails (a rolled-back rollout's
        # decision): see `always`.
        self.kept: list[Write] = []
        self.kept_events: list[Event] = []
        self._numbers: dict[tuple[str, str], dict[str, int]] = {}
        self._lock = threading.Lock()

    @property
    def store(self) -> StateStore:
        return self._store

    def write(self, fn: Write) -> None:
        with self._lock:
            self.writes.append(fn)

    def emit(self, type: str, subject: str, data: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(Event(type, subject, dict(data), time.time()))

    def always(self) -> Writer:
        """A writer whose writes commit even when the change fails: a decision that
        the failure itself is (a rollout rolled back), committed with the failure."""
        return _Always(self)

    def staged_number(self, table: str, name: str, content: str) -> int | None:
        return self._numbers.get((table, name), {}).get(content)

    def number(self, table: str, name: str, content: str) -> tuple[int, bool]:
        with self._lock:
            mine = self._numbers.setdefault((table, name), {})
            if content in mine:
                return mine[content], False
            found = self._store.numbered(table, name, content)
            if found is not None:
                return found, False
            mine[content] = self._store.reserve_number(table, name)
            return mine[content], True

    def now(self, fn: Callable[[Cursor], T]) -> T:
        """A write that must be visible while the handler still runs (a run's process,
        so that an orphan is found after a kill): committed at once, by the engine's
        hand."""
        return self._store.write_now(fn)

    def step(self, name: str, data: dict[str, Any] | None = None,
             also: Write | None = None) -> None:
        """Record the next step of this change's operation in the journal, at once;
        `also` runs in the same transaction (the resource's state as the step left it)."""
        if self.journal_id is None:
            if also is not None:
                self._store.write_now(also)
            return
        self._store.add_step(self.journal_id, name, data or {}, also)

    def steps(self) -> list[Step]:
        return self._store.steps(self.journal_id) if self.journal_id is not None else []

    def commit(self, cur: Cursor, failed: bool = False) -> None:
        """Within the engine's transaction: every staged write, then the events; for a
        change that failed, only what was staged through `always`."""
        for fn in self.kept if failed else [*self.writes, *self.kept]:
            fn(cur)
        events = self.kept_events if failed else [*self.events, *self.kept_events]
        if events:
            self._store.record_events(cur, events)

    def release(self) -> None:
        """The numbers this unit reserved are free again (committed or discarded)."""
        for (table, name), numbers in self._numbers.items():
            self._store.release_numbers(table, name, set(numbers.values()))


class _Always:
    """`UnitOfWork.always()`."""

    def __init__(self, work: UnitOfWork) -> None:
        self.work = work

    @property
    def store(self) -> StateStore:
        return self.work.store

    def write(self, fn: Write) -> None:
        with self.work._lock:
            self.work.kept.append(fn)

    def number(self, table: str, name: str, content: str) -> tuple[int, bool]:
        return self.work.number(table, name, content)

    def emit(self, type: str, subject: str, data: dict[str, Any]) -> None:
        with self.work._lock:
            self.work.kept_events.append(Event(type, subject, dict(data), time.time()))


def event_json(event: Event) -> str:
    return json.dumps({"type": event.type, "subject": event.subject, "data": event.data,
                       "at": event.at}, sort_keys=True, default=str)

"""The outbox and its deliveries, in the state store.

Events are rows of `outbox`, written in the transactions of their changes. Each
webhook takes the events after its cursor (`webhooks.taken`) that it subscribes to as
`deliveries` rows; a delivery is claimed with a lease before it is sent, so two
processes (the agent, and a command's flush) never send it at once, and a process
killed mid-send leaves it to be sent again when the lease ends (at least once). Every
SQL statement of the outbox is here.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.events.catalog import wanted
from mlinfra.state.store import StateStore, row_json, upsert

# pending: to be sent (or waiting, with last_error saying why); delivered: the
# receiver answered 2xx; failed: dead-lettered (no more tries; `events redeliver`).
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
# How long a claimed delivery is held by the process sending it.
LEASE_S = 60.0

_DELIVERY = ("event_id", "webhook", "status", "attempts", "first_try_at", "next_at",
             "lease_until", "last_status", "last_error", "delivered_at")


@dataclass(frozen=True)
class Delivery:
    """One event for one webhook: its tries and outcome."""

    event_id: str
    webhook: str
    status: str
    attempts: int
    first_try_at: float | None
    next_at: float
    lease_until: float
    last_status: int | None
    last_error: str
    delivered_at: float | None


@dataclass(frozen=True)
class StoredEvent:
    """An event of the outbox: its sequence number, id, type, subject, time, envelope."""

    seq: int
    event_id: str
    type: str
    subject: str
    at: float
    envelope: dict[str, Any]


class EventOutbox:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    # --- events ------------------------------------------------------------------

    def head(self) -> int:
        """The sequence number of the newest event (0: none yet)."""
        rows = self.store.query("SELECT MAX(id) FROM outbox")
        return int(rows[0][0] or 0) if rows else 0

    def events(self, limit: int = 50, failed: bool = False) -> list[StoredEvent]:
        """The newest events first; `failed`: only those with a dead-lettered delivery."""
        where = ("WHERE event_id IN (SELECT event_id FROM deliveries WHERE status='failed')"
                 if failed else "")
        rows = self.store.query(f"SELECT id, event_id, type, subject, at, envelope FROM outbox "
                                f"{where} ORDER BY id DESC LIMIT ?", (limit,))
        return [_event(row) for row in rows]

    def find(self, text: str) -> StoredEvent:
        """An event by its id, a unique prefix of it (8 characters or more, as `events
        list` shows them), or its sequence number (a shorter number: an id's first
        characters may all be digits)."""
        if text.isdigit() and len(text) < 8:
            rows = self.store.query("SELECT id, event_id, type, subject, at, envelope FROM "
                                    "outbox WHERE id=?", (int(text),))
        else:
            rows = self.store.query("SELECT id, event_id, type, subject, at, envelope FROM "
                                    "outbox WHERE event_id LIKE ? ORDER BY id LIMIT 2",
                                    (text.replace("%", "") + "%",))
        if not rows:
            raise MlinfraError(f"no event '{text}': mlinfra events list shows them")
        if len(rows) > 1:
            raise MlinfraError(f"'{text}' names more than one event: give more of its id")
        return _event(rows[0])

    def deliveries(self, event_id: str | None = None) -> list[Delivery]:
        where, args = ("WHERE event_id=?", (event_id,)) if event_id else ("", ())
        rows = self.store.query(f"SELECT {', '.join(_DELIVERY)} FROM deliveries {where} "
                                "ORDER BY webhook", args)
        return [Delivery(*row) for row in rows]

    def summary(self, event_ids: list[str]) -> dict[str, list[Delivery]]:
        found: dict[str, list[Delivery]] = {e: [] for e in event_ids}
        if not event_ids:
            return found
        marks = ", ".join("?" * len(event_ids))
        for row in self.store.query(f"SELECT {', '.join(_DELIVERY)} FROM deliveries WHERE "
                                    f"event_id IN ({marks})", event_ids):
            found[row[0]].append(Delivery(*row))
        return found

    # --- webhooks take events ----------------------------------------------------

    def take(self, subscriptions: dict[str, tuple[list[str], int]],
             now: float | None = None) -> int:
        """Each webhook (name -> (its `events:` patterns, the sequence number it starts
        after when new)) takes the events past its cursor that it subscribes to, as
        pending deliveries; returns how many were added."""
        now = time.time() if now is None else now
        added = 0
        with self.store.transaction() as cur:
            head = int(cur.execute("SELECT MAX(id) FROM outbox").fetchone()[0] or 0)
            for name, (patterns, since) in subscriptions.items():
                row = cur.execute("SELECT taken FROM webhooks WHERE name=?",
                                  (name,)).fetchone()
                taken = int(row[0]) if row is not None else since
                if row is None:
                    cur.execute("INSERT INTO webhooks (name, taken) VALUES (?, ?)",
                                (name, taken))
                if taken >= head:
                    continue
                rows = cur.execute("SELECT event_id, type FROM outbox WHERE id > ? AND "
                                   "id <= ? ORDER BY id", (taken, head)).fetchall()
                new = [(event_id, name, PENDING, now) for event_id, kind in rows
                       if wanted(patterns, kind)]
                cur.executemany("INSERT INTO deliveries (event_id, webhook, status, next_at) "
                                "VALUES (?, ?, ?, ?) ON CONFLICT (event_id, webhook) "
                                "DO NOTHING", new)
                cur.execute("UPDATE webhooks SET taken=? WHERE name=?", (head, name))
                added += len(new)
        return added

    def claim(self, webhooks: list[str], limit: int = 100,
              now: float | None = None) -> list[tuple[Delivery, StoredEvent]]:
        """Due pending deliveries of these webhooks, oldest first, leased to this
        process for LEASE_S."""
        now = time.time() if now is None else now
        if not webhooks:
            return []
        marks = ", ".join("?" * len(webhooks))
        columns = ", ".join(f"d.{c}" for c in _DELIVERY)
        with self.store.transaction() as cur:
            rows = cur.execute(
                f"SELECT {columns}, o.id, o.event_id, o.type, o.subject, o.at, o.envelope "
                "FROM deliveries d JOIN outbox o ON o.event_id = d.event_id "
                f"WHERE d.status='pending' AND d.next_at <= ? AND d.lease_until <= ? "
                f"AND d.webhook IN ({marks}) ORDER BY o.id LIMIT ?",
                (now, now, *webhooks, limit)).fetchall()
            cur.executemany("UPDATE deliveries SET lease_until=? WHERE event_id=? AND "
                            "webhook=?", [(now + LEASE_S, r[0], r[1]) for r in rows])
        n = len(_DELIVERY)
        return [(Delivery(*row[:n]), _event(tuple(row[n:]))) for row in rows]

    def next_due(self, webhooks: list[str]) -> float | None:
        """When the next pending delivery of these webhooks is due (None: none)."""
        if not webhooks:
            return None
        marks = ", ".join("?" * len(webhooks))
        rows = self.store.query("SELECT MIN(CASE WHEN lease_until > next_at THEN lease_until "
                                "ELSE next_at END) FROM deliveries WHERE status='pending' "
                                f"AND webhook IN ({marks})", webhooks)
        return float(rows[0][0]) if rows and rows[0][0] is not None else None

    def settle(self, delivery: Delivery, status: str, *, http_status: int | None,
               error: str, next_at: float, counted: bool = True,
               now: float | None = None) -> None:
        """Record a try's outcome: delivered, failed (dead letter), or pending again at
        `next_at`; `counted` False: nothing was sent (a missing secret), so it is no try."""
        self.settle_many([outcome(delivery, status, http_status=http_status, error=error,
                                  next_at=next_at, counted=counted, now=now)])

    def settle_many(self, outcomes: list[tuple[Any, ...]]) -> None:
        """Record several tries' outcomes (`outcome(...)`) in one transaction."""
        if not outcomes:
            return
        with self.store.transaction() as cur:
            cur.executemany("UPDATE deliveries SET status=?, attempts=attempts+?, "
                            "first_try_at=COALESCE(first_try_at, ?), next_at=?, "
                            "lease_until=0, last_status=?, last_error=?, delivered_at=? "
                            "WHERE event_id=? AND webhook=?", outcomes)

    def redeliver(self, event: StoredEvent, webhooks: dict[str, list[str]]) -> list[str]:
        """Send `event` again to every webhook (name -> patterns) that subscribes to it,
        whatever became of it before; returns their names."""
        names = [name for name, patterns in webhooks.items() if wanted(patterns, event.type)]
        with self.store.transaction() as cur:
            for name in names:
                cur.execute(upsert("deliveries", ("event_id", "webhook", "status", "attempts",
                                                  "first_try_at", "next_at", "lease_until",
                                                  "last_status", "last_error",
                                                  "delivered_at"), ("event_id", "webhook")),
                            (event.event_id, name, PENDING, 0, None, time.time(), 0, None,
                             "", None))
        return names

    # --- a webhook disabled by 410 Gone -------------------------------------------

    def webhook_names(self) -> list[str]:
        """The webhooks that have taken events."""
        return [str(row[0]) for row in self.store.query("SELECT name FROM webhooks")]

    def disabled(self) -> dict[str, str]:
        """Webhooks a receiver disabled (410): name -> the reason, which names the URL."""
        return {str(name): str(reason) for name, reason in self.store.query(
            "SELECT name, disabled_reason FROM webhooks WHERE disabled_at IS NOT NULL")}

    def disable(self, name: str, reason: str) -> None:
        with self.store.transaction() as cur:
            cur.execute("UPDATE webhooks SET disabled_at=?, disabled_reason=? WHERE name=?",
                        (time.time(), reason, name))

    def enable(self, name: str) -> None:
        with self.store.transaction() as cur:
            cur.execute("UPDATE webhooks SET disabled_at=NULL, disabled_reason='' "
                        "WHERE name=?", (name,))


def outcome(delivery: Delivery, status: str, *, http_status: int | None, error: str,
            next_at: float, counted: bool = True,
            now: float | None = None) -> tuple[Any, ...]:
    """One try's outcome, as `settle_many` records it."""
    now = time.time() if now is None else now
    return (status, 1 if counted else 0, now if counted else None, next_at, http_status,
            error[:2000], now if status == DELIVERED else None, delivery.event_id,
            delivery.webhook)


def _event(row: tuple[Any, ...]) -> StoredEvent:
    envelope = row_json(row[5], f"outbox event {row[1]}")
    return StoredEvent(int(row[0]), str(row[1]), str(row[2]), str(row[3]), float(row[4]),
                       envelope if isinstance(envelope, dict) else {})


def describe(delivery: Delivery) -> str:
    """A delivery's state for a person."""
    if delivery.status == DELIVERED:
        return f"delivered (HTTP {delivery.last_status}, try {delivery.attempts})"
    if delivery.status == FAILED:
        return f"failed after {delivery.attempts} tries: {delivery.last_error}"
    if delivery.last_error:
        at = time.strftime("%H:%M:%S", time.localtime(delivery.next_at))
        return (f"waiting, next try at {at} ({delivery.attempts} tries so far): "
                f"{delivery.last_error}")
    return "pending"


def as_json(delivery: Delivery) -> dict[str, Any]:
    return {k: getattr(delivery, k) for k in _DELIVERY if k != "lease_until"}


def dumps(value: Any) -> str:
    return json.dumps(value, indent=2, default=str)

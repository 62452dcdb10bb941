"""Webhooks: events delivered over HTTP, signed as Standard Webhooks specifies.

A delivery is a POST of the event (a CloudEvents 1.0 JSON envelope, or a Slack
incoming-webhook message) with `webhook-id` (the event's id, the same on every try),
`webhook-timestamp` and `webhook-signature: v1,<base64 HMAC-SHA256 of
"id.timestamp.body">`. It is retried with exponential backoff and jitter for up to
`retry.for` (24 h) on 5xx, 408, 429 (waiting at least its Retry-After) and connection
errors, never on another 4xx; 410 Gone disables the webhook (for that URL); after the
last try the event is dead-lettered (`mlinfra events list --failed`). 10 s per try.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

from mlinfra.events.outbox import (
    DELIVERED,
    FAILED,
    PENDING,
    Delivery,
    EventOutbox,
    StoredEvent,
    outcome,
)
from mlinfra.spec import sensitive
from mlinfra.spec.model import Config, duration_s

if TYPE_CHECKING:
    import httpx

TRY_TIMEOUT_S = 10.0
# Outcomes written in one transaction: a crash sends at most these again (at least once).
SETTLE_EVERY = 20
# A missing secret is looked for again after this long.
SECRET_RETRY_S = 60.0
_RETRIED = {408, 429}


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter: try n waits first_s * 2**(n-1), at most max_s,
    times a random factor in [0.5, 1); no try starts later than for_s after the first."""

    first_s: float = 5.0
    max_s: float = 3600.0
    for_s: float = 86400.0

    def delay(self, attempts: int, rng: Callable[[], float] = random.random) -> float:
        base = min(self.max_s, self.first_s * 2 ** max(0, attempts - 1))
        return float(base * (0.5 + rng() / 2))


@dataclass(frozen=True)
class WebhookSpec:
    """A `kind: Webhook` as delivery needs it (secret still a reference)."""

    name: str
    url: str
    secret: str | None
    events: list[str]
    format: str = "cloudevents"
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @classmethod
    def of(cls, name: str, spec: dict[str, Any]) -> WebhookSpec:
        retry = spec.get("retry") or {}
        policy = RetryPolicy(first_s=duration_s(retry.get("first", 5)) or 5.0,
                             max_s=duration_s(retry.get("max", "1h")) or 3600.0,
                             for_s=duration_s(retry.get("for", "24h")) or 86400.0)
        secret = spec.get("secret")
        return cls(name, str(spec["url"]), str(secret) if secret else None,
                   [str(e) for e in spec.get("events") or ["*"]],
                   str(spec.get("format", "cloudevents")), policy)


def webhooks_of(config: Config) -> dict[str, WebhookSpec]:
    return {name: WebhookSpec.of(name, res.spec)
            for name, res in sorted(config.of("Webhook").items())}


# --- signing (Standard Webhooks) ---------------------------------------------------------

def signing_key(secret: str) -> bytes:
    """The key as Standard Webhooks' libraries read a secret: base64, after an optional
    `whsec_` prefix (so a receiver verifying with one of them agrees); text that holds
    no base64 at all is the key's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_") + "==")
    return key or secret.encode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header's value: `v1,<base64 HMAC-SHA256>`."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    mac = hmac.new(signing_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def body_of(event: StoredEvent, fmt: str) -> tuple[bytes, str]:
    """The request body and its content type, in the webhook's format."""
    if fmt == "slack":
        data = event.envelope.get("data") or {}
        facts = ", ".join(f"{k}: {v}" for k, v in data.items()
                          if k not in ("project", "stack", "address", "actor", "see", "commit")
                          and isinstance(v, str | int | float) and v != "")
        text = (f"*{event.type}* {event.subject} on {data.get('project')}/"
                f"{data.get('stack')}" + (f" ({facts})" if facts else "")
                + (f"\n`{data['see']}`" if data.get("see") else ""))
        return json.dumps({"text": text}).encode(), "application/json"
    return (json.dumps(event.envelope, separators=(",", ":")).encode(),
            "application/cloudevents+json; charset=utf-8")


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds a Retry-After header asks to wait (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError):
        return None


# --- delivering ---------------------------------------------------------------------------

@dataclass
class Sent:
    """What the deliveries of one pass did."""

    delivered: int = 0
    retried: int = 0
    failed: int = 0
    waiting: int = 0
    lines: list[str] = field(default_factory=list)


class Deliverer:
    """Takes new events for the stack's webhooks and sends what is due.

    `since` says where a webhook that has taken nothing yet starts: the outbox's
    sequence number its resource recorded when it was created (events before it are
    not sent to it). A webhook declared but never applied takes nothing; one that took
    events once goes on taking them (a destroy's own events reach it).
    """

    def __init__(self, config: Config, outbox: EventOutbox, since: dict[str, int],
                 clock: Callable[[], float] = time.time,
                 rng: Callable[[], float] = random.random) -> None:
        self.config, self.outbox, self.since = config, outbox, since
        self.clock, self.rng = clock, rng
        self.webhooks = {n: w for n, w in webhooks_of(config).items() if n in since}
        self._client: httpx.Client | None = None
        self._outcomes: list[tuple[Any, ...]] = []

    def _settle(self, delivery: Delivery, status: str, **kw: Any) -> None:
        """Record a try's outcome: kept, and written with others (SETTLE_EVERY at once),
        so that a delivery costs a POST, not a POST and a commit."""
        self._outcomes.append(outcome(delivery, status, **kw))
        if len(self._outcomes) >= SETTLE_EVERY or status == FAILED:
            self._write_outcomes()

    def _write_outcomes(self) -> None:
        self.outbox.settle_many(self._outcomes)
        self._outcomes = []

    def close(self) -> None:
        self._write_outcomes()
        if self._client is not None:
            self._client.close()
            self._client = None

    def prepare(self) -> None:
        """Make the HTTP client now (a long-running agent), not at the first event."""
        if self.webhooks:
            self._http()

    def _http(self) -> httpx.Client:
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=TRY_TIMEOUT_S, follow_redirects=False,
                                        headers={"user-agent": "mlinfra-webhooks"})
        return self._client

    def active(self) -> list[str]:
        """The webhooks that deliver: applied, and not disabled for their URL."""
        disabled = self.outbox.disabled()
        names = []
        for name, hook in self.webhooks.items():
            reason = disabled.get(name)
            if reason is not None and hook.url not in reason:
                self.outbox.enable(name)  # its URL changed since a 410
                reason = None
            if reason is None:
                names.append(name)
        return names

    def run(self, deadline: float | None = None, limit: int = 100) -> Sent:
        """One pass: take new events, send what is due (until `deadline`, a clock time)."""
        sent = Sent()
        self.outbox.take({n: (w.events, self.since[n]) for n, w in self.webhooks.items()},
                         now=self.clock())
        names = self.active()
        while True:
            if deadline is not None and self.clock() >= deadline:
                self._write_outcomes()
                return sent
            self._write_outcomes()
            batch = self.outbox.claim(names, limit, now=self.clock())
            if not batch:
                return sent
            for delivery, event in batch:
                if delivery.webhook not in names or (
                        deadline is not None and self.clock() >= deadline):
                    # not tried (out of time, or its webhook was just disabled): as it was
                    self._settle(delivery, PENDING, http_status=delivery.last_status,
                                       error=delivery.last_error, next_at=delivery.next_at,
                                       counted=False, now=self.clock())
                    continue
                if not self._deliver(delivery, event, sent, deadline):
                    names = [n for n in names if n != delivery.webhook]
            if not names:
                self._write_outcomes()
                return sent

    def next_due(self) -> float | None:
        return self.outbox.next_due(self.active())

    def _deliver(self, delivery: Delivery, event: StoredEvent, sent: Sent,
                 deadline: float | None) -> bool:
        """One try; False when it disabled the webhook (410 Gone)."""
        hook = self.webhooks[delivery.webhook]
        now = self.clock()
        secret = None
        if hook.secret is not None:
            try:
                secret = sensitive.resolve(hook.secret, self.config.sensitive)
            except sensitive.MissingSecret as err:
                why = f"secret '{err.name}' is not set where mlinfra delivers: export it"
                self._settle(delivery, PENDING, http_status=None, error=why,
                                   next_at=now + SECRET_RETRY_S, counted=False, now=now)
                sent.waiting += 1
                sent.lines.append(f"{event.event_id} -> {hook.name}: waits: {why}")
                return True
        body, content_type = body_of(event, hook.format)
        timestamp = int(time.time())  # the wall clock, as the receiver checks it
        headers = {"content-type": content_type, "webhook-id": event.event_id,
                   "webhook-timestamp": str(timestamp)}
        if secret:
            headers["webhook-signature"] = sign(secret, event.event_id, timestamp, body)
        timeout = TRY_TIMEOUT_S
        if deadline is not None:
            timeout = max(0.5, min(timeout, deadline - now))
        import httpx

        status: int | None = None
        wait: float | None = None
        try:
            response = self._http().post(hook.url, content=body, headers=headers,
                                         timeout=timeout)
            status = response.status_code
            error = f"HTTP {status}"
            if status in (429, 503):
                wait = retry_after(response.headers.get("retry-after"), now)
        except httpx.HTTPError as err:
            error = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        attempts = delivery.attempts + 1
        first = delivery.first_try_at or now
        if status is not None and 200 <= status < 300:
            self._settle(delivery, DELIVERED, http_status=status, error="",
                               next_at=now, now=now)
            sent.delivered += 1
            return True
        if status == 410:
            self.outbox.disable(hook.name, f"{hook.url} answered 410 Gone")
            self._settle(delivery, FAILED, http_status=status,
                               error=f"410 Gone: webhook {hook.name} disabled for {hook.url}",
                               next_at=now, now=now)
            sent.failed += 1
            sent.lines.append(f"webhook {hook.name}: {hook.url} answered 410 Gone; disabled")
            return False
        retryable = status is None or status >= 500 or status in _RETRIED
        delay = max(hook.retry.delay(attempts, self.rng), wait or 0.0)
        if retryable and now + delay <= first + hook.retry.for_s:
            self._settle(delivery, PENDING, http_status=status, error=error,
                               next_at=now + delay, now=now)
            sent.retried += 1
            return True
        why = error if not retryable else f"{error}; gave up after {attempts} tries"
        self._settle(delivery, FAILED, http_status=status, error=why, next_at=now,
                           now=now)
        sent.failed += 1
        sent.lines.append(f"{event.event_id} -> {hook.name}: dead-lettered ({why})")
        return True

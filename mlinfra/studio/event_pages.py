"""Page 8, events: the outbox's newest events (type, subject, time, data) with each
webhook's delivery of them (delivered, waiting for its next try, dead-lettered), and
the webhooks a 410 disabled."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import BaseRoute, Route

from mlinfra.events.outbox import EventOutbox, describe
from mlinfra.studio.context import redact

if TYPE_CHECKING:
    from mlinfra.studio.app import Pages

SHOWN = 200


def routes(pages: Pages) -> list[BaseRoute]:
    studio = pages.studio

    def page(request: Request) -> HTMLResponse:
        outbox = EventOutbox(studio.store)
        failed = request.query_params.get("failed") == "1"
        events = outbox.events(SHOWN, failed=failed)
        deliveries = outbox.summary([e.event_id for e in events])
        shown = [{"seq": e.seq, "id": e.event_id, "type": e.type, "subject": e.subject,
                  "at": e.at, "data": redact(e.envelope.get("data")),
                  "deliveries": [(d.webhook, d.status, describe(d))
                                 for d in sorted(deliveries.get(e.event_id, []),
                                                 key=lambda d: d.webhook)]}
                 for e in events]
        return pages.render(request, "events.html", "events", events=shown, failed=failed,
                            total=outbox.head(), disabled=outbox.disabled(),
                            webhooks=sorted(studio.session.config.of("Webhook")))

    return [Route("/events", page)]

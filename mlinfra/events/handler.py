"""Webhook and Schedule: declarations the agent acts on; applying one records where it
starts, so it never acts on what happened before it existed."""

from __future__ import annotations

import time

from mlinfra.events.outbox import EventOutbox
from mlinfra.handler import Applied, BaseHandler, Context
from mlinfra.plan.model import Change
from mlinfra.state.model import ResourceState


class WebhookHandler(BaseHandler):
    """`since`: the outbox's newest event when the session that created the webhook
    began, so it receives that apply's events and every later one, never older ones."""

    def create(self, change: Change, ctx: Context) -> Applied:
        since = ctx.store.origin.get("outbox_head")
        if since is None:
            since = EventOutbox(ctx.store).head()
        return Applied({"since": int(since)})

    def update(self, change: Change, state: ResourceState, ctx: Context) -> Applied:
        return Applied({**state.outputs})


class ScheduleHandler(BaseHandler):
    """`since`: when the schedule was created; it fires for instants after it."""

    def create(self, change: Change, ctx: Context) -> Applied:
        return Applied({"since": time.time()})

    def update(self, change: Change, state: ResourceState, ctx: Context) -> Applied:
        return Applied({**state.outputs})

"""Monitors, on every provider: nothing runs by itself (`mlinfra monitor run`, or the
agent on a schedule, computes the windows); applying one checks where its rows come
from, and destroying one forgets its windows."""

from __future__ import annotations

from typing import Any

from mlinfra.handler import Applied, BaseHandler, Context
from mlinfra.monitoring import captures, records
from mlinfra.plan.model import Change
from mlinfra.spec.model import Resource
from mlinfra.state.model import ResourceState


class MonitorHandler(BaseHandler):
    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        return {}

    def create(self, change: Change, ctx: Context) -> Applied:
        res = ctx.config.get("Monitor", change.name)
        assert res is not None
        outputs: dict[str, Any] = {}
        endpoint = ctx.config.get("Endpoint", str(res.spec.get("endpoint", "")))
        if endpoint is not None:
            folder = captures.folder(ctx.config, endpoint)
            outputs["captures"] = str(folder) if folder is not None else None
        return Applied(outputs, provider_id=f"monitor/{res.name}")

    def delete(self, state: ResourceState, ctx: Context) -> None:
        records.forget(ctx.writer, state.name)

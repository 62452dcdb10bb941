"""The embedded local provider: everything on this machine, nothing to install.

Workspaces are folders under .mlinfra/<stack>/, compute is local concurrency slots,
datastores are folders, environments are uv virtual environments cached by the hash
of their spec, jobs run as processes and endpoints as detached server processes. Data
versions, runs, model versions and promotions are the domain's (`mlinfra.data`,
`mlinfra.runs`, `mlinfra.registry`), as on every provider.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

from mlinfra.providers.base import Context, Handler, Provider

if TYPE_CHECKING:
    from mlinfra.registry.models import ModelVersion

_LOCAL = "mlinfra.providers.local."


class LocalProvider(Provider):
    name = "local"
    handler_classes: ClassVar[dict[str, str | type[Handler]]] = {
        "Workspace": _LOCAL + "infra:WorkspaceHandler",
        "Compute": _LOCAL + "infra:ComputeHandler",
        "Datastore": _LOCAL + "infra:DatastoreHandler",
        "Data": "mlinfra.data.handler:DataHandler",
        "Environment": _LOCAL + "environment:EnvironmentHandler",
        "Job": "mlinfra.runs.jobs:JobHandler",
        "Pipeline": "mlinfra.runs.jobs:PipelineHandler",
        "Model": "mlinfra.registry.register:ModelHandler",
        "Promotion": "mlinfra.registry.promotion:PromotionHandler",
        "Endpoint": _LOCAL + "endpoint.handler:EndpointHandler",
        "Webhook": "mlinfra.events.handler:WebhookHandler",
        "Schedule": "mlinfra.events.handler:ScheduleHandler",
        "Monitor": "mlinfra.monitoring.handler:MonitorHandler",
        "BatchEndpoint": "mlinfra.batch.handler:BatchEndpointHandler",
        "BatchScore": "mlinfra.batch.handler:BatchScoreHandler",
    }

    def cancel(self, force: bool = False) -> None:
        from mlinfra.runs.execute import cancel_all

        cancel_all(force)

    def roll_out(self, ctx: Context, settings: dict[str, Any], alias: str,
                 candidate: ModelVersion, previous: ModelVersion,
                 log: Callable[[str], None]) -> dict[str, Any]:
        from mlinfra.providers.local.endpoint.canary import roll_out

        return roll_out(ctx, settings, alias, candidate, previous, log)

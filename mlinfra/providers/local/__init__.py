"""The embedded local provider: everything on this machine, nothing to install.

Workspaces are folders under .mlinfra/<stack>/, compute is local concurrency slots,
datastores are folders, data versions are content hashes, environments are uv
virtual environments cached by the hash of their spec.
"""

from typing import ClassVar

from mlinfra.providers.base import Provider

_LOCAL = "mlinfra.providers.local."


class LocalProvider(Provider):
    name = "local"
    handler_classes: ClassVar[dict[str, str]] = {
        "Workspace": _LOCAL + "infra:WorkspaceHandler",
        "Compute": _LOCAL + "infra:ComputeHandler",
        "Datastore": _LOCAL + "infra:DatastoreHandler",
        "Data": _LOCAL + "data:DataHandler",
        "Environment": _LOCAL + "environment:EnvironmentHandler",
        "Job": _LOCAL + "jobs:JobHandler",
        "Pipeline": _LOCAL + "jobs:PipelineHandler",
        "Model": _LOCAL + "models:ModelHandler",
        "Promotion": _LOCAL + "promotion:PromotionHandler",
        "Endpoint": _LOCAL + "endpoint.handler:EndpointHandler",
        "Webhook": _LOCAL + "automation:WebhookHandler",
        "Schedule": _LOCAL + "automation:ScheduleHandler",
    }

    def cancel(self) -> None:
        from mlinfra.runs.execute import cancel_all

        cancel_all()

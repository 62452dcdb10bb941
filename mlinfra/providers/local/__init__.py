"""The embedded local provider: everything on this machine, nothing to install.

Workspaces are folders under .mlinfra/<stack>/, compute is local concurrency slots,
datastores are folders, data versions are content hashes, environments are uv
virtual environments cached by the hash of their spec.
"""

from mlinfra.providers.base import Provider
from mlinfra.providers.local.endpoints import EndpointHandler
from mlinfra.providers.local.environment import EnvironmentHandler
from mlinfra.providers.local.infra import (
    ComputeHandler,
    DataHandler,
    DatastoreHandler,
    WorkspaceHandler,
)
from mlinfra.providers.local.jobs import JobHandler, PipelineHandler
from mlinfra.providers.local.models import ModelHandler
from mlinfra.providers.local.promotion import PromotionHandler


class LocalProvider(Provider):
    name = "local"

    def __init__(self) -> None:
        super().__init__({
            "Workspace": WorkspaceHandler(),
            "Compute": ComputeHandler(),
            "Datastore": DatastoreHandler(),
            "Data": DataHandler(),
            "Environment": EnvironmentHandler(),
            "Job": JobHandler(),
            "Pipeline": PipelineHandler(),
            "Model": ModelHandler(),
            "Promotion": PromotionHandler(),
            "Endpoint": EndpointHandler(),
        })

    def cancel(self) -> None:
        from mlinfra.runs.execute import cancel_all

        cancel_all()

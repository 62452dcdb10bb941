"""The provider protocol: what every provider (local, docker, kubernetes) implements.

A provider decides where a process or a container runs and how an endpoint is hosted:
it has one handler per kind (the handler protocol is `mlinfra.handler`'s; the domain's
kinds are handled by the domain's handlers). Providers are found through the
`mlinfra.providers` entry-point group, so a third party adds one without editing
mlinfra.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from typing import TYPE_CHECKING, Any, ClassVar

from mlinfra import cache_dir as cache_dir  # re-exported: handlers import it from here
from mlinfra.handler import (
    Applied,
    BaseHandler,
    Context,
    Handler,
    ProviderError,
    ProviderErrors,
    ScoringLauncher,
)
from mlinfra.spec.model import Config, Resource

# Re-exported: a provider's handlers import the protocol from here.
__all__ = ["Applied", "BaseHandler", "Context", "Handler", "Provider", "ProviderError",
           "ProviderErrors", "cache_dir", "handler_class"]

if TYPE_CHECKING:
    from mlinfra.registry.models import ModelVersion
    from mlinfra.runs.containers import Launcher


class Provider:
    """A named set of handlers by kind.

    `handler_classes` names each kind's handler as "module:Class" (a module is imported
    the first time its kind is used, so planning compute never loads the serving code)
    or gives its class.
    """

    name = "base"
    handler_classes: ClassVar[dict[str, str | type[Handler]]] = {}

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def cancel(self, force: bool = False) -> None:
        """Stop long operations under way (Ctrl-C during apply): gracefully, then for
        good after a grace period; `force` (a second Ctrl-C): for good, now."""

    def prepare(self, config: Config, command: str) -> None:
        """Refuse `command` before the state is opened when something the provider needs
        is missing (the Pulumi CLI): an MlinfraError saying what and how to fix it."""

    def plan_notes(self, ctx: Context) -> list[str]:
        """Lines shown under a plan (what a Pulumi preview would change)."""
        return []

    def job_launcher(self, ctx: Context, job: Resource) -> Launcher | None:
        """What starts `job`'s runs in a container and waits for them; None runs them
        as processes on this machine. Raises ProviderError when they cannot run here
        (asked when the job is planned, so the plan says so)."""
        return None

    def roll_out(self, ctx: Context, settings: dict[str, Any], alias: str,
                 candidate: ModelVersion, previous: ModelVersion,
                 log: Callable[[str], None]) -> dict[str, Any]:
        """Roll `candidate` out on the endpoint `settings['endpoint']` in place of
        `previous`; a provider that hosts no endpoint it can judge skips it."""
        return {"endpoint": str(settings.get("endpoint")), "steps": [], "replayed": 0,
                "status": "skipped",
                "why": f"the {self.name} provider does not roll out on endpoints"}

    def scoring_launcher(self, ctx: Context, score: Resource) -> ScoringLauncher | None:
        """What scores a staged scoring in containers; None scores on this machine."""
        return None

    def find(self, kind: str) -> Handler | None:
        found = self.handlers.get(kind)
        if found is None and kind in self.handler_classes:
            found = self.handlers[kind] = handler_class(self.handler_classes[kind])()
        return found

    def handler(self, kind: str, address: str) -> Handler:
        found = self.find(kind)
        if found is None:
            raise ProviderError(address, f"provider '{self.name}' cannot manage {kind} "
                                "resources")
        return found


def handler_class(named: str | type[Handler]) -> type[Handler]:
    """The class a provider's `handler_classes` names ("module:Class", or the class)."""
    if isinstance(named, str):
        module, _, name = named.partition(":")
        found: type[Handler] = getattr(import_module(module), name)
        return found
    return named

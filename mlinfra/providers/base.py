"""The provider protocol: what every provider (local, docker, kubernetes) implements.

A provider has one handler per kind. A handler derives facts from the world for the
plan (`facts`), reads what exists for refresh (`read`), and creates, updates and
deletes. Handlers never touch the state: the engine records what they return.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from mlinfra import cache_dir as cache_dir  # re-exported: handlers import it from here
from mlinfra.errors import MlinfraError
from mlinfra.plan.model import Change, Observed
from mlinfra.spec import sensitive
from mlinfra.spec.model import Config, Resource
from mlinfra.state.model import ResourceState
from mlinfra.state.store import StateStore

if TYPE_CHECKING:  # a plan on the local provider never loads the runs package
    from mlinfra.runs.containers import Launcher


class ProviderError(MlinfraError):
    """A resource could not be planned or applied; the message names the resource."""

    def __init__(self, address: str, message: str) -> None:
        super().__init__(f"{address}: {message}")
        self.address = address
        self.reason = message


class ProviderErrors(MlinfraError):
    """Several resources failed while planning; every one is reported."""

    def __init__(self, errors: list[ProviderError]) -> None:
        # A resource whose facts build on another's fails with that one's error: each
        # error is told once.
        self.errors = list({e.message: e for e in errors}.values())
        n = len({e.address for e in self.errors})
        super().__init__("\n".join(e.message for e in self.errors)
                         + f"\n{n} resource{'s' if n != 1 else ''} cannot be planned")


@dataclass(slots=True, init=False)
class Applied:
    """What a create or update returns: outputs kept in state (paths, versions...)."""

    outputs: dict[str, Any]
    provider_id: str

    def __init__(self, outputs: dict[str, Any] | None = None, provider_id: str = "") -> None:
        self.outputs = outputs if outputs is not None else {}
        self.provider_id = provider_id


class Context:
    """Everything a handler may use: the project, its stack's folder, the store."""

    def __init__(self, config: Config, store: StateStore, state_dir: Path,
                 log: Callable[[str], None] = lambda _: None,
                 provider: Provider | None = None) -> None:
        self.config, self.store, self.state_dir = config, store, state_dir
        self.log, self.provider = log, provider
        self._facts: dict[str, dict[str, Any] | ProviderError] = {}

    def facts(self, res: Resource) -> dict[str, Any]:
        """A resource's facts, computed once per plan: handlers build on each other's
        (an endpoint on its model's, a model on its pipeline's)."""
        if res.address not in self._facts:
            assert self.provider is not None
            handler = self.provider.handler(res.kind, res.address)
            try:
                self._facts[res.address] = handler.facts(res, self)
            except ProviderError as err:  # asked again by each resource built on it
                self._facts[res.address] = err
        found = self._facts[res.address]
        if isinstance(found, ProviderError):
            raise found
        return found

    def forget_facts(self) -> None:
        """Facts describe the world at one moment: a new plan reads it again."""
        self._facts.clear()

    @property
    def root(self) -> Path:
        return self.config.root

    def resolve_secrets(self, value: Any) -> Any:
        """`value` with ${secret.X} and sensitive ${var.X} filled in: only for what is
        handed to a process at apply time, never for what is kept."""
        return sensitive.resolve(value, self.config.sensitive)

    def secret_environment(self, value: Any) -> dict[str, str]:
        """The environment variables (MLINFRA_SECRET_X...) through which a process
        expands the sensitive references in `value` itself."""
        return sensitive.environment(value, self.config.sensitive)

    def withheld_environment(self) -> frozenset[str]:
        """The variables of mlinfra's own environment that a job must not inherit: every
        secret the project or its stack names (a job gets those it uses as
        MLINFRA_SECRET_X), libpq's password for the state, Pulumi's passphrase."""
        stack = self.config.stack
        named = sensitive.secret_names([[r.spec for r in self.config.all()], stack.state,
                                        stack.settings])
        return frozenset(named | {"PGPASSWORD", "PULUMI_CONFIG_PASSPHRASE"})


class Handler(Protocol):
    """One kind on one provider."""

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        """Attributes derived from the world (content hashes); raise ProviderError when
        the resource cannot be planned (a missing file)."""
        ...

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        ...

    def create(self, change: Change, ctx: Context) -> Applied:
        ...

    def update(self, change: Change, state: ResourceState, ctx: Context) -> Applied:
        ...

    def delete(self, state: ResourceState, ctx: Context) -> None:
        ...

    def abandoned(self, name: str, ctx: Context) -> None:
        """A create of resource `name` was interrupted before the state recorded it:
        remove what it may have left running."""
        ...


class BaseHandler:
    """Defaults: no facts, always present, update = create again, nothing to delete or
    clean up."""

    def facts(self, res: Resource, ctx: Context) -> dict[str, Any]:
        return {}

    def read(self, state: ResourceState, ctx: Context) -> Observed:
        return Observed()

    def create(self, change: Change, ctx: Context) -> Applied:
        return Applied()

    def update(self, change: Change, state: ResourceState, ctx: Context) -> Applied:
        return self.create(change, ctx)

    def delete(self, state: ResourceState, ctx: Context) -> None:
        return None

    def abandoned(self, name: str, ctx: Context) -> None:
        return None


class Provider:
    """A named set of handlers by kind.

    `handler_classes` names each kind's handler as "module:Class"; a module is imported
    the first time its kind is used, so planning compute never loads the serving code.
    """

    name = "base"
    handler_classes: ClassVar[dict[str, str]] = {}

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def cancel(self) -> None:
        """Stop long operations under way (Ctrl-C during apply)."""

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

    def find(self, kind: str) -> Handler | None:
        found = self.handlers.get(kind)
        if found is None and kind in self.handler_classes:
            module, _, name = self.handler_classes[kind].partition(":")
            found = self.handlers[kind] = getattr(import_module(module), name)()
        return found

    def handler(self, kind: str, address: str) -> Handler:
        found = self.find(kind)
        if found is None:
            raise ProviderError(address, f"provider '{self.name}' cannot manage {kind} "
                                "resources")
        return found

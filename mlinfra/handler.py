"""The handler protocol: how the engine asks for one kind to be made real, and what a
handler may use to do it.

A handler derives facts from the world for the plan (`facts`), reads what exists for
refresh (`read`), and creates, updates and deletes. Handlers never touch the state: the
engine records what they return. The domain's handlers (data versions, runs, model
versions, promotions) and the providers' (where a process or a server runs) implement
the same protocol; a domain handler asks the provider that hosts it (`Hosting`) for what
only a provider knows: where a job's process runs, how a rollout reaches an endpoint.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mlinfra import cache_dir as cache_dir  # re-exported: handlers import it from here
from mlinfra.errors import MlinfraError
from mlinfra.plan.model import Change, Observed
from mlinfra.spec import sensitive
from mlinfra.spec.model import Config, Resource
from mlinfra.state.model import ResourceState
from mlinfra.state.store import StateStore
from mlinfra.state.work import UnitOfWork, Writer

if TYPE_CHECKING:  # a plan on the local provider never loads the runs package
    from mlinfra.registry.models import ModelVersion
    from mlinfra.runs.containers import Launcher


class Hosting(Protocol):
    """What a handler may ask of the provider that hosts it."""

    name: str

    def handler(self, kind: str, address: str) -> Handler:
        """Another kind's handler (a model's facts build on its job's)."""
        ...

    def job_launcher(self, ctx: Context, job: Resource) -> Launcher | None:
        """What starts `job`'s runs in a container; None runs them as processes here."""
        ...

    def roll_out(self, ctx: Context, settings: dict[str, Any], alias: str,
                 candidate: ModelVersion, previous: ModelVersion,
                 log: Callable[[str], None]) -> dict[str, Any]:
        """Roll `candidate` out on the endpoint a promotion names in place of
        `previous`; the record of it (status, why, each hold window judged)."""
        ...

    def scoring_launcher(self, ctx: Context, score: Resource) -> ScoringLauncher | None:
        """What scores a staged scoring's shards in containers (mlinfra.batch.shard);
        None scores on this machine."""
        ...


# A staged scoring's (job id, folder, shards, deployment settings) -> "" once its
# containers ended, or why they could not run. Which shards they scored is in the folder.
ScoringLauncher = Callable[[str, Path, int, dict[str, Any]], str]


class ProviderError(MlinfraError):
    """A resource could not be planned or applied; the message names the resource."""

    def __init__(self, address: str, message: str) -> None:
        super().__init__(f"{address}: {message}", address=address)
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
    """Everything a handler may use: the project, its stack's folder, the store to read,
    and during apply the unit of work its change's writes go to (`work`, handed by the
    engine: `for_change`)."""

    def __init__(self, config: Config, store: StateStore, state_dir: Path,
                 log: Callable[[str], None] = lambda _: None,
                 provider: Hosting | None = None) -> None:
        self.config, self.store, self.state_dir = config, store, state_dir
        self.log, self.provider = log, provider
        self.work: UnitOfWork | None = None
        self._facts: dict[str, dict[str, Any] | ProviderError] = {}
        # What this plan replaces on request (`-replace ADDR`): its facts are read anew
        # (an environment resolves its requirements again).
        self.replacing: frozenset[str] = frozenset()

    def for_change(self, work: UnitOfWork) -> Context:
        """This context for one change: its writes staged in `work`."""
        import copy

        ctx = copy.copy(self)
        ctx.work = work
        return ctx

    @property
    def writer(self) -> Writer:
        """Where the domain's writes go: the change's unit of work during apply; the
        store itself (written at once) outside it."""
        return self.work if self.work is not None else self.store

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




def workspace_dir(ctx: Context, name: str) -> Path:
    """The workspace's artifact store and run folders: under the stack's `artifacts:`
    folder (shared by the machines that apply the stack), or .mlinfra/<stack>/."""
    from mlinfra.spec.storage import is_object_url

    shared = ctx.config.stack.artifacts
    if shared and is_object_url(shared):
        # The artifacts are on object storage; this machine keeps its run folders and a
        # cache of the blobs it wrote or read.
        shared = None
    base = ctx.root / os.path.expanduser(shared) if shared else ctx.state_dir
    return base / "workspaces" / name


def datastore_path(ctx: Context, spec: dict[str, Any]) -> Path:
    """A datastore's folder; for one on object storage, this machine's mirror of the
    objects it read (and where a local endpoint writes its captures)."""
    if spec.get("type", "local") != "local":
        import re

        url = str(spec.get("path", ""))
        return ctx.state_dir / "datastores" / re.sub(r"[^A-Za-z0-9._-]+", "_", url)
    return (ctx.root / str(spec.get("path", "."))).resolve()

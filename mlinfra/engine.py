"""The engine: load, refresh, plan and apply, in explicit phases; the only writer.

Apply walks the plan's dependency graph with bounded parallelism. Before each handler
call it journals the change as pending; the handler gets a unit of work
(`mlinfra.state.work`), not the store, and what it staged (versions, aliases, tags,
decisions, audit rows, events) is committed with the resource's new state and the
journal entry in one transaction, so a crash at any instant leaves a state the next
plan reconciles. A multi-step operation records its ordered steps in the journal;
after a crash, recovery reads them and resumes or undoes it (`Handler.recover`). A
failed resource stops its dependants, not its siblings.

Every command that writes the state (apply, destroy, models alias/tag/archive,
endpoints keys/rollout, state rm/migrate, ci run) takes the stack's lock and its backup
in one place, `writing`; one outside apply records its change through `operation`.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.graph import address as make_address
from mlinfra.graph import closure, references
from mlinfra.plan.diff import make_plan
from mlinfra.plan.model import Action, Change, Desired, Observed, Plan
from mlinfra.providers import get_provider
from mlinfra.providers.base import Context, Provider, ProviderError, ProviderErrors
from mlinfra.spec import Config, Resource, load, sensitive
from mlinfra.spec.schemas import replace_fields
from mlinfra.state.model import JournalEntry, ResourceState, digest
from mlinfra.state.store import StateStore, StateUnavailable
from mlinfra.state.work import UnitOfWork

Event = Callable[[str, Change, float, str], None]


class StalePlan(MlinfraError):
    """A saved plan no longer matches the state or the configuration."""


class Interrupted(MlinfraError):
    exit_code = 130


class Session:
    """A loaded project, its stack's store and provider: what every command works on."""

    def __init__(self, config: Config, store: StateStore, provider: Provider,
                 ctx: Context) -> None:
        self.config, self.store, self.provider, self.ctx = config, store, provider, ctx
        # The interrupted operations that `writing` recovered (apply reports them).
        self.recovered: list[JournalEntry] = []

    @property
    def stack(self) -> str:
        return self.config.stack.name

    def close(self) -> None:
        """Close the state; a session that wrote first delivers the events it produced
        (a short, bounded flush: a laptop with no agent still gets its events)."""
        try:
            if not self.store.readonly and self.config.of("Webhook"):
                _flush(self)
        finally:
            self.store.close()


# How long a command that wrote spends delivering its events before it exits.
FLUSH_S = 3.0


def _flush(session: Session) -> None:
    import os

    from mlinfra.events.agent import flush

    budget = float(os.environ.get("MLINFRA_EVENTS_FLUSH_S", FLUSH_S))
    if budget <= 0:
        return
    try:
        sent = flush(session.config, session.store, budget)
    except Exception as err:  # delivery never fails the command that wrote
        session.ctx.log(f"events: not delivered now ({type(err).__name__}: {err}); "
                        "mlinfra agent or the next command delivers them")
        return
    if sent is not None:
        for line in sent.lines:
            session.ctx.log(f"events: {line}")


def state_dir(config: Config) -> Path:
    return config.root / ".mlinfra" / config.stack.name


def state_location(config: Config, location: str | None = None) -> str:
    """Where the stack's state is (or `location`, written as a stack's `state:` is): a
    SQLite file's path (relative to the project) or a database URL, whose
    ${secret.X} are read from the environment now and never stored."""
    from mlinfra.state.backends import is_url

    text = config.stack.state if location is None else location
    if not text:
        return str(state_dir(config) / "state.db")
    if not is_url(text):
        return str(config.root / text)
    from urllib.parse import quote

    from mlinfra.spec.model import INTERPOLATION

    where = f"{config.stack.file or 'the stack'}: state"

    def resolve(match: Any) -> str:
        if match.group(1) != "secret":
            raise MlinfraError(f"{where}: only ${{secret.X}} can be used in a state URL, "
                               f"not {match.group(0)}")
        try:
            return quote(sensitive.value_of("secret", match.group(2)[1:], {}), safe="")
        except sensitive.MissingSecret as err:
            raise MlinfraError(f"{where}: {err.message}") from err

    return INTERPOLATION.sub(resolve, text)


def open_store_at(config: Config, location: str, command: str, *, write: bool,
                  new_state: bool = False) -> StateStore:
    """The state at a resolved `state_location`, for this project and stack."""
    from mlinfra.state.backends import open_store

    return open_store(location, project=config.name, stack=config.stack.name,
                      command=command, readonly=not write, new_state=new_state)


# What still runs on a state that `state migrate` moved elsewhere (a migration to where
# it was moved says so: one killed after it finished is run again).
READS_A_MOVED_STATE = ("state list", "state show", "state migrate")


def open_session(directory: Path, stack: str | None, command: str, *, write: bool,
                 log: Callable[[str], None] = lambda _: None,
                 new_state: bool = False) -> Session:
    """Load the project and open its stack's state: for writing (apply, destroy, the
    commands that move aliases or edit state) or only for reading (plan, output, the
    listing commands), which never creates nor changes the state. A state file that is
    gone while its backup is beside it is refused unless `new_state`."""
    config = load(directory, stack)
    provider = get_provider(config.stack.provider)
    provider.prepare(config, command)
    try:
        store = open_store_at(config, state_location(config), command, write=write,
                              new_state=new_state)
    except StateUnavailable as err:  # say where the location came from
        raise StateUnavailable(f"{err.message} (the `state:` of "
                               f"{config.stack.file or 'the stack'})") from err
    moved = store.moved()
    if moved and command not in READS_A_MOVED_STATE:
        store.close()
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(moved["at"]))
        raise MlinfraError(
            f"the state of stack '{config.stack.name}' at {store.location} was moved to "
            f"{moved['to']} on {when} by {moved['by']} (mlinfra state migrate): set state: "
            f"in {config.stack.file or 'the stack file'} to it. The old state is kept as it "
            "was (mlinfra state list and show read it); nothing else runs on it")
    store.origin.update(project=config.name, stack=config.stack.name, root=str(config.root))
    if write:  # where a webhook created in this session starts taking events
        from mlinfra.events.outbox import EventOutbox

        store.origin["outbox_head"] = EventOutbox(store).head()
    ctx = Context(config=config, store=store, state_dir=state_dir(config), log=log,
                  provider=provider)
    return Session(config, store, provider, ctx)


# --- desired state ----------------------------------------------------------------------

def _implicit_workspace(config: Config) -> Resource | None:
    if config.of("Workspace"):
        return None
    return Resource(kind="Workspace", name=config.name, spec={"kind": "Workspace",
                                                                "name": config.name},
                    file="(implicit)", doc=0)


def workspace_address(config: Config) -> str:
    return make_address("Workspace", config.workspace)


def _mask(value: Any, prior: Any, config: Config, missing: set[str]) -> Any:
    """Replace strings holding a sensitive reference by a salted scrypt hash of their
    value, with the salt `prior` (what the state holds there) used: an unchanged value
    gives the same string, a changed one another, and neither shows it."""
    if isinstance(value, dict):
        fields = prior if isinstance(prior, dict) else {}
        return {k: _mask(v, fields.get(k), config, missing) for k, v in value.items()}
    if isinstance(value, list):
        items = prior if isinstance(prior, list) else []
        return [_mask(v, items[i] if i < len(items) else None, config, missing)
                for i, v in enumerate(value)]
    if not isinstance(value, str) or not sensitive.holds(value):
        return value
    try:
        resolved = sensitive.resolve(value, config.sensitive)
    except sensitive.MissingSecret as err:
        missing.add(err.name)
        return sensitive.SECRET_PREFIX + "missing"
    return sensitive.fingerprint(resolved, sensitive.salt_of(prior))


def desired_state(session: Session, targets: Iterable[str] = (), *,
                  saved: Plan | None = None) -> dict[str, Desired]:
    """Every resource as the configuration wants it, with the provider's facts (with
    `targets`, only those and what they depend on). Raises ProviderErrors naming every
    resource that cannot be planned.

    Sensitive values are hashed with the salts the state holds, or for a resource that
    `saved` (a saved plan) changes, the salts it holds."""
    config = session.config
    workspace = workspace_address(config)
    resources = config.all()
    implicit = _implicit_workspace(config)
    if implicit is not None:
        resources.insert(0, implicit)
    deps = {r.address: references(r, config, workspace) if r is not implicit else []
            for r in resources}
    targets = set(targets)
    if targets:
        unknown = targets - set(deps)
        keep = closure(targets & set(deps), deps) | unknown
        resources = [r for r in resources if r.address in keep]
    salts_from = {c.address: c.after for c in saved.changes} if saved is not None else {}
    session.ctx.forget_facts()
    errors: list[ProviderError] = []
    out: dict[str, Desired] = {}
    for res in resources:
        try:
            facts = session.ctx.facts(res)
        except ProviderError as err:
            errors.append(err)
            continue
        missing: set[str] = set()
        attributes = {k: v for k, v in res.spec.items() if k not in ("kind", "name")}
        if sensitive.holds(attributes):
            prior = salts_from.get(res.address)
            if prior is None:
                have = session.store.get(res.address)
                prior = have.attributes if have is not None else None
            attributes = _mask(attributes, prior, config, missing)
        for name in sorted(missing):
            errors.append(ProviderError(res.address, f"secret '{name}' is not set: export "
                                        f"{name}=... before planning"))
        attributes.update(facts)
        out[res.address] = Desired(
            address=res.address, kind=res.kind, name=res.name, attributes=attributes,
            inputs_hash=digest(attributes),
            dependencies=deps[res.address],
            replace_fields=replace_fields(res.kind))
    if errors:
        raise ProviderErrors(errors)
    return out


def resolved_references(session: Session) -> dict[str, int | None]:
    """What each model reference of the endpoints names now (`fraud@champion` -> 3,
    `fraud` -> the latest version; None: nothing yet). A saved plan keeps them: an
    alias moved since is a stale plan."""
    refs = sorted({str(d.get("model")) for e in session.config.of("Endpoint").values()
                   for d in e.spec.get("deployments") or []})
    if not refs:
        return {}
    from mlinfra.registry.models import ModelRegistry
    from mlinfra.spec.model import Ref

    registry = ModelRegistry(session.store)
    out: dict[str, int | None] = {}
    for text in refs:
        ref = Ref.parse(text)
        if ref is None:
            continue
        if ref.alias is not None:
            out[text] = registry.aliases(ref.name).get(ref.alias)
        elif ref.version is None:
            latest = registry.latest(ref.name)
            out[text] = latest.version if latest else None
    return out


# --- refresh and plan -------------------------------------------------------------------

def refresh(session: Session, state: dict[str, ResourceState]) -> dict[str, Observed]:
    observed = {}
    for address, have in state.items():
        handler = session.provider.find(have.kind)
        if handler is not None:
            observed[address] = handler.read(have, session.ctx)
    return observed


def plan(session: Session, *, targets: Iterable[str] = (), destroy: bool = False,
         do_refresh: bool = True, saved: Plan | None = None,
         replace: Iterable[str] = ()) -> Plan:
    """Refresh and diff. `saved`: a saved plan being checked, whose secrets' salts are
    reused so an unchanged secret hashes the same. Destroying wants nothing: it reads
    neither the configuration's facts nor its secrets, so a missing data file, a secret
    not set or data that failed its checks never stops a destroy."""
    if not session.store.readonly:
        # A session that writes (apply, destroy, ci run; under the lock) first stops the
        # runs whose mlinfra was killed and records them, whatever it then applies: a
        # reconciled state never shows a run `running` that nothing runs.
        from mlinfra.runs.processes import stop_orphans
        from mlinfra.runs.store import RunStore

        stop_orphans(RunStore(session.store), session.ctx.log)
    replace = sorted(set(replace))
    session.ctx.replacing = frozenset(replace)
    desired = {} if destroy else desired_state(session, targets, saved=saved)
    state = session.store.resources()
    observed = refresh(session, state) if do_refresh else {}
    return make_plan(desired, state, observed, session.store.version(), targets=targets,
                     destroy=destroy, stack=session.stack,
                     resolved=resolved_references(session), replace=replace)


def _comparable(the_plan: Plan) -> str:
    """The changes as apply would make them (a secret's hash included: its salt is the
    saved plan's, so only a changed secret differs)."""
    return digest([c.to_json() for c in the_plan.actionable])


def check_fresh(session: Session, saved: Plan) -> None:
    """Refuse a saved plan once the state, the model references or the changes it
    would make moved on: it is planned again, with its targets, and compared."""
    version = session.store.version()
    if saved.stack != session.stack:
        raise StalePlan(f"the plan was made for stack '{saved.stack}', not '{session.stack}'")
    planned_fresh = saved.lineage == "" and version.serial == 0
    if not planned_fresh and (saved.lineage, saved.serial) != (version.lineage,
                                                                version.serial):
        if saved.lineage == "":
            what = ("was made before the state existed; the state is now at serial "
                    f"{version.serial}")
        elif saved.lineage != version.lineage:
            what = "belongs to another state"
        else:
            what = (f"was made at state serial {saved.serial}; the state is now at "
                    f"{version.serial}")
        raise StalePlan(f"the saved plan is stale: it {what}. Run mlinfra plan again.")
    current = plan(session, targets=saved.targets, destroy=saved.destroy, saved=saved,
                   replace=saved.replace)
    moved = sorted(ref for ref in set(saved.resolved) | set(current.resolved)
                   if saved.resolved.get(ref) != current.resolved.get(ref))
    if moved:
        raise StalePlan("the saved plan is stale: model references changed since it was "
                        "saved (" + ", ".join(f"{ref}: {saved.resolved.get(ref)} -> "
                                              f"{current.resolved.get(ref)}" for ref in moved)
                        + "). Run mlinfra plan again.")
    if _comparable(current) != _comparable(saved):
        before = {c.address: digest(c.to_json()) for c in saved.actionable}
        now = {c.address: digest(c.to_json()) for c in current.actionable}
        moved = sorted(a for a in set(before) | set(now) if before.get(a) != now.get(a))
        raise StalePlan("the configuration, the data it reads or the objects it manages "
                        "changed since the plan was saved; the changes of "
                        f"{', '.join(moved)} differ now. Run mlinfra plan again.")


# --- apply ------------------------------------------------------------------------------

class ApplyResult:
    def __init__(self) -> None:
        self.applied: list[Change] = []
        self.failed: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        self.interrupted: list[JournalEntry] = []

    @property
    def ok(self) -> bool:
        return not self.failed and not self.skipped


def _waits(all_changes: list[Change]) -> dict[str, set[str]]:
    """What each change waits for: the changes it depends on, also through unchanged
    resources (a job that waits on a data version via an unchanged step), and for
    deletions the deletion of whatever depended on the resource."""
    changes = [c for c in all_changes if c.action is not Action.NOOP]
    by_address = {c.address: c for c in all_changes}
    waits: dict[str, set[str]] = {}
    for change in changes:
        if change.action is Action.DELETE:
            waits[change.address] = {o.address for o in changes if o.action is Action.DELETE
                                     and change.address in o.dependencies}
            continue
        found: set[str] = set()
        todo, seen = list(change.dependencies), set()
        while todo:
            dep = todo.pop()
            if dep in seen or dep not in by_address:
                continue
            seen.add(dep)
            action = by_address[dep].action
            if action is Action.NOOP:
                todo.extend(by_address[dep].dependencies)
            elif action is not Action.DELETE:
                found.add(dep)
        waits[change.address] = found
    return waits


def _apply_one(session: Session, change: Change) -> None:
    store = session.store
    handler = session.provider.handler(change.kind, change.address)
    before = store.get(change.address)
    journal = store.begin_operation(change.address, change.action.name.lower())
    work = UnitOfWork(store, journal, change.address)
    ctx = session.ctx.for_change(work)
    try:
        if change.action is Action.DELETE:
            if before is not None:
                handler.delete(before, ctx)
            _announce_change(work, change, None)
            store.commit_change(journal, change.address, "delete", None, change.reason, work)
            return
        if change.action is Action.REPLACE and before is not None:
            handler.delete(before, ctx)
        if change.action is Action.UPDATE and before is not None:
            applied = handler.update(change, before, ctx)
        else:
            applied = handler.create(change, ctx)
        new = ResourceState(address=change.address, kind=change.kind, name=change.name,
                            attributes=change.after or {}, inputs_hash=change.inputs_hash,
                            outputs=applied.outputs, provider_id=applied.provider_id,
                            dependencies=list(change.dependencies))
        _announce_change(work, change, new)
        store.commit_change(journal, change.address, change.action.name.lower(), new,
                            change.reason, work)
    except BaseException as err:
        store.fail_operation(journal, _describe(err), work)
        raise
    finally:
        work.release()


def _announce_change(work: UnitOfWork, change: Change, new: ResourceState | None) -> None:
    """The events that announce one resource's change, staged with it."""
    if change.kind != "Endpoint":
        return
    kind = {Action.CREATE: "created", Action.DELETE: "deleted"}.get(change.action, "updated")
    data: dict[str, Any] = {"endpoint": change.name,
                            "see": f"mlinfra endpoints show {change.name}"}
    if new is not None and new.outputs.get("url"):
        data["url"] = str(new.outputs["url"])
    work.emit(f"endpoint.{kind}", change.address, data)


def _announce_unhealthy(session: Session, the_plan: Plan) -> None:
    """endpoint.unhealthy for each endpoint the plan's refresh found broken (its server
    gone, or not serving as applied): the apply that repairs it says so first."""
    from mlinfra.events.envelope import announce

    for drift in the_plan.drift:
        kind, _, name = drift.address.partition(".")
        if kind == "endpoint":
            announce(session.store, "endpoint.unhealthy", drift.address,
                     {"endpoint": name, "reason": drift.message},
                     see=f"mlinfra endpoints show {name}")


def _announce_end(session: Session, result: ApplyResult) -> None:
    """apply.completed or apply.failed, once the walk is over."""
    from mlinfra.events.envelope import announce
    from mlinfra.plan.model import tally

    subject = f"stack.{session.stack}"
    if result.ok:
        counts = tally(result.applied)
        announce(session.store, "apply.completed", subject,
                 {"added": counts["add"], "changed": counts["change"],
                  "replaced": counts["replace"], "destroyed": counts["destroy"]})
    else:
        announce(session.store, "apply.failed", subject,
                 {"failed": result.failed, "skipped": result.skipped})


@contextmanager
def writing(session: Session, command: str, lock_timeout: float = 0.0) -> Iterator[str]:
    """The one place a command that writes the state takes the stack's lock (waiting up
    to `lock_timeout` seconds) and then the state's backup; yields the lock's id."""
    from mlinfra.state.lock import locked

    with locked(session.store, session.stack, command, lock_timeout) as lock_id:
        session.store.backup()
        session.recovered = recover(session)
        yield lock_id


@contextmanager
def operation(session: Session, address: str, action: str,
              detail: str = "") -> Iterator[UnitOfWork]:
    """A change outside apply (moving an alias, rotating a key) as a journaled
    operation: pending in the journal, its writes staged in the unit of work yielded
    and committed with the journal entry in one transaction when the block ends; the
    entry fails when the block raises. The caller holds `writing`."""
    store = session.store
    journal = store.begin_operation(address, action)
    work = UnitOfWork(store, journal, address)
    try:
        yield work
        store.commit_operation(journal, work, detail)
    except BaseException as err:
        store.fail_operation(journal, _describe(err))
        raise
    finally:
        work.release()


def _describe(err: BaseException) -> str:
    if isinstance(err, ProviderError):
        return err.reason
    if isinstance(err, MlinfraError):
        return err.message
    return f"{type(err).__name__}: {err}"


def recover(session: Session) -> list[JournalEntry]:
    """Close the operations a killed process left pending, resuming or undoing each
    from its steps; returns them. The caller holds the stack's lock."""
    from mlinfra.runs.processes import stop_orphans
    from mlinfra.runs.store import RunStore
    from mlinfra.state.store import engine_writing

    entries = session.store.interrupted_operations()
    if entries:  # recovered first: one whose recovery failed is tried again next time
        _clean_abandoned(session, entries)
        session.store.close_interrupted(entries)
    with engine_writing():  # a job started by a killed apply never runs beside another
        stop_orphans(RunStore(session.store), session.ctx.log)
    return entries


def _clean_abandoned(session: Session, entries: list[JournalEntry]) -> None:
    """An interrupted change of a resource that the state does not hold (apply killed
    during its create) may have left something running that no state will ever name:
    its handler cleans it up. An interrupted operation with steps is resumed or undone
    by its handler, from its steps, in a unit of work committed with the entry."""
    kinds = {kind.lower(): kind for kind in session.provider.handler_classes}
    store = session.store
    for entry in entries:
        prefix, _, name = entry.address.partition(".")
        if prefix not in kinds:
            continue
        handler = session.provider.handler(kinds[prefix], entry.address)
        steps = store.steps(entry.id)
        recover = getattr(handler, "recover", None)
        if steps and recover is not None:
            work = UnitOfWork(store, None, entry.address)
            try:
                outcome = recover(entry, steps, session.ctx.for_change(work))
                store.commit_operation(entry.id, work, outcome, status="recovered")
            finally:
                work.release()
        if store.get(entry.address) is None:
            handler.abandoned(name, session.ctx)


def execute(session: Session, the_plan: Plan, parallelism: int = 4,
            on_event: Event = lambda *_: None) -> ApplyResult:
    """Apply the plan's changes. The caller holds the stack's lock."""
    from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

    result = ApplyResult()
    result.interrupted = [*session.recovered, *recover(session)]
    _announce_unhealthy(session, the_plan)
    changes = the_plan.actionable
    by_address = {c.address: c for c in changes}
    waits = _waits(the_plan.changes)
    unmet = {address: len(deps) for address, deps in waits.items()}
    dependants: dict[str, list[str]] = {address: [] for address in waits}
    for address, deps in waits.items():
        for dep in deps:
            dependants[dep].append(address)
    ready = deque(sorted(a for a, n in unmet.items() if n == 0))
    settled: set[str] = set()

    def skip(first: str, first_reason: str) -> None:
        todo = [(first, first_reason)]
        while todo:
            address, reason = todo.pop()
            if address in settled:
                continue
            settled.add(address)
            result.skipped[address] = reason
            on_event("skip", by_address[address], 0.0, reason)
            todo.extend((d, f"{address} was not applied") for d in dependants[address])

    def finished(change: Change, error: BaseException | None, elapsed: float) -> None:
        settled.add(change.address)
        if error is not None:
            result.failed[change.address] = _describe(error)
            on_event("fail", change, elapsed, _describe(error))
            for dependant in dependants[change.address]:
                skip(dependant, f"{change.address} was not applied")
            return
        result.applied.append(change)
        on_event("done", change, elapsed, "")
        for dependant in dependants[change.address]:
            unmet[dependant] -= 1
            if unmet[dependant] == 0 and dependant not in settled:
                ready.append(dependant)

    limit = max(1, parallelism)
    running: dict[Future[None], tuple[Change, float]] = {}
    with ThreadPoolExecutor(max_workers=limit) as pool:
        try:
            while ready or running:
                while ready and len(running) < limit:
                    change = by_address[ready.popleft()]
                    if change.address in settled:
                        continue
                    on_event("start", change, 0.0, "")
                    running[pool.submit(_apply_one, session, change)] = (change,
                                                                          time.monotonic())
                if not running:
                    break
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    change, started = running.pop(future)
                    finished(change, future.exception(), time.monotonic() - started)
        except KeyboardInterrupt:
            # Ctrl-C: runs get SIGTERM, then SIGKILL after a grace period; a second
            # Ctrl-C kills them now and stops waiting for anything else.
            session.provider.cancel()
            for change, _ in running.values():
                on_event("wait", change, 0.0, "interrupted: waiting for it to stop (Ctrl-C "
                         "again to kill it now)")
            try:
                wait(running)
            except KeyboardInterrupt:
                session.provider.cancel(force=True)
                pool.shutdown(wait=False, cancel_futures=True)
                raise Interrupted("Interrupted twice: the runs under way were killed; a "
                                  "change still under way is journaled, and the next plan "
                                  "reconciles it. Run apply again to finish the rest."
                                  ) from None
            raise Interrupted("Interrupted: the changes under way were stopped (a canceled "
                              "run) or finished, and what finished was saved; run apply "
                              "again to finish the rest.") from None
    stuck = sorted(set(waits) - settled)
    if stuck:
        raise MlinfraError(f"apply cannot proceed: changes wait on each other ({', '.join(stuck)})")
    if changes:
        _announce_end(session, result)
    return result

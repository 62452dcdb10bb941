"""The planner: a pure function of (desired, state, observed) to a Plan."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mlinfra.errors import MlinfraError
from mlinfra.graph import closure, topological
from mlinfra.plan.model import (
    SENSITIVE,
    Action,
    Change,
    Desired,
    Drift,
    FieldChange,
    Observed,
    Plan,
)
from mlinfra.spec.sensitive import SECRET_PREFIX
from mlinfra.state.model import ResourceState, StateVersion

# NOTE: kinds that act on what their dependencies produced (a model's new version), not
# only on their configuration: when a dependency is applied again to repair drift (a
# model retrained because its file was lost), they are applied again too.
FOLLOWS_OUTPUTS = frozenset({"Promotion", "Endpoint"})


class PlanError(MlinfraError):
    """The changes asked for cannot be made (e.g. destroying what others still use)."""


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to dotted paths; lists stay whole values (an empty mapping at the
    top has no paths)."""
    if isinstance(value, dict) and (value or not prefix):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def masked(value: Any) -> Any:
    """`value` with each sensitive hash (a string, or an item of a list or mapping) shown
    as (sensitive): what people and CI logs see of a plan or a state. A saved plan keeps
    the hashes, which apply stores."""
    if isinstance(value, dict):
        return {k: masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v) for v in value]
    if isinstance(value, str) and value.startswith(SECRET_PREFIX):
        return SENSITIVE
    return value


def field_changes(before: dict[str, Any], after: dict[str, Any],
                  replace_fields: frozenset[str]) -> list[FieldChange]:
    flat_before, flat_after = flatten(before), flatten(after)
    changes = []
    for path in sorted(set(flat_before) | set(flat_after)):
        old, new = flat_before.get(path), flat_after.get(path)
        if old == new:
            continue
        top = path.split(".", 1)[0]
        shown_old, shown_new = masked(old), masked(new)
        sensitive = (shown_old, shown_new) != (old, new)
        changes.append(FieldChange(path, shown_old, shown_new, top in replace_fields,
                                   sensitive))
    return changes


def _short(value: Any) -> str:
    text = str(value)
    if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
        return text[:12]  # a sha256
    return text if len(text) <= 40 else text[:37] + "..."


def _named(items: Any) -> dict[str, Any] | None:
    """A list of mappings each with its own name (deployments), by name; else None."""
    if not isinstance(items, list) or not all(isinstance(i, dict) and "name" in i
                                              for i in items):
        return None
    named = {str(i["name"]): i for i in items}
    return named if len(named) == len(items) else None


def _said(field: FieldChange) -> list[str]:
    """A field's change in a few words; in a list of named mappings, the item's fields
    that changed (deployments[main].model a -> b), not the whole list cut short."""
    old, new = _named(field.before), _named(field.after)
    if old is None or new is None:
        return [f"{field.path} {_short(field.before)} -> {_short(field.after)}"]
    said = []
    for name in [*old, *[n for n in new if n not in old]]:
        if name not in new:
            said.append(f"{field.path}[{name}] removed")
        elif name not in old:
            said.append(f"{field.path}[{name}] added")
        else:
            said.extend(f"{field.path}[{name}].{c.path} {_short(c.before)} -> "
                        f"{_short(c.after)}" for c in field_changes(old[name], new[name],
                                                                     frozenset()))
    return said or [f"{field.path} reordered"]


def _reason(fields: list[FieldChange]) -> str:
    said = [part for f in fields for part in _said(f)]
    more = f" (+{len(said) - 3} more)" if len(said) > 3 else ""
    return "changed: " + ", ".join(said[:3]) + more


def _plan_desired(want: Desired, have: ResourceState | None,
                  seen: Observed | None) -> tuple[Change, Drift | None]:
    def change(action: Action, reason: str, fields: list[FieldChange] | None = None,
               before: dict[str, Any] | None = None) -> Change:
        return Change(want.address, want.kind, want.name, action, reason, before,
                      want.attributes, fields or [], list(want.dependencies), want.inputs_hash)

    if have is None:
        return change(Action.CREATE, "new resource",
                      field_changes({}, want.attributes, frozenset())), None
    if seen is not None and not seen.exists:
        message = seen.problem or "it no longer exists"
        return change(Action.CREATE, f"deleted outside mlinfra: {message}",
                      field_changes({}, want.attributes, frozenset())), Drift(want.address,
                                                                             message)
    fields = ([] if have.inputs_hash == want.inputs_hash else
              field_changes(have.attributes, want.attributes, want.replace_fields))
    if seen is not None and seen.problem:
        reason = f"changed outside mlinfra: {seen.problem}"
        action = Action.UPDATE if seen.update else Action.REPLACE
        return (change(action, reason, fields, have.attributes),
                Drift(want.address, seen.problem))
    if not fields and have.inputs_hash == want.inputs_hash:
        return change(Action.NOOP, "unchanged", before=have.attributes), None
    forced = [f.path for f in fields if f.forces_replacement]
    if forced:
        return change(Action.REPLACE, f"{', '.join(forced)} forces replacement; "
                      + _reason(fields), fields, have.attributes), None
    return change(Action.UPDATE, _reason(fields) if fields else "inputs changed", fields,
                  have.attributes), None


def make_plan(desired: dict[str, Desired], state: dict[str, ResourceState],
              observed: dict[str, Observed], version: StateVersion, *,
              targets: Iterable[str] = (), destroy: bool = False, stack: str = "",
              resolved: dict[str, int | None] | None = None,
              replace: Iterable[str] = ()) -> Plan:
    """Compare what the configuration wants with what the state holds and refresh saw.

    With `targets`, only those addresses and what they depend on are planned (for
    destroy: those addresses and what depends on them is refused). With `destroy`,
    everything in the state is deleted. Each of `replace` that the state holds is
    replaced even when unchanged (Terraform's `-replace`).
    """
    targets, replace = set(targets), set(replace)
    unknown = targets - set(desired) - set(state)
    if unknown:
        raise PlanError(f"--target names no resource: {', '.join(sorted(unknown))}")
    unknown = replace - set(desired)
    if unknown:
        raise PlanError(f"-replace names no resource of the configuration: "
                        f"{', '.join(sorted(unknown))}")
    if destroy:
        wanted: dict[str, Desired] = {}
    elif targets:
        deps = {a: d.dependencies for a, d in desired.items()}
        keep = closure(targets & set(desired), deps)
        wanted = {a: d for a, d in desired.items() if a in keep}
    else:
        wanted = desired
    changes: list[Change] = []
    drift: list[Drift] = []
    order = topological({a: d.dependencies for a, d in wanted.items()})
    repaired: set[str] = set()  # applied again because of drift, or after such a one
    for address in order:
        want = wanted[address]
        change, found = _plan_desired(want, state.get(address), observed.get(address))
        if address in replace and change.action in (Action.NOOP, Action.UPDATE):
            change = Change(want.address, want.kind, want.name, Action.REPLACE,
                            "replacement requested (-replace)", change.before,
                            want.attributes, change.fields, list(want.dependencies),
                            want.inputs_hash)
        if found is not None:
            drift.append(found)
            repaired.add(address)
        elif change.action is Action.NOOP and want.kind in FOLLOWS_OUTPUTS:
            cause = next((d for d in want.dependencies if d in repaired), None)
            if cause is not None:
                change = Change(want.address, want.kind, want.name, Action.UPDATE,
                                f"{cause} is applied again: what it produces may differ",
                                change.before, want.attributes, [], list(want.dependencies),
                                want.inputs_hash)
                repaired.add(address)
        changes.append(change)
    gone = [a for a in state if a not in desired or destroy]
    if targets:
        gone = [a for a in gone if a in targets]
    for address, seen in observed.items():
        if address in gone and not seen.exists:
            drift.append(Drift(address, seen.problem or "it no longer exists"))
    if destroy and targets:
        _refuse_used(set(gone), state)
    state_deps = {a: [d for d in state[a].dependencies if d in gone] for a in gone}
    for address in reversed(topological(state_deps)):
        have = state[address]
        reason = "destroy requested" if destroy else "no longer in the configuration"
        changes.append(Change(address, have.kind, have.name, Action.DELETE, reason,
                              have.attributes, None,
                              field_changes(have.attributes, {}, frozenset()),
                              list(have.dependencies), have.inputs_hash))
    return Plan(changes=changes, drift=drift, lineage=version.lineage, serial=version.serial,
                stack=stack, destroy=destroy, targets=sorted(targets), resolved=resolved,
                replace=sorted(replace))


def _refuse_used(gone: set[str], state: dict[str, ResourceState]) -> None:
    users = sorted((user.address, dep) for user in state.values() if user.address not in gone
                   for dep in user.dependencies if dep in gone)
    if users:
        lines = "\n".join(f"  {dep} is used by {user}" for user, dep in users)
        raise PlanError("cannot destroy what other resources still use:\n" + lines
                        + "\nDestroy those too (add --target for each), or change them first.")

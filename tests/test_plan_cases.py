"""The planner, tested with data: one folder per case under tests/cases/plan/.

Each case.yaml gives `desired`, `state`, optional `observed`, `targets`, `destroy`,
and either the `expected` changes (and `drift`) or the `error` the plan raises.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlinfra.plan.diff import PlanError, make_plan
from mlinfra.plan.model import Desired, Observed
from mlinfra.spec.schemas import replace_fields
from mlinfra.state.model import ResourceState, StateVersion, digest

CASES = sorted((Path(__file__).parent / "cases" / "plan").iterdir())


def _desired(address: str, spec: dict[str, Any]) -> Desired:
    kind, name = spec["kind"], address.split(".", 1)[1]
    return Desired(address, kind, name, spec["attributes"], digest(spec["attributes"]),
                   spec.get("dependencies", []), replace_fields(kind))


def _state(address: str, spec: dict[str, Any]) -> ResourceState:
    return ResourceState(address, spec["kind"], address.split(".", 1)[1], spec["attributes"],
                         digest(spec["attributes"]), dependencies=spec.get("dependencies", []))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_plan_case(case: Path) -> None:
    data = yaml.safe_load((case / "case.yaml").read_text())
    desired = {a: _desired(a, s) for a, s in data["desired"].items()}
    state = {a: _state(a, s) for a, s in data["state"].items()}
    observed = {a: Observed(**o) for a, o in (data.get("observed") or {}).items()}
    version = StateVersion("lineage", 7)

    def run() -> Any:
        return make_plan(desired, state, observed, version, targets=data.get("targets", []),
                         destroy=data.get("destroy", False))

    if "error" in data:
        with pytest.raises(PlanError, match=data["error"]):
            run()
        return
    plan = run()
    got = []
    for change in plan.changes:
        item: dict[str, Any] = {"address": change.address,
                                "action": change.action.name.lower()}
        if change.action.name != "NOOP":
            item["reason"] = change.reason
        expected_item = next((e for e in data["expected"] if e["address"] == change.address),
                             {})
        if "fields" in expected_item:
            item["fields"] = [{k: v for k, v in f._asdict().items()
                               if k != "sensitive" or v} for f in change.fields]
        got.append(item)
    assert got == data["expected"]
    assert [d._asdict() for d in plan.drift] == data.get("drift", [])
    assert (plan.lineage, plan.serial) == ("lineage", 7)


def test_waits_follow_dependencies_through_unchanged_resources() -> None:
    from mlinfra.engine import _waits
    from mlinfra.plan.model import Action, Change

    changes = [Change("data.d", "Data", "d", Action.UPDATE, ""),
               Change("job.j", "Job", "j", Action.NOOP, "", dependencies=["data.d"]),
               Change("pipeline.p", "Pipeline", "p", Action.UPDATE, "",
                      dependencies=["job.j"])]
    assert _waits(changes) == {"data.d": set(), "pipeline.p": {"data.d"}}


def test_a_changed_list_of_named_items_is_said_by_item_and_field() -> None:
    """A deployment's model changed: the reason names it, not the list cut short."""
    from mlinfra.plan.diff import _reason, field_changes

    before = {"deployments": [{"name": "main", "model": "iris@prod", "mini_batch_size": 10},
                              {"name": "old", "model": "iris:1"}], "tags": ["a", "b"]}
    after = {"deployments": [{"name": "main", "model": "iris:2", "mini_batch_size": 10},
                             {"name": "new", "model": "iris:1"}], "tags": ["a"]}
    assert _reason(field_changes(before, after, frozenset())) == (
        "changed: deployments[main].model iris@prod -> iris:2, deployments[old] removed, "
        "deployments[new] added (+1 more)")
    assert _reason(field_changes({"tags": ["a", "b"]}, {"tags": ["a"]}, frozenset())) == (
        "changed: tags ['a', 'b'] -> ['a']")

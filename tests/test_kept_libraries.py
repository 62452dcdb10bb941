"""Where a well-kept library decides, mlinfra uses it: plain data are dataclasses with
slots (not a hand-written record class)."""

from __future__ import annotations

import dataclasses

import pytest


@pytest.mark.parametrize("name", [
    "mlinfra.spec.model:Resource", "mlinfra.spec.model:Stack", "mlinfra.spec.model:Config",
    "mlinfra.plan.model:Desired", "mlinfra.plan.model:Change", "mlinfra.plan.model:Plan",
    "mlinfra.state.model:ResourceState", "mlinfra.handler:Applied",
    "mlinfra.runs.containers:Mount", "mlinfra.runs.containers:Finished",
    "mlinfra.providers.manifests:RenderedObject"])
def test_plain_data_are_slotted_dataclasses(name: str) -> None:
    import importlib

    module, _, attribute = name.partition(":")
    kind = getattr(importlib.import_module(module), attribute)
    assert dataclasses.is_dataclass(kind) and "__slots__" in vars(kind)
    assert kind.__hash__ is None  # mutable: equal by fields, never a dict key


def test_records_compare_and_print_by_their_fields() -> None:
    from mlinfra.state.model import ResourceState

    a = ResourceState("compute.a", "Compute", "a", {"x": 1}, "h")
    assert a == ResourceState("compute.a", "Compute", "a", {"x": 1}, "h")
    assert a != ResourceState("compute.a", "Compute", "a", {"x": 2}, "h")
    assert repr(a).startswith("ResourceState(address='compute.a', kind='Compute'")
    with pytest.raises(AttributeError):
        a.unknown = 1  # type: ignore[attr-defined]
    import mlinfra.errors

    assert not hasattr(mlinfra.errors, "Record")

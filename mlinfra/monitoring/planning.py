"""What a plan says of the monitors: each one's last verdict and what a breach would
cause. A retrain needs new data (data versions are content hashes): a breach with no
new data says so and retrains nothing."""

from __future__ import annotations

import re
from typing import Any

from mlinfra.plan.model import Action, Change, Plan
from mlinfra.spec.model import Config
from mlinfra.state.store import StateStore

_DATA_LABEL = re.compile(r"^[a-z][a-z0-9-]{0,62}:[1-9][0-9]*$")


def _data_read(value: Any, into: list[str]) -> None:
    """The data versions (`transactions:7`) a job's or pipeline's planned attributes
    name in their `inputs_resolved`."""
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "inputs_resolved" and isinstance(item, dict):
                into.extend(str(v) for v in item.values() if _DATA_LABEL.match(str(v)))
            else:
                _data_read(item, into)
    elif isinstance(value, list):
        for item in value:
            _data_read(item, into)


def retrain(config: Config, target: str, plan: Plan) -> str:
    """What a breach's `retrain: NAME` would do with this plan."""
    kind = "Pipeline" if config.get("Pipeline", target) is not None else "Job"
    address = f"{kind.lower()}.{target}"
    change: Change | None = next((c for c in plan.changes if c.address == address), None)
    reads: list[str] = []
    _data_read(change.after if change is not None else None, reads)
    before: list[str] = []
    _data_read(change.before if change is not None else None, before)
    held = ", ".join(dict.fromkeys(reads or before))
    if change is not None and change.action in (Action.CREATE, Action.UPDATE,
                                                Action.REPLACE):
        if change.before is None or set(reads) != set(before):
            return f"{address} will retrain on {', '.join(dict.fromkeys(reads)) or 'its inputs'}"
        return (f"no new data since {held}; {address} runs in this plan for another reason "
                f"({change.reason})")
    return (f"no new data{f' since {held}' if held else ''}: {address} has nothing new "
            "to retrain on")


def notes(config: Config, store: StateStore, plan: Plan) -> list[str]:
    """Lines for under the plan: `monitor.fraud-watch: drifted for 2 windows (amount: W
    0.31 > 0.1); pipeline.fraud will retrain on transactions:7`."""
    monitors = sorted(config.of("Monitor"))
    if not monitors:
        return []
    from mlinfra.monitoring.verdicts import status

    lines = ["", "Monitors:"]
    for name in monitors:
        verdict = status(store, config, name)
        line = f"  monitor.{name}: {verdict.summary()}"
        if verdict.streak:
            spec = config.get("Monitor", name)
            actions = (spec.spec.get("on_breach") or []) if spec is not None else []
            targets = [str(a["retrain"]) for a in actions if isinstance(a, dict)
                       and "retrain" in a]
            if targets:
                effect = "; ".join(retrain(config, t, plan) for t in targets)
                line += f"; {effect}" if verdict.breached else f"; once breached, {effect}"
        lines.append(line)
    return lines

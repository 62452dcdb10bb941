"""Saved plans: `mlinfra plan --out FILE`, then `mlinfra apply FILE`.

The file records the state's lineage and serial, the targets and what each model
reference resolved to, and a checksum of all that: apply refuses a file edited by
hand, and a plan whose state, references or changes moved on (it plans again with the
same targets and compares), so what is applied is exactly what was reviewed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mlinfra import __version__
from mlinfra.errors import MlinfraError
from mlinfra.plan.model import FORMAT_VERSION, Plan
from mlinfra.state.model import digest


def _checksum(data: dict[str, Any]) -> str:
    return digest({k: v for k, v in data.items() if k != "checksum"})


def save(plan: Plan, path: Path) -> None:
    data = {**plan.to_json(), "mlinfra_version": __version__}
    data["checksum"] = _checksum(data)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def load(path: Path) -> Plan:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise MlinfraError(f"cannot read plan file {path}: {err.strerror}") from err
    except ValueError:
        raise MlinfraError(f"{path} is not a plan file saved by mlinfra plan --out") from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise MlinfraError(f"{path} is not a plan file saved by mlinfra plan --out")
    if data.get("checksum") != _checksum(data):
        raise MlinfraError(f"{path} was changed after mlinfra plan saved it (its checksum "
                           "does not match): run mlinfra plan --out again")
    if str(data["format_version"]).split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise MlinfraError(f"{path} has plan format {data['format_version']}; this mlinfra "
                           f"reads {FORMAT_VERSION}")
    try:
        return Plan.from_json(data)
    except (KeyError, TypeError, ValueError) as err:
        raise MlinfraError(f"{path} is damaged: {err}") from err

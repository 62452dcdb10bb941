"""Saved plans: `mlinfra plan --out FILE`, then `mlinfra apply FILE`.

The file records the state's lineage and serial and a hash of the configuration; apply
refuses it once either moved, so what is applied is exactly what was reviewed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlinfra import __version__
from mlinfra.errors import MlinfraError
from mlinfra.plan.model import FORMAT_VERSION, Plan


def save(plan: Plan, path: Path) -> None:
    data = {**plan.to_json(), "mlinfra_version": __version__}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def load(path: Path) -> Plan:
    try:
        data = json.loads(path.read_text())
    except OSError as err:
        raise MlinfraError(f"cannot read plan file {path}: {err.strerror}") from None
    except ValueError:
        raise MlinfraError(f"{path} is not a plan file saved by mlinfra plan --out") from None
    if not isinstance(data, dict) or "format_version" not in data:
        raise MlinfraError(f"{path} is not a plan file saved by mlinfra plan --out")
    if str(data["format_version"]).split(".")[0] != FORMAT_VERSION.split(".")[0]:
        raise MlinfraError(f"{path} has plan format {data['format_version']}; this mlinfra "
                           f"reads {FORMAT_VERSION}")
    try:
        return Plan.from_json(data)
    except (KeyError, TypeError, ValueError) as err:
        raise MlinfraError(f"{path} is damaged: {err}") from None

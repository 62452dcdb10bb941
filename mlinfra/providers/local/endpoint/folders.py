"""Where an endpoint's files live, under `.mlinfra/<stack>/endpoints/NAME/` of the
project that started its server:

    server.log                      every server instance of the endpoint appends to it
    operator.key                    the key mlinfra's own commands use (0600)
    instances/ID/config.json        what that instance serves: mlinfra writes, workers read
    instances/ID/status/PID.json    each worker's status report (mlinfra/serving/status.py)

A server instance is one launch of the server. Its files are its own: a new instance
never reads an old one's status, and an old one never loads a new one's config.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from mlinfra.providers.base import Context


@dataclass(frozen=True)
class InstanceFolder:
    id: str
    path: Path

    @property
    def config(self) -> Path:
        return self.path / "config.json"

    @property
    def status(self) -> Path:
        return self.path / "status"

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class EndpointFolder:
    path: Path

    @classmethod
    def of(cls, ctx: Context, name: str) -> EndpointFolder:
        """The folder of the server the state records, where it is on this machine (a
        teammate's clone of the project sharing the state reads the same files); else
        this project's own."""
        state = ctx.store.get(f"endpoint.{name}")
        recorded = Path(str(state.outputs["log"])).parent if state is not None and \
            state.outputs.get("log") else None
        if recorded is not None and recorded.is_dir():
            return cls(recorded)
        return cls(ctx.state_dir / "endpoints" / name)

    @property
    def log(self) -> Path:
        return self.path / "server.log"

    @property
    def operator_key(self) -> Path:
        return self.path / "operator.key"

    def instance(self, instance_id: str) -> InstanceFolder:
        return InstanceFolder(instance_id, self.path / "instances" / instance_id)

    def forget_earlier_layout(self) -> None:
        """Files of an earlier mlinfra: one config and status folder for every server,
        and new keys in clear until shown (`keys.new`), which no file may hold now."""
        for name in ("keys.new", "config.json", "config.json.tmp"):
            (self.path / name).unlink(missing_ok=True)
        shutil.rmtree(self.path / "status", ignore_errors=True)

    def instances(self) -> list[InstanceFolder]:
        root = self.path / "instances"
        if not root.is_dir():
            return []
        return [self.instance(p.name) for p in sorted(root.iterdir()) if p.is_dir()]

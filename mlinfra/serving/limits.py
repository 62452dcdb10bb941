"""The bounds a server keeps, whatever its clients do (README: Serving, Limits). The
supervisor (`__main__`) takes them from its command line and hands them to its workers
in one environment variable."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

ENVIRONMENT = "MLINFRA_SERVER_LIMITS"


@dataclass(frozen=True)
class Limits:
    # a connection that sends nothing, after it opens or after its last answer
    idle_timeout_s: int = 5
    # a request's headers and body, from its first byte
    request_timeout_s: float = 30.0
    # access.log rotates past this size, keeping `backups` files; the captures keep at
    # most captures_bytes x (backups + 1), unless the endpoint's collect.retention says
    access_log_bytes: int = 10 << 20
    captures_bytes: int = 50 << 20
    backups: int = 5
    # a worker writes its captured rows to a Parquet file at least this often
    captures_flush_s: float = 5.0

    def export(self) -> None:
        os.environ[ENVIRONMENT] = json.dumps(asdict(self))

    @classmethod
    def from_environment(cls) -> Limits:
        text = os.environ.get(ENVIRONMENT)
        return cls(**json.loads(text)) if text else cls()

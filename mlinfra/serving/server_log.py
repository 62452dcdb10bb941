"""python -m mlinfra.serving.server_log [FILE [MAX_BYTES BACKUPS]]: what a server writes
to its standard output and error, appended to FILE (default: $MLINFRA_SERVER_LOG, so
that the endpoint's folder is not in this process's command line, where mlinfra and its
tests look for the servers of an endpoint), which rotates as the access log does
(FILE.1, ... up to BACKUPS older files of MAX_BYTES each).

A server's output reaches it through a pipe: it ends when every process of the server
closed its end, so it outlives no server and needs no stopping.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from mlinfra.serving.limits import Limits
from mlinfra.serving.rotating import RotatingFile

LOG_VAR = "MLINFRA_SERVER_LOG"


def pump(source: int, log: RotatingFile) -> None:
    """Copy `source` to `log` until its end, as soon as each piece arrives."""
    while True:
        try:
            chunk = os.read(source, 1 << 16)
        except InterruptedError:
            continue
        if not chunk:
            break
        log.write(chunk)
        log.flush()
    log.close()


def main() -> None:
    defaults = Limits()
    path = Path(sys.argv[1] if len(sys.argv) > 1 else os.environ[LOG_VAR])
    max_bytes = int(sys.argv[2]) if len(sys.argv) > 2 else defaults.access_log_bytes
    backups = int(sys.argv[3]) if len(sys.argv) > 3 else defaults.backups
    pump(sys.stdin.fileno(), RotatingFile(path, max_bytes, backups))


if __name__ == "__main__":
    main()

"""python -m mlinfra.serving --config FILE --port N [--workers N]: run an endpoint.

This process supervises the workers (uvicorn's); it gives them a metrics folder of
their own server instance, next to the config file, and removes it when it stops.

The listening socket is bound here with SO_REUSEPORT, so that a server replacing this
one (with another worker count) can listen on the same port before this one stops:
clients keep the endpoint's address and are answered throughout. mlinfra checks that
no other program listens on a port before it starts a server there.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import shutil
import socket
import struct
import sys
from pathlib import Path

import uvicorn
from uvicorn.supervisors import Multiprocess

from mlinfra.serving.connections import BoundedHttpProtocol
from mlinfra.serving.limits import Limits
from mlinfra.serving.shared import METRICS_DIR

BACKLOG = 2048  # uvicorn's
SO_ATTACH_REUSEPORT_CBPF = 51  # Linux, asm-generic/socket.h


def listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(BACKLOG)
    _newest_takes_connections(sock)
    sock.set_inheritable(True)
    return sock


def _newest_takes_connections(sock: socket.socket) -> None:
    """Steer every new connection on this port to the socket that joined it last.

    A server replacing another listens beside it (SO_REUSEPORT), and the kernel would
    spread new connections over both; those waiting in the old server's queue when it
    stops would be reset. A classic BPF program on the port's socket group picks
    socket 1: the new one while two listen (the old is 0), and, once the old one
    closed, an index past the group, for which the kernel falls back to its usual
    choice among the one socket left. Connections the new server receives before it is
    ready wait in its queue; none reaches the old one after this."""
    if not sys.platform.startswith("linux"):
        return
    program = (ctypes.c_ubyte * 8).from_buffer_copy(
        struct.pack("=HBBI", 0x06, 0, 0, 1))  # BPF_RET | BPF_K: return 1
    fprog = struct.pack("@HP", 1, ctypes.addressof(program))  # struct sock_fprog
    with contextlib.suppress(OSError):  # a kernel without it spreads them as before
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mlinfra.serving")
    parser.add_argument("--config", required=True, help="the endpoint's config file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    defaults = Limits()
    parser.add_argument("--idle-timeout", type=int, default=defaults.idle_timeout_s,
                        help="seconds a connection may send nothing (default: %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s,
                        help="seconds a request may take to arrive (default: %(default)s)")
    parser.add_argument("--access-log-bytes", type=int, default=defaults.access_log_bytes)
    parser.add_argument("--captures-bytes", type=int, default=defaults.captures_bytes)
    parser.add_argument("--captures-flush", type=float, default=defaults.captures_flush_s,
                        help="seconds a captured row may wait in a worker before it is "
                        "written to a Parquet file (default: %(default)s)")
    parser.add_argument("--backups", type=int, default=defaults.backups,
                        help="older files kept of the access log and the captures")
    args = parser.parse_args()
    limits = Limits(args.idle_timeout, args.request_timeout, args.access_log_bytes,
                    args.captures_bytes, args.backups, args.captures_flush)
    limits.export()
    config_path = Path(args.config).resolve()
    os.environ["MLINFRA_ENDPOINT_CONFIG"] = str(config_path)
    metrics = _metrics_folder(config_path.parent / "metrics")
    os.environ[METRICS_DIR] = str(metrics)
    config = uvicorn.Config("mlinfra.serving.app:create_app", factory=True, host=args.host,
                            port=args.port, workers=args.workers, loop="uvloop",
                            http=BoundedHttpProtocol, timeout_keep_alive=limits.idle_timeout_s,
                            log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5)
    sock = listen(args.host, args.port)
    try:
        if args.workers > 1:
            Multiprocess(config, sockets=[sock]).run()
            return
        server = uvicorn.Server(config)
        server.run(sockets=[sock])
        if not server.started:
            raise SystemExit(3)  # as uvicorn.run: the app failed to start
    finally:
        shutil.rmtree(metrics, ignore_errors=True)


def _metrics_folder(parent: Path) -> Path:
    """This server's metrics folder, named after its pid; those of servers that are no
    longer running (killed before they could remove theirs) go."""
    with contextlib.suppress(OSError):
        for folder in parent.iterdir():
            if folder.name.isdigit() and not _running(int(folder.name)):
                shutil.rmtree(folder, ignore_errors=True)
    folder = parent / str(os.getpid())
    shutil.rmtree(folder, ignore_errors=True)  # an older server's, with the same pid
    folder.mkdir(parents=True)
    return folder


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    main()

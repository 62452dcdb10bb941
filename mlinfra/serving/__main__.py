"""python -m mlinfra.serving --config FILE --port N [--workers N]: run an endpoint.

The listening socket is bound here with SO_REUSEPORT, so that a server replacing this
one (with another worker count) can listen on the same port before this one stops:
clients keep the endpoint's address and are answered throughout. mlinfra checks that
no other program listens on a port before it starts a server there.
"""

from __future__ import annotations

import argparse
import os
import socket

import uvicorn
from uvicorn.supervisors import Multiprocess


def listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mlinfra.serving")
    parser.add_argument("--config", required=True, help="the endpoint's config file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ["MLINFRA_ENDPOINT_CONFIG"] = os.path.abspath(args.config)
    config = uvicorn.Config("mlinfra.serving.app:create_app", factory=True, host=args.host,
                            port=args.port, workers=args.workers, loop="uvloop",
                            http="httptools", log_level="warning", access_log=False,
                            timeout_graceful_shutdown=5)
    sock = listen(args.host, args.port)
    if args.workers > 1:
        Multiprocess(config, sockets=[sock]).run()
        return
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        raise SystemExit(3)  # as uvicorn.run: the app failed to start


if __name__ == "__main__":
    main()

"""python -m mlinfra.serving --config FILE --port N [--workers N]: run an endpoint."""

from __future__ import annotations

import argparse
import os

import uvicorn


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m mlinfra.serving")
    parser.add_argument("--config", required=True, help="the endpoint's config file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    os.environ["MLINFRA_ENDPOINT_CONFIG"] = os.path.abspath(args.config)
    uvicorn.run("mlinfra.serving.app:create_app", factory=True, host=args.host,
                port=args.port, workers=args.workers, loop="uvloop", http="httptools",
                log_level="warning", access_log=False, timeout_graceful_shutdown=5)


if __name__ == "__main__":
    main()

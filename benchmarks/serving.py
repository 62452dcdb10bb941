"""Serving speed: mlinfra beside `mlflow models serve` and beside the bare HTTP stack
answering a constant (the ceiling), with the same load, in the same run.

The quickstart is trained and served by mlinfra itself (auth key, metrics, input
validation and the access log on, 2 workers); the same ONNX file is saved as an
MLflow model and served by MLflow 3 (`--env-manager local`, from its own virtual
environment, which this script creates with uv the first time); the ceiling is a
constant answer on the same uvicorn + httptools + uvloop stack, 2 workers. wrk sends
the same /invocations body to each, at 8 and 64 connections, 10 s a round. The three
take turns for --rounds rounds and each figure is the median of its rounds: with 8
connections on 2 workers, how wrk's connections fall between the workers moves a
single run by up to 20%.

    .venv/bin/python benchmarks/serving.py [--duration 10] [--rounds 3] [--connections 8,64]

Needs wrk (apt-get install wrk). Goals (issue 5): at least 10x MLflow's requests/s
with p99 at most a tenth of MLflow's, and at least 50% of the ceiling's requests/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORK = REPO / "benchmarks" / ".work"
MLINFRA = str(Path(sys.executable).parent / "mlinfra")
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
BODY = json.dumps({"inputs": [[250.0, 2, 0.9, 80.0, 30]]})

CEILING = '''\
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
    while (await receive()).get("more_body"):
        pass
    body = b'{"predictions":{"label":[1],"probabilities":[[0.03,0.97]]}}'
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
'''

SAVE_MLFLOW = '''\
import sys, onnx, mlflow.onnx
mlflow.onnx.save_model(onnx.load(sys.argv[1]), sys.argv[2])
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.25)
    raise SystemExit(f"{url} did not answer within {timeout:g}s")


def ensure_mlflow() -> Path:
    venv = WORK / "mlflow-venv"
    if not (venv / "bin" / "mlflow").exists():
        print("installing MLflow into its own virtual environment (once)...", flush=True)
        uv = shutil.which("uv") or "uv"
        subprocess.run([uv, "venv", "-q", "-p", f"{sys.version_info[0]}.{sys.version_info[1]}",
                        str(venv)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                        "mlflow", "onnx", "onnxruntime"], check=True)
    return venv


def wrk(url: str, connections: int, duration: int, headers: dict[str, str]) -> dict[str, float]:
    script = WORK / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {json.dumps(BODY)}",
             'wrk.headers["Content-Type"] = "application/json"']
    lines += [f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items()]
    script.write_text("\n".join(lines) + "\n")
    done = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--latency",
                           "--timeout", "10s", "-s", str(script), url], capture_output=True,
                          text=True, timeout=duration + 60, check=True)
    out = done.stdout

    def latency(label: str) -> float:
        match = re.search(rf"^\s*{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if match is None:
            return float("nan")
        value, unit = float(match.group(1)), match.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": latency("50"),
            "p99": latency("99"), "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "requests": float(total.group(1)) if total else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="8,64")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: apt-get install wrk")
    WORK.mkdir(parents=True, exist_ok=True)
    mlflow = ensure_mlflow()
    servers: list[subprocess.Popen[bytes]] = []
    project = Path(tempfile.mkdtemp(prefix="mlinfra-serving-"))
    try:
        shutil.copytree(REPO / "examples" / "quickstart", project / "q",
                        ignore=shutil.ignore_patterns(".mlinfra"))
        q = project / "q"
        subprocess.run([MLINFRA, "apply", "--auto-approve", "-C", str(q)], env=ENV,
                       check=True, capture_output=True)
        outputs = json.loads(subprocess.run([MLINFRA, "output", "--json", "-C", str(q)],
                                            env=ENV, check=True, capture_output=True,
                                            text=True).stdout)
        endpoint = outputs["endpoint.fraud-api"]
        key = (q / ".mlinfra/dev/endpoints/fraud-api/operator.key").read_text().strip()
        model_file = json.loads(Path(endpoint["config"]).read_text()
                                )["deployments"]["blue"]["path"]

        subprocess.run([str(mlflow / "bin" / "python"), "-c", SAVE_MLFLOW, model_file,
                        str(project / "mlflow-model")], check=True)
        mlflow_port = free_port()
        servers.append(subprocess.Popen(
            [str(mlflow / "bin" / "mlflow"), "models", "serve", "-m",
             str(project / "mlflow-model"), "--env-manager", "local", "-h", "127.0.0.1",
             "-p", str(mlflow_port)], env={**ENV, "PATH": f"{mlflow / 'bin'}:{ENV['PATH']}"},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        (project / "ceiling.py").write_text(CEILING)
        ceiling_port = free_port()
        servers.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "ceiling:app", "--workers", "2", "--loop",
             "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log",
             "--host", "127.0.0.1", "--port", str(ceiling_port)], cwd=project, env=ENV,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_ready(f"http://127.0.0.1:{mlflow_port}/health")
        wait_ready(f"http://127.0.0.1:{ceiling_port}/")
        targets = [
            ("ceiling (constant)", f"http://127.0.0.1:{ceiling_port}/invocations", {}),
            ("mlinfra", f"{endpoint['url']}/invocations", {"Authorization": f"Bearer {key}"}),
            ("mlflow models serve", f"http://127.0.0.1:{mlflow_port}/invocations", {}),
        ]
        results: dict[tuple[str, int], dict[str, float]] = {}
        print(f"{'server':<22}{'conns':>6}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'non-2xx':>9}   req/s of each round", flush=True)
        for connections in [int(c) for c in args.connections.split(",")]:
            rounds: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in targets}
            for _, url, headers in targets:
                wrk(url, connections, 2, headers)  # warm-up
            for _ in range(args.rounds):
                for name, url, headers in targets:
                    rounds[name].append(wrk(url, connections, args.duration, headers))
            for name, _, _ in targets:
                runs = rounds[name]
                r = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
                r["non2xx"] = sum(run["non2xx"] for run in runs)
                results[(name, connections)] = r
                each = " ".join(f"{run['rps']:.0f}" for run in runs)
                print(f"{name:<22}{connections:>6}{r['rps']:>11.0f}{r['p50']:>9.2f}"
                      f"{r['p99']:>9.2f}{int(r['non2xx']):>9}   {each}", flush=True)
        print()
        for connections in [int(c) for c in args.connections.split(",")]:
            mine, peer = results[("mlinfra", connections)], results[
                ("mlflow models serve", connections)]
            ceiling = results[("ceiling (constant)", connections)]
            print(f"{connections} connections: mlinfra/mlflow req/s "
                  f"{mine['rps'] / peer['rps']:.1f}x (goal >= 10x); mlflow p99 / mlinfra p99 "
                  f"{peer['p99'] / mine['p99']:.1f}x "
                  f"(goal >= 10x); mlinfra/ceiling {mine['rps'] / ceiling['rps']:.0%} "
                  "(goal >= 50%)")
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
            server.wait(timeout=30)
        subprocess.run([MLINFRA, "destroy", "--auto-approve", "-C", str(project / "q")],
                       env=ENV, capture_output=True, check=False)
        shutil.rmtree(project, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

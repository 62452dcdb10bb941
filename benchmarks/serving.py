"""Serving speed: mlinfra beside the Python model servers users pick instead, and beside
the bare HTTP stack answering a constant (the ceiling), with the same load, in the
same run.

The quickstart is trained and served by mlinfra itself (auth key, metrics, input
validation, captures and the access log on; its endpoint's workers, 2). The same ONNX
file is served, each with as many worker processes, by

- `mlflow models serve` (MLflow 3, `--env-manager local --workers N`): /invocations;
- Seldon MLServer (`parallel_workers: N`) and the KServe ModelServer (`workers=N`),
  each through onnxruntime with a small custom runtime (below), speaking the Open
  Inference Protocol v2;

each from its own virtual environment under benchmarks/.work, which this script
creates with uv the first time (never in mlinfra's dependencies). The ceiling is a
constant answer on uvicorn + httptools + uvloop, N workers. wrk sends the same one-row
request to each: OIP v2 JSON to MLServer, KServe and mlinfra, MLflow's JSON to
/invocations (MLflow and mlinfra), and the same tensor with Triton's binary extension
to mlinfra (its own row; and both with 64 rows a request, where the binary extension
reads the tensor without parsing a number); at 8 and 64 connections, 10 s a round. The servers take
turns for --rounds rounds and each figure is the median of its rounds: with 8
connections on 2 workers, how wrk's connections fall between the workers moves a
single run by up to 20%.

    .venv/bin/python benchmarks/serving.py [--duration 10] [--rounds 3] [--connections 8,64]

Needs wrk (apt-get install wrk). Goals: at 64 connections, at least 3x the
requests/s of the faster of MLServer and KServe with p99 no higher and no non-2xx
answer; at least 10x MLflow's requests/s with p99 at most a tenth of
MLflow's, and at least 50% of the ceiling's requests/s.
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
import struct
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
ROW = [250.0, 2.0, 0.9, 80.0, 30.0]
MLFLOW_BODY = json.dumps({"inputs": [ROW]}).encode()


def binary_body(rows: int) -> tuple[bytes, int]:
    """`rows` copies of ROW with Triton's binary extension: (body, JSON header length)."""
    header = json.dumps({"inputs": [{"name": "features", "shape": [rows, 5],
                                     "datatype": "FP32",
                                     "parameters": {"binary_data_size": 20 * rows}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + struct.pack(f"<{5 * rows}f", *ROW * rows), len(header)


def v2_body(rows: int) -> bytes:
    return json.dumps({"inputs": [{"name": "features", "shape": [rows, 5],
                                   "datatype": "FP32", "data": ROW * rows}]}).encode()


# Each peer's virtual environment. MLServer 1.7 fails on uvloop 0.22+ (its workers
# call asyncio.get_event_loop() with no loop set), hence the pin.
PEERS = {"mlflow": ["mlflow", "onnx", "onnxruntime"],
         "mlserver": ["mlserver", "onnxruntime", "uvloop<0.22"],
         "kserve": ["kserve", "onnxruntime"]}

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

MLSERVER_RUNTIME = '''\
"""A Seldon MLServer runtime serving an ONNX model through onnxruntime (OIP v2)."""
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse
from mlserver.utils import get_model_uri


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(await get_model_uri(self._settings), options)
        self.output_names = [o.name for o in self.session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {i.name: NumpyCodec.decode_input(i) for i in payload.inputs}
        outputs = self.session.run(self.output_names, feeds)
        return InferenceResponse(model_name=self.name, id=payload.id, outputs=[
            NumpyCodec.encode_output(name, value)
            for name, value in zip(self.output_names, outputs)])
'''

KSERVE_SERVER = '''\
"""The KServe ModelServer serving an ONNX model through onnxruntime (OIP v2)."""
import sys
import uuid

import uvicorn

_config = uvicorn.Config.__init__


def _local(self, *args, **kwargs):  # KServe binds 0.0.0.0: this benchmark, 127.0.0.1
    kwargs["host"] = "127.0.0.1"
    _config(self, *args, **kwargs)


uvicorn.Config.__init__ = _local

import onnxruntime as ort  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # noqa: E402
from kserve.utils.utils import from_np_dtype  # noqa: E402


class OnnxModel(Model):
    def __init__(self, name, path):
        super().__init__(name)
        self.path = path
        self.session = None
        self.ready = True

    def __getstate__(self):  # sent to each worker process, which makes its own session
        return {**self.__dict__, "session": None}

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        if self.session is None:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(self.path, options)
        outputs = self.session.run(None, {i.name: i.as_numpy() for i in payload.inputs})
        answers = []
        for spec, value in zip(self.session.get_outputs(), outputs):
            answer = InferOutput(name=spec.name, shape=list(value.shape),
                                 datatype=from_np_dtype(value.dtype))
            answer.set_data_from_numpy(value, binary_data=False)
            answers.append(answer)
        return InferResponse(model_name=self.name, infer_outputs=answers,
                             response_id=payload.id or str(uuid.uuid4()))


if __name__ == "__main__":
    path, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    ModelServer(http_port=port, workers=workers, enable_grpc=False,
                enable_latency_logging=False).start([OnnxModel("fraud", path)])
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.25)
    raise SystemExit(f"{url} did not answer within {timeout:g}s")


def ensure_venv(name: str) -> Path:
    venv = WORK / f"{name}-venv"
    if not (venv / ".installed").exists():
        print(f"installing {name} into its own virtual environment (once)...", flush=True)
        uv = shutil.which("uv") or "uv"
        subprocess.run([uv, "venv", "-q", "--allow-existing", "-p",
                        f"{sys.version_info[0]}.{sys.version_info[1]}", str(venv)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                        *PEERS[name]], check=True)
        (venv / ".installed").touch()
    return venv


def lua_string(data: bytes) -> str:
    """`data` as a Lua string literal (decimal escapes for anything not printable)."""
    return '"' + "".join(chr(b) if 32 <= b < 127 and b not in (34, 92) else f"\\{b}"
                         for b in data) + '"'


def wrk(url: str, body: bytes, connections: int, duration: int,
        headers: dict[str, str]) -> dict[str, float]:
    script = WORK / "post.lua"
    lines = ['wrk.method = "POST"', f"wrk.body = {lua_string(body)}",
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
    errors = re.search(r"Socket errors:.*?timeout (\d+)", out)
    total = re.search(r"(\d+) requests in", out)
    return {"rps": float(rps.group(1)) if rps else 0.0, "p50": latency("50"),
            "p99": latency("99"),
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "timeouts": float(errors.group(1)) if errors else 0.0,
            "requests": float(total.group(1)) if total else 0.0}


def start(argv: list[str], cwd: Path, env: dict[str, str],
          servers: list[subprocess.Popen[bytes]]) -> None:
    log = open(cwd / f"{Path(argv[0]).name}-{len(servers)}.log", "wb")  # noqa: SIM115
    servers.append(subprocess.Popen(argv, cwd=cwd, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True))


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
    venvs = {name: ensure_venv(name) for name in PEERS}
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
        workers = int(endpoint["workers"])
        key = (q / ".mlinfra/dev/endpoints/fraud-api/operator.key").read_text().strip()
        model_file = json.loads(Path(endpoint["config"]).read_text()
                                )["deployments"]["blue"]["path"]

        mlflow = venvs["mlflow"]
        subprocess.run([str(mlflow / "bin" / "python"), "-c", SAVE_MLFLOW, model_file,
                        str(project / "mlflow-model")], check=True)
        mlflow_port = free_port()
        start([str(mlflow / "bin" / "mlflow"), "models", "serve", "-m",
               str(project / "mlflow-model"), "--env-manager", "local", "-h", "127.0.0.1",
               "-p", str(mlflow_port), "--workers", str(workers)], project,
              {**ENV, "PATH": f"{mlflow / 'bin'}:{ENV['PATH']}"}, servers)

        repository = project / "mlserver"
        (repository / "fraud").mkdir(parents=True)
        shutil.copyfile(model_file, repository / "fraud" / "model.onnx")
        (repository / "fraud" / "onnx_runtime.py").write_text(MLSERVER_RUNTIME)
        (repository / "fraud" / "model-settings.json").write_text(json.dumps({
            "name": "fraud", "implementation": "onnx_runtime.OnnxRuntime",
            "parameters": {"uri": "./model.onnx"}}))
        mlserver_port = free_port()
        (repository / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": mlserver_port, "grpc_port": free_port(),
            "metrics_port": free_port(), "parallel_workers": workers, "debug": False}))
        start([str(venvs["mlserver"] / "bin" / "mlserver"), "start", str(repository)],
              repository, ENV, servers)

        (project / "kserve_onnx.py").write_text(KSERVE_SERVER)
        kserve_port = free_port()
        start([str(venvs["kserve"] / "bin" / "python"), str(project / "kserve_onnx.py"),
               model_file, str(kserve_port), str(workers)], project, ENV, servers)

        (project / "ceiling.py").write_text(CEILING)
        ceiling_port = free_port()
        start([sys.executable, "-m", "uvicorn", "ceiling:app", "--workers", str(workers),
               "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
               "--no-access-log", "--host", "127.0.0.1", "--port", str(ceiling_port)],
              project, ENV, servers)
        for url in (f"http://127.0.0.1:{mlflow_port}/health",
                    f"http://127.0.0.1:{mlserver_port}/v2/health/ready",
                    f"http://127.0.0.1:{kserve_port}/v2/health/ready",
                    f"http://127.0.0.1:{ceiling_port}/"):
            wait_ready(url)
        auth = {"Authorization": f"Bearer {key}"}
        v2 = "/v2/models/fraud-api/infer"
        mine = f"{endpoint['url']}{v2}"
        binary, header = binary_body(1)
        binary64, header64 = binary_body(64)
        targets = [
            ("ceiling (constant)", f"http://127.0.0.1:{ceiling_port}/invocations",
             MLFLOW_BODY, {}),
            ("mlinfra v2 JSON", mine, v2_body(1), auth),
            ("mlinfra v2 binary", mine, binary,
             {**auth, "Inference-Header-Content-Length": str(header)}),
            ("mlinfra v2 JSON x64", mine, v2_body(64), auth),
            ("mlinfra v2 binary x64", mine, binary64,
             {**auth, "Inference-Header-Content-Length": str(header64)}),
            ("mlinfra /invocations", f"{endpoint['url']}/invocations", MLFLOW_BODY, auth),
            ("MLServer v2 JSON", f"http://127.0.0.1:{mlserver_port}/v2/models/fraud/infer",
             v2_body(1), {}),
            ("KServe v2 JSON", f"http://127.0.0.1:{kserve_port}/v2/models/fraud/infer",
             v2_body(1), {}),
            ("mlflow /invocations", f"http://127.0.0.1:{mlflow_port}/invocations",
             MLFLOW_BODY, {}),
        ]
        results: dict[tuple[str, int], dict[str, float]] = {}
        print(f"{workers} workers each; {os.cpu_count()} cores, shared with wrk")
        print(f"{'server':<22}{'conns':>6}{'req/s':>11}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'non-2xx':>9}   req/s of each round", flush=True)
        for connections in [int(c) for c in args.connections.split(",")]:
            rounds: dict[str, list[dict[str, float]]] = {t[0]: [] for t in targets}
            for _, url, body, headers in targets:
                wrk(url, body, connections, 2, headers)  # warm-up
            for _ in range(args.rounds):
                for name, url, body, headers in targets:
                    rounds[name].append(wrk(url, body, connections, args.duration, headers))
            for name, *_ in targets:
                runs = rounds[name]
                r = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
                r["non2xx"] = sum(run["non2xx"] + run["timeouts"] for run in runs)
                results[(name, connections)] = r
                each = " ".join(f"{run['rps']:.0f}" for run in runs)
                print(f"{name:<22}{connections:>6}{r['rps']:>11.0f}{r['p50']:>9.2f}"
                      f"{r['p99']:>9.2f}{int(r['non2xx']):>9}   {each}", flush=True)
        print()
        for connections in [int(c) for c in args.connections.split(",")]:
            def row(name: str, conns: int = connections) -> dict[str, float]:
                return results[(name, conns)]

            mine, ceiling = row("mlinfra v2 JSON"), row("ceiling (constant)")
            peer_name = max(("MLServer v2 JSON", "KServe v2 JSON"), key=lambda n: row(n)["rps"])
            peer, mlflow_row = row(peer_name), row("mlflow /invocations")
            invocations = row("mlinfra /invocations")
            print(f"{connections} connections: mlinfra/{peer_name.split()[0]} (the faster "
                  f"of MLServer and KServe) req/s {mine['rps'] / peer['rps']:.1f}x "
                  f"(goal >= 3x), p99 {mine['p99']:.2f} vs {peer['p99']:.2f} ms (goal: no "
                  f"higher), mlinfra non-2xx {int(mine['non2xx'])} (goal 0); "
                  f"mlinfra/mlflow req/s {invocations['rps'] / mlflow_row['rps']:.1f}x "
                  f"(goal >= 10x), mlflow p99 / mlinfra p99 "
                  f"{mlflow_row['p99'] / invocations['p99']:.1f}x (goal >= 10x); "
                  f"mlinfra/ceiling {invocations['rps'] / ceiling['rps']:.0%} (goal >= 50%)")
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(server.pid, signal.SIGTERM)
        for server in servers:
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=30)
        subprocess.run([MLINFRA, "destroy", "--auto-approve", "-C", str(project / "q")],
                       env=ENV, capture_output=True, check=False)
        shutil.rmtree(project, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

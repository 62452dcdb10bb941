"""The studio at scale, beside MLflow's tracking server over the same runs, same run.

A state is made with --runs runs (default 10,000) of --params params each (50) and
--points metric points in all (1,000,000): every run logs `auc` and `loss` over a few
steps, and --long-runs of them (10) log a long `loss` curve that holds half the points.
`mlinfra studio` serves it; each page is asked for over HTTP as a browser would, and
its server time is read from the studio's Server-Timing header (the wall time seen by
the client is shown too). The first request of the runs page builds the studio's runs
index (cold); the others are warm. Memory is the studio process' resident size after
every page was served.

The anchor: MLflow's tracking server (`mlflow server`, its own virtual environment
made with uv, SQLite backend) holding the same runs, params and metric points, asked
through its REST API: `runs/search` for the first 100 runs, filtered by
`metrics.auc > 0.8`, sorted by a param, and `metrics/get-history` for the long curve
(MLflow sends every point; the studio sends the 800 it draws, chosen by LTTB).

    .venv/bin/python benchmarks/studio.py                     # the issue's sizes
    .venv/bin/python benchmarks/studio.py --runs 500 --points 50000 --long-runs 2
    .venv/bin/python benchmarks/studio.py --no-mlflow          # the studio alone

Goals: the runs page (first 100, filtered, sorted) under 100 ms of server time, a run's
chart data under 50 ms, the overview under 100 ms, the studio under 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
MLINFRA = str(Path(sys.executable).parent / "mlinfra")
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mlinfra-bench"
MLFLOW_PACKAGES = ["mlflow"]
REPEAT = 7

PROJECT = {
    "mlinfra.yaml": "kind: Project\nname: bench\n",
    "base.yaml": "kind: Workspace\nname: ws\ndefault_datastore: main\n---\nkind: Compute\n"
                 "name: cpu\ntype: local\n---\nkind: Datastore\nname: main\npath: ./data\n",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"{url} did not answer within {timeout:g}s")


class Workload:
    """The runs both sides hold: ids, params, and each run's metric points."""

    def __init__(self, runs: int, params: int, points: int, long_runs: int) -> None:
        self.runs, self.params, self.long_runs = runs, params, long_runs
        long_points = points // 2 // max(long_runs, 1) if long_runs else 0
        rest = points - long_points * long_runs
        self.steps = max(1, rest // runs // 2)  # auc and loss, `steps` points each
        self.long_points = long_points
        self.rng = random.Random(7)

    def run_id(self, i: int) -> str:
        return f"run-{i:05d}"

    def param_values(self, i: int) -> dict[str, Any]:
        return {f"p{k:02d}": (i * 31 + k * 7) % 997 / 10 if k % 2 else f"v{(i + k) % 13}"
                for k in range(self.params)}

    def points(self, i: int) -> list[tuple[str, int, float]]:
        final = (i % 1000) / 1000
        out = []
        for s in range(1, self.steps + 1):
            out.append(("auc", s, final * s / self.steps))
            out.append(("loss", s, 1 - final * s / self.steps))
        if i < self.long_runs:
            out += [("curve", s, 1 / (1 + s / 1000) + 0.01 * self.rng.random())
                    for s in range(self.long_points)]
        return out

    @property
    def total_points(self) -> int:
        return self.runs * self.steps * 2 + self.long_runs * self.long_points


def make_state(root: Path, work: Workload) -> float:
    """The project applied (an empty workspace) and the runs written into its state
    through the store; returns the seconds it took."""
    for rel, text in PROJECT.items():
        (root / rel).write_text(text)
    (root / "data").mkdir()
    subprocess.run([MLINFRA, "apply", "-C", str(root), "--auto-approve"], check=True,
                   capture_output=True)
    from mlinfra.engine import open_session
    from mlinfra.runs.store import Run, RunStore

    start = time.perf_counter()
    session = open_session(root, None, "benchmark", write=True)
    try:
        store = RunStore(session.store)
        for i in range(work.runs):
            at = 1_700_000_000 + i * 60
            store.save(Run(id=work.run_id(i), job=f"job-{i % 5}", experiment="bench",
                           run_hash=f"{i:064x}", status="failed" if i % 50 == 7 else
                           "completed", created_at=at, started_at=at, ended_at=at + 30,
                           params=work.param_values(i),
                           git={"commit": f"{i % 40:040x}", "branch": "main"}))
            store.add_metrics(work.run_id(i), [
                {"type": "metric", "key": key, "value": value, "step": step, "at": at}
                for key, step, value in work.points(i)])
    finally:
        session.close()
    return time.perf_counter() - start


def get(url: str, data: bytes | None = None) -> tuple[float, float | None, bytes]:
    """(wall ms, server ms from Server-Timing or None, body)."""
    request = urllib.request.Request(url, data=data, headers={
        "Content-Type": "application/json"} if data else {})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=300) as answer:
        body = answer.read()
        timing = answer.headers.get("server-timing")
    wall = (time.perf_counter() - start) * 1000
    server = float(timing.split("dur=")[1]) if timing and "dur=" in timing else None
    return wall, server, body


def median_of(url: str, data: bytes | None = None, repeat: int = REPEAT
              ) -> tuple[float, float | None, int]:
    walls, servers, size = [], [], 0
    for _ in range(repeat):
        wall, server, body = get(url, data)
        walls.append(wall)
        if server is not None:
            servers.append(server)
        size = len(body)
    return (statistics.median(walls), statistics.median(servers) if servers else None, size)


def rss_mb(pid: int) -> float:
    import psutil

    process = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)]
               ) / 2 ** 20


def bench_studio(root: Path, work: Workload) -> dict[str, Any]:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([MLINFRA, "studio", "-C", str(root), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    results: dict[str, Any] = {}
    try:
        wait_for(base + "/static/studio.css")
        cold = get(base + "/runs")
        results["runs page, first request (builds the index)"] = (cold[0], cold[1], len(cold[2]))
        q = urllib.parse.urlencode
        pages = {
            "runs page: first 100": "/runs",
            "runs page: filtered metrics.auc > 0.8": "/runs?" + q({"q": "metrics.auc > 0.8"}),
            "runs page: sorted by params.p07": "/runs?" + q({"sort": "params.p07"}),
            "runs page: filtered and sorted": "/runs?" + q(
                {"q": "metrics.auc > 0.8 and job = 'job-3'", "sort": "metrics.loss",
                 "order": "asc"}),
            "runs page: page 50 (offset 4,900)": "/runs?" + q({"offset": "4900"}),
            "runs table fragment (htmx), filtered": "/runs?" + q({"q": "params.p03 > 50"}),
            "chart data: a long curve -> 800 points":
                f"/api/runs/{work.run_id(0)}/metrics/curve?points=800",
            "chart data: a short curve": f"/api/runs/{work.run_id(work.runs - 1)}/metrics/auc",
            "run page": f"/runs/{work.run_id(work.runs - 1)}",
            "overview": "/",
            "models": "/models",
            "data": "/data",
        }
        for name, path in pages.items():
            if "fragment" in name:
                request = urllib.request.Request(base + path, headers={
                    "HX-Request": "true", "HX-Target": "runs-table"})
                walls, servers = [], []
                for _ in range(REPEAT):
                    start = time.perf_counter()
                    with urllib.request.urlopen(request) as answer:
                        body = answer.read()
                        servers.append(float(answer.headers["server-timing"].split("=")[1]))
                    walls.append((time.perf_counter() - start) * 1000)
                results[name] = (statistics.median(walls), statistics.median(servers), len(body))
            else:
                results[name] = median_of(base + path)
        results["memory (MB, resident)"] = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


FILL_MLFLOW = r'''
import json, sqlite3, sys, time, uuid
from mlflow.entities import Metric, Param
from mlflow.tracking import MlflowClient

spec = json.load(open(sys.argv[2]))
through_client = int(sys.argv[3])
client = MlflowClient(tracking_uri=sys.argv[1])
experiment = client.create_experiment("bench")
started = time.perf_counter()


def status(i):
    return "FAILED" if i % 50 == 7 else "FINISHED"


# The first runs (the long curves among them) go through MLflow's own client...
for i in range(min(through_client, spec["runs"])):
    run = client.create_run(experiment, start_time=1_700_000_000_000 + i * 60_000,
                            run_name=f"run-{i:05d}", tags={"job": f"job-{i % 5}"})
    rid = run.info.run_id
    params = [Param(k, str(v)) for k, v in spec["params"][i].items()]
    points = [Metric(k, v, 1_700_000_000_000 + i * 60_000, s) for k, s, v in spec["points"][i]]
    client.log_batch(rid, params=params, metrics=points[:1000])
    for start in range(1000, len(points), 1000):
        client.log_batch(rid, metrics=points[start:start + 1000])
    client.set_terminated(rid, status(i), end_time=1_700_000_000_000 + i * 60_000 + 30_000)
print(f"  MLflow: {through_client} runs logged through its client in "
      f"{time.perf_counter() - started:.0f}s", file=sys.stderr, flush=True)

# ... the others as the same rows, written in one transaction: logging them one by one
# takes about 0.1 s a run here (10,000 runs: 16 minutes), and only searching is timed.
db = sqlite3.connect(sys.argv[1].removeprefix("sqlite:///"))
sample = db.execute("SELECT source_type, source_name, entry_point_name, user_id, "
                    "source_version, artifact_uri FROM runs LIMIT 1").fetchone()
runs, tags, params, metrics, latest = [], [], [], [], []
for i in range(through_client, spec["runs"]):
    rid = uuid.uuid4().hex
    at = 1_700_000_000_000 + i * 60_000
    runs.append((rid, f"run-{i:05d}", sample[0], sample[1], sample[2], sample[3], status(i),
                 at, at + 30_000, sample[4], "active",
                 sample[5].rsplit("/", 2)[0] + f"/{rid}/artifacts", int(experiment)))
    tags += [("job", f"job-{i % 5}", rid), ("mlflow.runName", f"run-{i:05d}", rid)]
    params += [(k, str(v), rid) for k, v in spec["params"][i].items()]
    last = {}
    for k, s, v in spec["points"][i]:
        metrics.append((k, v, at, rid, s, 0))
        if k not in last or s >= last[k][1]:
            last[k] = (v, s)
    latest += [(k, v, at, s, 0, rid) for k, (v, s) in last.items()]
with db:
    db.executemany("INSERT INTO runs (run_uuid, name, source_type, source_name, "
                   "entry_point_name, user_id, status, start_time, end_time, source_version, "
                   "lifecycle_stage, artifact_uri, experiment_id) VALUES "
                   "(?,?,?,?,?,?,?,?,?,?,?,?,?)", runs)
    db.executemany("INSERT INTO tags (key, value, run_uuid) VALUES (?,?,?)", tags)
    db.executemany("INSERT INTO params (key, value, run_uuid) VALUES (?,?,?)", params)
    db.executemany("INSERT INTO metrics (key, value, timestamp, run_uuid, step, is_nan) "
                   "VALUES (?,?,?,?,?,?)", metrics)
    db.executemany("INSERT INTO latest_metrics (key, value, timestamp, step, is_nan, "
                   "run_uuid) VALUES (?,?,?,?,?,?)", latest)
db.close()
print(experiment)
'''


def mlflow_venv() -> Path:
    venv = CACHE / "studio-mlflow-venv"
    if not (venv / ".installed").exists():
        print("installing MLflow into its own virtual environment (once)...", flush=True)
        uv = shutil.which("uv") or "uv"
        subprocess.run([uv, "venv", "-q", "--allow-existing", "-p",
                        f"{sys.version_info[0]}.{sys.version_info[1]}", str(venv)], check=True)
        subprocess.run([uv, "pip", "install", "-q", "--python", str(venv / "bin" / "python"),
                        *MLFLOW_PACKAGES], check=True)
        (venv / ".installed").touch()
    return venv


def bench_mlflow(tmp: Path, work: Workload) -> dict[str, Any]:
    venv = mlflow_venv()
    db = tmp / "mlflow.db"
    uri = f"sqlite:///{db}"
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"runs": work.runs,
                                "params": [work.param_values(i) for i in range(work.runs)],
                                "points": [work.points(i) for i in range(work.runs)]}))
    start = time.perf_counter()
    filled = subprocess.run([str(venv / "bin" / "python"), "-c", FILL_MLFLOW, uri, str(spec),
                             str(max(work.long_runs, 20))],
                            check=True, stdout=subprocess.PIPE, text=True)
    experiment = filled.stdout.strip().splitlines()[-1]
    fill_s = time.perf_counter() - start
    spec.unlink()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    server = subprocess.Popen([str(venv / "bin" / "mlflow"), "server", "--backend-store-uri",
                               uri, "--host", "127.0.0.1", "--port", str(port), "--workers",
                               "1", "--default-artifact-root", str(tmp / "mlartifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                              cwd=tmp)
    results: dict[str, Any] = {"(filling its store, s)": fill_s}
    try:
        wait_for(base + "/health")
        search = base + "/api/2.0/mlflow/runs/search"

        def body(**extra: Any) -> bytes:
            return json.dumps({"experiment_ids": [experiment], "max_results": 100,
                               **extra}).encode()

        cold = get(search, body())
        results["runs/search: first request"] = (cold[0], None, len(cold[2]))
        # MLflow reads the runs written beside its client as its own: every run matching
        # the filter is found (pages of 1,000).
        found, token = 0, None
        while True:
            extra: dict[str, Any] = {"filter": "metrics.auc > 0.8", "max_results": 1000}
            if token:
                extra["page_token"] = token
            answer = json.loads(get(search, body(**extra))[2])
            found += len(answer.get("runs", []))
            token = answer.get("next_page_token")
            if not token:
                break
        expected = sum(1 for i in range(work.runs) if (i % 1000) / 1000 > 0.8)
        assert found == expected, (found, expected)
        results["runs/search: first 100"] = median_of(search, body())
        results["runs/search: filtered metrics.auc > 0.8"] = median_of(
            search, body(filter="metrics.auc > 0.8"))
        results["runs/search: sorted by params.p07"] = median_of(
            search, body(order_by=["params.p07 DESC"]))
        results["runs/search: filtered and sorted"] = median_of(search, body(
            filter="metrics.auc > 0.8 and tags.job = 'job-3'", order_by=["metrics.loss ASC"]))
        run0 = json.loads(get(search, body(filter="attributes.run_name = 'run-00000'"))[2])
        rid = run0["runs"][0]["info"]["run_id"]
        results["metrics/get-history: the long curve (every point)"] = median_of(
            base + "/api/2.0/mlflow/metrics/get-history?" + urllib.parse.urlencode(
                {"run_id": rid, "metric_key": "curve", "max_results": 100000}), repeat=3)
        results["memory (MB, resident)"] = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--params", type=int, default=50)
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--long-runs", type=int, default=10)
    parser.add_argument("--no-mlflow", action="store_true")
    args = parser.parse_args()
    work = Workload(args.runs, args.params, args.points, args.long_runs)
    with tempfile.TemporaryDirectory(prefix="mlinfra-studio-bench-") as tmp:
        root = Path(tmp) / "project"
        root.mkdir()
        made = make_state(root, work)
        print(f"{work.runs} runs x {work.params} params, {work.total_points} metric points "
              f"({work.long_runs} long curves of {work.long_points}); state written in "
              f"{made:.0f}s")
        studio = bench_studio(root, work)
        anchor = {} if args.no_mlflow else bench_mlflow(Path(tmp), work)
    print(f"\n{'studio':58} {'server ms':>10} {'wall ms':>9} {'bytes':>9}")
    for name, value in studio.items():
        if isinstance(value, tuple):
            wall, server, size = value
            print(f"{name:58} {server if server is not None else float('nan'):10.1f} "
                  f"{wall:9.1f} {size:9d}")
        else:
            print(f"{name:58} {value:10.0f}")
    if anchor:
        print(f"\n{'MLflow tracking server (REST)':58} {'':>10} {'wall ms':>9} {'bytes':>9}")
        for name, value in anchor.items():
            if isinstance(value, tuple):
                print(f"{name:58} {'':>10} {value[0]:9.1f} {value[2]:9d}")
            else:
                print(f"{name:58} {value:10.0f}")
        pairs = [("runs page: first 100", "runs/search: first 100"),
                 ("runs page: filtered metrics.auc > 0.8",
                  "runs/search: filtered metrics.auc > 0.8"),
                 ("runs page: sorted by params.p07", "runs/search: sorted by params.p07"),
                 ("runs page: filtered and sorted", "runs/search: filtered and sorted"),
                 ("chart data: a long curve -> 800 points",
                  "metrics/get-history: the long curve (every point)")]
        print(f"\n{'wall time, MLflow / studio':58} {'ratio':>10}")
        for ours, theirs in pairs:
            print(f"{ours:58} {anchor[theirs][0] / studio[ours][0]:9.1f}x")


if __name__ == "__main__":
    main()

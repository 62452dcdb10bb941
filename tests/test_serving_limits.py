"""the access log and the captures are bounded (rotated by size), and
connections that send nothing, or half a request, are closed after a timeout.

The endpoint is applied as a user would; a second server is then started on a copy of
its config with small limits (`python -m mlinfra.serving --idle-timeout ...`), so that
the bounds show within seconds."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow.parquet as pq

from tests.conftest import Result, onnx_model
from tests.endpoint_client import Client, applied, call, endpoint_files

ENDPOINT = """\
kind: Model
name: fraud
from: {path: models/fraud.onnx}
---
kind: Endpoint
name: api
workers: 1
deployments: [{name: blue, model: fraud}]
traffic: {blue: 100}
collect: {sample: 1.0}
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(folder: Path, *flags: str, workers: int = 2) -> Iterator[str]:
    """A server of the applied endpoint's config, copied to `folder` (its access log
    and captures go there), with `flags`; its url until the block ends."""
    config = json.loads(endpoint_files("config.json")[0].read_text())
    config["collect"]["path"] = str(folder / "captures")
    config["status_dir"] = str(folder / "status")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    port = free_port()
    with open(folder / "server.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "mlinfra.serving", "--config", str(folder / "config.json"),
             "--port", str(port), "--workers", str(workers), *flags],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                if call(url, None, "GET", "/v2/health/ready")[0] == 200:
                    break
            assert process.poll() is None and time.monotonic() < deadline, (
                folder / "server.log").read_text()
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)


def test_access_log_and_captures_are_rotated_by_size(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    project({"models/fraud.onnx": onnx_model(), "serving.yaml": ENDPOINT})
    with applied(cli) as (_, key):
        folder = tmp_path / "small"
        limit = 20_000
        with server(folder, "--access-log-bytes", str(limit), "--captures-bytes", str(limit),
                    "--backups", "2") as url:
            for n in range(12):
                with Client(url, key) as client:
                    for _ in range(250):
                        assert client.request("POST", "/invocations",
                                              {"inputs": [[n, 2.0]]})[0] == 200
                time.sleep(0.3)  # each worker writes out its buffer every 0.25 s
            last = call(url, key, "POST", "/invocations", {"inputs": [[99.0, 2.0]]})
            assert last[0] == 200
            time.sleep(0.6)
            port = int(url.rsplit(":", 1)[1])
            for _ in range(200):  # malformed requests: one warning a minute per worker
                with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                    sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                    sock.recv(1024)
        warnings = (folder / "server.log").read_text().count("Invalid HTTP request")
        assert 1 <= warnings <= 2, warnings
        # 3000 requests wrote about 300 kB of access log
        files = [folder / f"access{s}.log" for s in ("", ".1", ".2")]
        assert sorted(folder.glob("access*.log")) == sorted(files)
        slack = 2 * 64 << 10  # a worker's buffer each, written before it rotates
        assert all(f.stat().st_size <= limit + slack for f in files), files
        # whole JSON lines in each; the newest may be empty: a write that passes the
        # limit rotates the file it went to, leaving a new one for the next lines
        lines = [line for f in files for line in f.read_text().splitlines()]
        assert lines and all(json.loads(line) for line in lines)
        # the captures keep at most --captures-bytes x (backups + 1), oldest files first
        parts = sorted((folder / "captures" / "requests").glob("hour=*/*.parquet"),
                       key=lambda p: p.stat().st_mtime_ns)
        assert parts and sum(p.stat().st_size for p in parts) <= 3 * limit + 64 << 10
        rows = [row for p in parts for row in pq.read_table(p).to_pylist()]
        assert any(row["features.0"] == 99.0 and row["features.1"] == 2.0 for row in rows)


def closed_after(port: int, sends: list[tuple[float, bytes]], limit_s: float = 8.0) -> float:
    """Seconds until the server on `port` closes a connection that sends `sends` (each
    after its delay), reading whatever it answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=limit_s) as sock:
        started = time.monotonic()
        try:
            for delay, data in sends:
                time.sleep(delay)
                sock.sendall(data)
            while sock.recv(65536):
                pass
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed while this side was still sending
        return time.monotonic() - started


def test_connections_that_send_nothing_or_half_a_request_are_closed(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    project({"models/fraud.onnx": onnx_model(), "serving.yaml": ENDPOINT})
    with applied(cli) as (applied_url, key):
        # the endpoint as applied: the default idle timeout, 5 s
        assert 4.5 < closed_after(int(applied_url.rsplit(":", 1)[1]), []) < 7.5
        with server(tmp_path / "s", "--idle-timeout", "1", "--request-timeout", "2",
                    workers=1) as url:
            port = int(url.rsplit(":", 1)[1])
            request = (f"POST /invocations HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                       f"{key}\r\nContent-Type: application/json\r\nContent-Length: 21"
                       '\r\n\r\n{"inputs": [[1, 2]]}\n').encode()
            assert 0.9 < closed_after(port, []) < 3.5  # sends nothing at all
            half = request[:40]
            trickle = [(0.0, half[:10])] + [(0.4, half[i:i + 1]) for i in range(10, 30)]
            assert 1.9 < closed_after(port, trickle) < 4.5  # a byte at a time: slowloris
            assert 1.9 < closed_after(port, [(0.0, request[:-10])]) < 4.5  # body stops
            assert 0.9 < closed_after(port, [(0.0, request)]) < 3.5  # answered, then quiet
            with socket.create_connection(("127.0.0.1", port), timeout=8) as sock:
                sock.sendall(request[:30])
                time.sleep(0.5)  # slow, but within the request timeout: answered
                sock.sendall(request[30:])
                assert sock.recv(65536).startswith(b"HTTP/1.1 200")

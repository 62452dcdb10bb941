"""Events from the outbox to a webhook receiver: throughput and commit-to-delivery delay.

The receiver is a separate process on 127.0.0.1 that verifies every signature with the
`standardwebhooks` package, as a team's receiver would, and notes when each event came.

  throughput   N events committed to the outbox, then delivered by one agent pass
               (mlinfra's Deliverer: lease, sign, POST, record each outcome). Anchor:
               the same N signed POSTs sent by httpx alone, without the outbox, to the
               same receiver, in the same run. Ratio = anchor time / mlinfra time.
  delay        with `mlinfra agent` running, an alias is moved (a committed change) every
               0.2 s; the delay is from the commit's transaction to the receiver's
               arrival. Anchor: the same alias moves by `mlinfra models alias`, delivered
               by the command's own bounded flush before it exits.

    .venv/bin/python benchmarks/events.py [--events 2000] [--moves 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import onnx_model

MLINFRA = str(Path(sys.executable).parent / "mlinfra")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
RECEIVER = """\
import json, sys, time, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from standardwebhooks.webhooks import Webhook
hook = Webhook(sys.argv[1])
seen = []
class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        hook.verify(body, dict(self.headers.items()))
        seen.append((self.headers["webhook-id"], time.time(), json.loads(body)["time"]))
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def do_GET(self):
        out = json.dumps(seen).encode()
        self.send_response(200); self.send_header("content-length", str(len(out)))
        self.end_headers(); self.wfile.write(out)
    def do_DELETE(self):
        seen.clear(); self.send_response(200)
        self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
server = ThreadingHTTPServer(("127.0.0.1", 0), H)
print(server.server_address[1], flush=True)
server.serve_forever()
"""
PROJECT = """\
kind: Model
name: m
from: {path: models/m.onnx}
---
kind: Webhook
name: bench
url: http://127.0.0.1:%d/hook
secret: ${secret.BENCH_SECRET}
events: [model.promoted]
"""


def received(port: int) -> list[tuple[str, float, str]]:
    import httpx

    return [tuple(x) for x in httpx.get(f"http://127.0.0.1:{port}/").json()]  # type: ignore


def clear(port: int) -> None:
    import httpx

    httpx.delete(f"http://127.0.0.1:{port}/")


def throughput(root: Path, port: int, n: int) -> tuple[float, float]:
    """(events/s through the outbox, events/s of bare signed POSTs)."""
    import httpx

    from mlinfra.engine import open_session
    from mlinfra.events.agent import deliverer
    from mlinfra.events.envelope import build
    from mlinfra.events.webhooks import sign

    session = open_session(root, None, "bench", write=True)
    try:
        events = [build(session.store, "model.promoted", "model.m",
                        {"model": "m", "alias": "bench", "version": 1, "previous": 1,
                         "reason": f"event {i}"}) for i in range(n)]
        with session.store.transaction() as cur:
            session.store.add_events(cur, events)
        clear(port)
        sender = deliverer(session.config, session.store)
        sender._http()  # httpx imported and its client made, as a running agent has them
        started = time.perf_counter()
        while True:
            sent = sender.run(limit=500)
            if not sent.delivered and not sent.retried:
                break
        ours = time.perf_counter() - started
        sender.close()
        assert len(received(port)) == n, len(received(port))
    finally:
        session.close()
    clear(port)
    bodies = [(e.event_id, e.envelope.encode()) for e in events]
    with httpx.Client(timeout=10) as client:
        started = time.perf_counter()
        for event_id, body in bodies:
            ts = int(time.time())
            client.post(f"http://127.0.0.1:{port}/hook", content=body, headers={
                "content-type": "application/cloudevents+json", "webhook-id": event_id,
                "webhook-timestamp": str(ts),
                "webhook-signature": sign(SECRET, event_id, ts, body)}).raise_for_status()
        bare = time.perf_counter() - started
    assert len(received(port)) == n
    return n / ours, n / bare


def delays(root: Path, port: int, moves: int, env: dict[str, str]) -> tuple[list[float],
                                                                            list[float]]:
    """(agent delays, command-flush delays) in ms, commit to arrival."""
    from datetime import datetime

    from mlinfra.engine import open_session
    from mlinfra.registry.models import ModelRegistry

    def arrival_delays() -> list[float]:
        return [(at - datetime.fromisoformat(t.replace("Z", "+00:00")).timestamp()) * 1000
                for _, at, t in received(port)]

    clear(port)
    agent = subprocess.Popen([MLINFRA, "agent"], cwd=root, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        time.sleep(2.0)
        session = open_session(root, None, "bench", write=True)
        os.environ["MLINFRA_EVENTS_FLUSH_S"] = "0"  # the agent delivers, not this session
        try:
            registry = ModelRegistry(session.store)
            for i in range(moves):
                registry.set_alias("m", "bench", 1, f"move {i}")
                time.sleep(0.2)
        finally:
            session.close()
        deadline = time.time() + 30
        while len(received(port)) < moves and time.time() < deadline:
            time.sleep(0.1)
        by_agent = arrival_delays()
    finally:
        agent.terminate()
        agent.wait(timeout=30)
    clear(port)
    flush_env = {k: v for k, v in env.items() if k != "MLINFRA_EVENTS_FLUSH_S"}
    for i in range(moves):
        subprocess.run([MLINFRA, "models", "alias", "m@bench", "1"], cwd=root, env=flush_env,
                       check=True, capture_output=True)
        del i
    by_flush = arrival_delays()
    assert len(by_agent) == moves and len(by_flush) == moves, (len(by_agent), len(by_flush))
    return by_agent, by_flush


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--moves", type=int, default=20)
    args = parser.parse_args()
    env = {**os.environ, "BENCH_SECRET": SECRET}
    os.environ["BENCH_SECRET"] = SECRET
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, SECRET],
                                stdout=subprocess.PIPE, text=True)
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline())
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "models").mkdir()
            (root / "models" / "m.onnx").write_bytes(onnx_model())
            (root / "mlinfra.yaml").write_text("kind: Project\nname: bench\n")
            (root / "res.yaml").write_text(PROJECT % port)
            subprocess.run([MLINFRA, "apply", "--auto-approve"], cwd=root, env=env,
                           check=True, capture_output=True)
            ours, bare = throughput(root, port, args.events)
            by_agent, by_flush = delays(root, port, args.moves, env)
    finally:
        receiver.terminate()
        receiver.wait()
    print(json.dumps({"events": args.events, "moves": args.moves}))
    print(f"throughput: agent (outbox, leases, signing, outcomes) {ours:,.0f} events/s; "
          f"anchor: bare signed httpx POSTs {bare:,.0f} events/s; ratio {ours / bare:.2f}")
    print(f"commit -> delivery, agent running: median {statistics.median(by_agent):.0f} ms, "
          f"p90 {pct(by_agent, 0.9):.0f} ms, max {max(by_agent):.0f} ms")
    print(f"anchor: commit -> delivery by the command's own flush: median "
          f"{statistics.median(by_flush):.0f} ms, p90 {pct(by_flush, 0.9):.0f} ms; ratio "
          f"{statistics.median(by_agent) / statistics.median(by_flush):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

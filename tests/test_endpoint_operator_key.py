"""mlinfra's operator key never leaves for another address, and can be replaced; its own
HTTP calls to this machine bypass any proxy; `endpoints invoke` sends CSV tables."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import Result, onnx_model
from tests.endpoint_client import applied, call

ENDPOINT = """\
kind: Model
name: tiny
from: {path: models/tiny.onnx}
---
kind: Endpoint
name: api
auth: key
deployments:
  - name: blue
    model: tiny
traffic: {blue: 100}
"""


@contextmanager
def listening() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """An HTTP server on 127.0.0.1 that records the headers of what it is sent."""
    seen: list[dict[str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append({k.lower(): v for k, v in self.headers.items()})
            self.rfile.read(int(self.headers.get("content-length", 0)))
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def test_local_calls_bypass_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """http_proxy names a proxy that is not there: a call to 127.0.0.1 goes direct."""
    from mlinfra.providers.local.endpoint.client import request

    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", "http://192.0.2.1:3128")  # TEST-NET: never reached
    with listening() as (url, seen):
        answer = request(url + "/x", body=b"{}", timeout=5)
    assert answer.status == 200 and answer.body == {"ok": True} and len(seen) == 1


def test_the_operator_key_stays_home_and_can_be_replaced(
        project: Callable[..., Path], cli: Callable[..., Result], tmp_path: Path) -> None:
    root = project({"models/tiny.onnx": onnx_model(), "serving.yaml": ENDPOINT})
    body = tmp_path / "request.json"
    body.write_text(json.dumps({"inputs": [[1.0, 2.0]]}))
    table = tmp_path / "rows.csv"
    table.write_text("a,b\n1.0,2.0\n3.0,4.0\n")
    with applied(cli) as (url, old_key), listening() as (elsewhere, seen):
        refused = cli("endpoints", "invoke", "api", "--data", str(body), "--url", elsewhere)
        assert refused.code == 1 and "never sends its operator key" in refused.err
        assert seen == []
        given = cli("endpoints", "invoke", "api", "--data", str(body), "--url", elsewhere,
                    "--key", "mlk_theirs")
        assert given.code == 0 and seen[0]["authorization"] == "Bearer mlk_theirs"
        assert call(url, None, "GET", "/metrics")[0] == 401  # /metrics needs a key
        assert call(url, old_key, "GET", "/metrics")[0] == 200
        own = cli("endpoints", "invoke", "api", "--data", str(body), "--url", url + "/")
        assert own.code == 0 and "HTTP 200" in own.err

        csv = cli("endpoints", "invoke", "api", "--data", str(table))
        assert csv.code == 0, csv.err
        assert len(json.loads(csv.out)["predictions"]) == 2  # a table: one record a row

        rotated = cli("endpoints", "keys", "api", "--regenerate", "operator")
        assert rotated.code == 0 and "operator: replaced" in rotated.out, rotated.err
        new_key = (root / ".mlinfra" / "dev" / "endpoints" / "api" / "operator.key"
                   ).read_text().strip()
        assert new_key != old_key and new_key not in rotated.out
        assert call(url, old_key, "POST", "/invocations", {"inputs": [[1.0, 2.0]]})[0] == 401
        assert call(url, new_key, "POST", "/invocations", {"inputs": [[1.0, 2.0]]})[0] == 200
        after = cli("endpoints", "invoke", "api", "--data", str(body))
        assert after.code == 0 and "HTTP 200" in after.err

"""An HTTP client for the endpoints tests start (127.0.0.1 only), and the endpoint of a
project applied for the length of a test."""

from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from tests.conftest import Result


class Client:
    """Keep-alive HTTP client for one endpoint."""

    def __init__(self, url: str, key: str | None) -> None:
        host, port = url.removeprefix("http://").split(":")
        assert host == "127.0.0.1"
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)
        self.key = key

    def request(self, method: str, path: str, body: Any = None,
                headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        all_headers = {"content-type": "application/json", **(headers or {})}
        if self.key:
            all_headers["authorization"] = f"Bearer {self.key}"
        self.conn.request(method, path, body=data, headers=all_headers)
        response = self.conn.getresponse()
        payload = response.read()
        try:
            parsed = json.loads(payload)
        except ValueError:
            parsed = payload.decode(errors="replace")
        return response.status, parsed, {k.lower(): v for k, v in response.getheaders()}

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def call(url: str, key: str | None, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None) -> tuple[int, Any, dict[str, str]]:
    """One request on its own connection."""
    client = Client(url, key)
    try:
        return client.request(method, path, body, headers)
    finally:
        client.close()


def endpoint_files(pattern: str, endpoint: str = "api") -> list[Path]:
    """Files under the endpoint's folder of the project in the current folder, newest
    first (a server instance may keep its files in a folder of its own)."""
    folder = Path.cwd() / ".mlinfra" / "dev" / "endpoints" / endpoint
    return sorted(folder.glob(f"**/{pattern}"), key=lambda p: p.stat().st_mtime,
                  reverse=True)


@contextlib.contextmanager
def applied(cli: Callable[..., Result], endpoint: str = "api") -> Iterator[tuple[str, str]]:
    """Apply the project in the current folder; (url, operator key) of `endpoint` until
    the block ends, then destroy."""
    result = cli("apply", "--auto-approve")
    assert result.code == 0, result.out + result.err
    try:
        outputs = json.loads(cli("output", f"endpoint.{endpoint}", "--json").out)
        key = (Path.cwd() / ".mlinfra" / "dev" / "endpoints" / endpoint / "operator.key")
        yield outputs[f"endpoint.{endpoint}"]["url"], key.read_text().strip()
    finally:
        cli("destroy", "--auto-approve")

"""mlinfra's own HTTP requests to an endpoint (health checks, `endpoints invoke`).

Every request has a timeout. A server that refuses the connection, hangs or drops it
raises `Unreachable`, a message for a person, never a traceback.
"""

from __future__ import annotations

import http.client
import json
from typing import Any, NamedTuple

from mlinfra.errors import MlinfraError


class Unreachable(MlinfraError):
    """The endpoint did not answer: refused, timed out, or the connection dropped."""

    def __init__(self, message: str, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class Response(NamedTuple):
    status: int
    body: Any  # parsed JSON, or the text when it is not JSON
    headers: dict[str, str]


def request(url: str, key: str | None = None, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float = 5.0) -> Response:
    import urllib.error
    import urllib.request

    sent = urllib.request.Request(url, data=body, headers={
        "content-type": "application/json", **(headers or {}),
        **({"authorization": f"Bearer {key}"} if key else {})})
    # NOTE: a server on this machine is never reached through http_proxy (whose proxy
    # cannot reach this machine's loopback), whatever no_proxy says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({})) if _loopback(
        sent.host) else urllib.request.build_opener()
    try:
        with opener.open(sent, timeout=timeout) as response:
            return Response(response.status, _parse(response.read()), dict(response.headers))
    except urllib.error.HTTPError as err:
        return Response(err.code, _parse(err.read()), dict(err.headers))
    except TimeoutError:
        raise Unreachable(f"{url} did not answer within {timeout:g}s", True) from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise Unreachable(f"{url} did not answer within {timeout:g}s", True) from err
        raise Unreachable(f"{url} cannot be reached: {err.reason}") from err
    except (http.client.HTTPException, OSError) as err:
        raise Unreachable(f"{url} dropped the connection: {err}") from err


def _loopback(host: str) -> bool:
    import ipaddress

    name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.strip("[]").split("]")[0]
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _parse(payload: bytes) -> Any:
    try:
        return json.loads(payload or b"null")
    except ValueError:
        return payload.decode(errors="replace")

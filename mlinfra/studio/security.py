"""What keeps the studio to its reader: a token off the loopback, security headers on
every answer, and only the hosts it was bound to (no DNS rebinding onto 127.0.0.1)."""

from __future__ import annotations

import hmac
import ipaddress
from http.cookies import SimpleCookie
from urllib.parse import parse_qs, urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mlinfra.errors import MlinfraError

TOKEN_VARIABLE = "MLINFRA_STUDIO_TOKEN"
COOKIE = "mlinfra_studio"
# Scripts, styles, images and requests only from the studio itself; no framing.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class StudioRefused(MlinfraError):
    """The studio cannot start as asked (an exposed address without a token)."""

    exit_code = 2


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def required_token(host: str, token: str | None) -> str | None:
    """The token requests must carry: none on a loopback address; elsewhere the one
    set in MLINFRA_STUDIO_TOKEN, which must then be set and long enough."""
    if is_loopback(host):
        return token or None
    if not token:
        raise StudioRefused(f"the studio would listen on {host}, reachable from other "
                            f"machines: set {TOKEN_VARIABLE} to a token of 16 characters "
                            "or more that every request must carry, or keep the default "
                            "--host 127.0.0.1")
    if len(token) < 16:
        raise StudioRefused(f"{TOKEN_VARIABLE} is too short to guard the studio on {host}: "
                            "use 16 characters or more")
    return token


class SecurityHeaders:
    """Adds the security headers to every answer, whatever produced it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class LoopbackHosts:
    """On a loopback address, only requests whose Host header names the loopback
    (127.0.0.1, localhost, [::1], with any port) are answered: a web page elsewhere
    cannot reach the studio through a name of its own that resolves to the loopback
    (DNS rebinding)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), "")
        try:
            name = urlsplit("//" + host).hostname
        except ValueError:
            name = None
        if name is None or not is_loopback(name):
            await _send(send, 400, b"Invalid host header\n")
            return
        await self.app(scope, receive, send)


class TokenGate:
    """With a token set, a request must carry it: `Authorization: Bearer TOKEN`, the
    cookie a first `?token=TOKEN` visit sets (HttpOnly, SameSite=Strict), or that
    query itself. Compared in constant time."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.token is None:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        offered = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            offered.append(auth[7:].strip())
        cookie: SimpleCookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # a malformed cookie header is no token
            cookie = SimpleCookie()
        if COOKIE in cookie:
            offered.append(cookie[COOKIE].value)
        query = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [])
        offered += query
        if not any(hmac.compare_digest(o.encode(), self.token) for o in offered):
            await _send(send, 401, b"This studio requires its token: open it with "
                        b"?token=... once, or send Authorization: Bearer TOKEN.\n")
            return
        if query:  # keep it in a cookie, so links need not carry it
            set_cookie = (f"{COOKIE}={query[0]}; HttpOnly; SameSite=Strict; Path=/").encode()

            async def with_cookie(message: Message) -> None:
                if message["type"] == "http.response.start":
                    message["headers"] = [*message.get("headers", []),
                                          (b"set-cookie", set_cookie)]
                await send(message)

            await self.app(scope, receive, with_cookie)
            return
        await self.app(scope, receive, send)


async def _send(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})

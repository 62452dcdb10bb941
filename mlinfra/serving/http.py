"""The HTTP plumbing of the server: what a route answers, reading a request's body within
its limit, and the JSON answers for errors."""

from __future__ import annotations

from typing import Any, NamedTuple

import orjson

from mlinfra.serving.errors import ClientError

JSON = b"application/json"
Headers = list[tuple[bytes, bytes]]


class Answer(NamedTuple):
    """What a route answers; `deployment` is "-" unless a deployment answered."""

    status: int
    body: bytes
    content_type: bytes = JSON
    headers: Headers = []  # noqa: RUF012 (never mutated)
    deployment: str = "-"


def error_answer(err: ClientError) -> Answer:
    headers = list(err.headers)
    if err.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    elif err.status == 503:
        headers.append((b"retry-after", b"1"))
    return Answer(err.status, orjson.dumps({"error": err.message}), JSON, headers,
                  err.deployment or "-")


async def read_body(receive: Any, headers: dict[bytes, bytes], limit: int) -> bytes:
    """The whole body, or a 413 as soon as it is known to be larger than `limit`."""
    declared = headers.get(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ClientError(413, f"the body is larger than {limit} bytes")
    message = await receive()
    body: bytes = message.get("body", b"")
    chunks, size = [body], len(body)
    while message.get("more_body") and size <= limit:
        message = await receive()
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
    if message["type"] == "http.disconnect":  # gone before its body arrived in full
        raise ClientError(400, "the client closed the connection before its body ended")
    if size > limit:
        raise ClientError(413, f"the body is larger than {limit} bytes")
    return body if len(chunks) == 1 else b"".join(chunks)


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as err:
        raise ClientError(400, f"malformed JSON: {err}") from None

"""Who may call: a bearer key, compared in constant time with the hashes of the
endpoint's keys (the server never holds a key itself)."""

from __future__ import annotations

import hashlib
import hmac


def bearer(authorization: bytes | None) -> bytes | None:
    """The token of an `Authorization: Bearer TOKEN` header."""
    if authorization and authorization[:7].lower() == b"bearer ":
        return authorization[7:].strip()
    return None


def authorized(key_hashes: list[bytes], token: bytes | None) -> bool:
    """With no keys, everyone; otherwise a token whose sha256 is one of `key_hashes`,
    every hash compared (no early exit that would time which one matched)."""
    if not key_hashes:
        return True
    if not token:
        return False
    digest = hashlib.sha256(token).digest()
    ok = False
    for stored in key_hashes:
        ok |= hmac.compare_digest(digest, stored)
    return ok
